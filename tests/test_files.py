"""Atomic writes: the target holds the old content or the new, never part of either, and no temporary is left."""

from __future__ import annotations

import json
import os
import stat

import pytest

from flashvsr_q.files import atomic_write, write_json, write_text


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_text(target, "old")
    assert write_json(target, {"psnr": 31.5}) == target
    assert json.loads(target.read_text()) == {"psnr": 31.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    write_text(target, "old")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_unserialisable_json_writes_nothing(tmp_path):
    target = tmp_path / "summary.json"
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert not list(tmp_path.iterdir())


def test_staged_output_folders_get_the_users_umask_not_0700(tmp_path):
    from flashvsr_q.files import staging_dir

    old = os.umask(0o022)
    try:
        folder = staging_dir(tmp_path / "out")
    finally:
        os.umask(old)
    assert folder.parent == tmp_path and folder.name.startswith(".out.")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
