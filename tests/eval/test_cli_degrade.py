"""`flashvsr-q degrade`: a short clip in, LR out; bad input exits non-zero with one line and writes nothing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from flashvsr_q.cli import main
from flashvsr_q.eval.degrade import RealBasicVSRDegradation, bicubic_downscale
from flashvsr_q.video import clips as clipio


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, frames_of):
    frames = frames_of("pristine", 4)
    path = tmp_path_factory.mktemp("hr") / "hr.mp4"
    with clipio.ClipWriter(path) as writer:
        for frame in frames:
            writer.write(frame)
        writer.close()
    return path, frames


def test_degrade_bicubic_and_realbasicvsr(tmp_path, short_clip, capsys):
    hr, frames = short_clip
    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr.mp4")]) == 0
    assert "4 frames 176x144 -> 44x36 (bicubic)" in capsys.readouterr().out
    assert np.array_equal(np.stack(list(clipio.read_frames(tmp_path / "lr.mp4"))), bicubic_downscale(frames))

    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr_png"), "--preset", "realbasicvsr", "--seed", "7"]) == 0
    lr = np.stack(list(clipio.read_frames(tmp_path / "lr_png")))
    assert np.array_equal(lr, RealBasicVSRDegradation(seed=7).degrade_clip(frames))
    assert sorted(p.name for p in (tmp_path / "lr_png").iterdir()) == [f"{i:08d}.png" for i in range(4)]

    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr.mp4")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr.mp4"), "--scale", "2", "--overwrite"]) == 0
    assert clipio.probe(tmp_path / "lr.mp4").width == 88


@pytest.mark.parametrize("content", [None, b"\x1a\x45\xdf\xa3 definitely not a video" * 40])
def test_bad_input_exits_nonzero_with_one_line(tmp_path, content, capsys):
    src = tmp_path / "in.mp4"
    if content is not None:
        src.write_bytes(content)
    code = main(["degrade", str(src), "-o", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".out*"))


def test_console_script_exit_status(tmp_path):
    # through a real process: the exit status, not just main()'s return value
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "flashvsr_q.cli", "degrade", str(tmp_path / "nope"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'nope'}"]
    assert not out.exists()
