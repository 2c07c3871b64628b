"""`flashvsr-q batch` on a local Ray with two CPU workers: the same frames as `flashvsr-q upscale` of each clip, a
worker killed mid-video resumes to identical output, a rerun skips finished videos (checked against the summary), a
broken clip fails only its row; and the parts that need no Ray (input lists, options, a missing Ray)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from helpers import one_torch_thread
from infer.upscale_support import checkpoint_dir, make_clip  # noqa: F401 (checkpoint_dir is a fixture)

from flashvsr_q import tasks
from flashvsr_q.cli import main
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.tasks import batch as batch_task
from flashvsr_q.tasks.batch import BatchOptions, VideoProgress, batch, collect_inputs
from flashvsr_q.tasks.upscale import UpscaleOptions
from flashvsr_q.video.sources import open_source

FLAGS = ["--device", "cpu", "--dtype", "fp32", "--segment-frames", "8", "--preset", "ultrafast"]
# clip name -> (frames, size, audio): three sizes, one with audio; the longest is the one killed mid-video
CLIPS = {"wide.mp4": (30, (32, 24), True), "tall.mkv": (17, (24, 40), False), "long.mov": (120, (16, 16), False)}


@pytest.fixture(scope="module")
def local_ray():
    """One Ray session for the module: two CPUs, so two CPU workers of one CPU each."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, checkpoint_dir):  # noqa: F811
    """The clips and what `flashvsr-q upscale` makes of each (one torch thread, as each worker has)."""
    folder = tmp_path_factory.mktemp("clips")
    refs = tmp_path_factory.mktemp("refs")
    with one_torch_thread():
        for name, (frames, size, audio) in CLIPS.items():
            make_clip(folder / name, frames=frames, size=size, audio=audio)
            assert main(["upscale", str(folder / name), "-o", str(refs / name), "--checkpoint", str(checkpoint_dir),
                         *FLAGS, "--quiet"]) == 0
    return folder, refs


def frames_of(path: Path) -> list[np.ndarray]:
    return [frame.rgb for frame in open_source(path).frames()]


def batch_cli(*args) -> int:
    return main(["batch", *map(str, args), *FLAGS, "--workers", "2", "--quiet"])


def summary_rows(out: Path) -> dict[str, dict]:
    return {row["output"]: row for row in json.loads((out / "batch-summary.json").read_text())["videos"]}


# -- on Ray ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_gives_the_frames_of_upscale_and_a_rerun_skips_finished_videos(local_ray, clips, checkpoint_dir,  # noqa: F811
                                                                             tmp_path, capsys):
    folder, refs = clips
    out = tmp_path / "out"
    assert batch_cli(folder, "-o", out, "--checkpoint", checkpoint_dir) == 0
    for name in CLIPS:
        got, ref = frames_of(out / name), frames_of(refs / name)
        assert len(got) == CLIPS[name][0] and all(np.array_equal(a, b) for a, b in zip(got, ref))
        assert (out / name).read_bytes() == (refs / name).read_bytes()
    assert open_source(out / "wide.mp4").has_audio
    rows = summary_rows(out)
    assert {name: (row["status"], row["frames"]) for name, row in rows.items()} == {
        name: ("done", spec[0]) for name, spec in CLIPS.items()}
    assert all(row["node"] and row["worker"] and row["seconds"] > 0 and not row["error"] for row in rows.values())
    table = (out / "batch-summary.md").read_text()
    assert all(f"| {name} | done | {spec[0]} |" in table for name, spec in CLIPS.items())
    assert sorted(p.name for p in out.iterdir()) == sorted([*CLIPS, "batch-summary.json", "batch-summary.md",
                                                            ".flashvsr-q-batch.lock"])
    capsys.readouterr()

    # the same command again: nothing to do, nothing touched (and no Ray work started)
    stamps = {name: (out / name).stat().st_mtime_ns for name in CLIPS}
    assert batch_cli(folder, "-o", out, "--checkpoint", checkpoint_dir) == 0
    assert "3 skipped" in capsys.readouterr().out
    assert {row["status"] for row in summary_rows(out).values()} == {"skipped"}
    assert {name: (out / name).stat().st_mtime_ns for name in CLIPS} == stamps

    # an output changed behind the batch's back is not "finished": refused without --overwrite, redone with it
    with open(out / "tall.mkv", "ab") as f:
        f.write(b"\0")
    assert batch_cli(folder, "-o", out, "--checkpoint", checkpoint_dir) == 1
    rows = summary_rows(out)
    assert rows["tall.mkv"]["status"] == "failed" and "--overwrite" in rows["tall.mkv"]["error"]
    assert rows["wide.mp4"]["status"] == rows["long.mov"]["status"] == "skipped"
    assert batch_cli(folder, "-o", out, "--checkpoint", checkpoint_dir, "--overwrite") == 0
    assert (out / "tall.mkv").read_bytes() == (refs / "tall.mkv").read_bytes()
    assert summary_rows(out)["tall.mkv"]["status"] == "done"

    # other options are another batch: its finished outputs are not skipped
    assert batch_cli(folder, "-o", out, "--checkpoint", checkpoint_dir, "--seed", "1") == 1
    assert all("--overwrite" in row["error"] for row in summary_rows(out).values())


@pytest.mark.slow
def test_a_worker_killed_mid_video_is_retried_and_resumes_to_identical_output(local_ray, clips, checkpoint_dir,  # noqa: F811
                                                                             tmp_path):
    folder, refs = clips
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# the long clip and one more\n{folder / 'long.mov'}\n\n{folder / 'wide.mp4'}\n")
    killed: list[VideoProgress] = []

    def kill_after_first_segment(event: VideoProgress) -> None:
        # the manifest of the first segment is on disk when its frames are reported; more segments follow
        if not killed and event.input.endswith("long.mov") and event.done is not None and event.done < event.total:
            os.kill(event.pid, signal.SIGKILL)
            killed.append(event)

    template = UpscaleOptions("", checkpoint=checkpoint_dir, device="cpu", dtype="fp32", segment_frames=8,
                              preset="ultrafast")
    result = batch(BatchOptions([listing], tmp_path / "out", upscale=template, workers=2, show_progress=False),
                   progress=kill_after_first_segment, log=lambda m: None)
    assert killed, "the long clip was never reported mid-video"
    assert result.ok and [row.status for row in result.rows] == ["done", "done"]
    long = result.rows[0]
    assert long.output == "long.mov" and 0 < long.resumed_from < long.frames == 120  # continued, not restarted
    assert long.worker != killed[0].worker  # the restarted actor is a new process
    for name in ("long.mov", "wide.mp4"):
        assert (tmp_path / "out" / name).read_bytes() == (refs / name).read_bytes()
    assert not (tmp_path / "out" / "long.mov.parts").exists()


@pytest.mark.slow
def test_a_broken_clip_fails_only_its_row(local_ray, clips, checkpoint_dir, tmp_path, capsys):  # noqa: F811
    folder, refs = clips
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # a header, then garbage
    listing = tmp_path / "videos.csv"
    listing.write_text(f"title,path\nbroken,{broken}\ngood,{folder / 'wide.mp4'}\nmissing,{tmp_path / 'gone.mp4'}\n")
    out = tmp_path / "out"
    assert batch_cli(listing, "-o", out, "--checkpoint", checkpoint_dir, "--json") == 1
    rows = {row["output"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["wide.mp4"]["status"] == "done"
    assert (out / "wide.mp4").read_bytes() == (refs / "wide.mp4").read_bytes()
    for name in ("broken.mp4", "gone.mp4"):
        assert rows[name]["status"] == "failed" and name in rows[name]["error"]
        assert "\n" not in rows[name]["error"] and "Traceback" not in rows[name]["error"]
    assert "no such file" in rows["gone.mp4"]["error"]
    # nothing half-written: the good output and the summary, no work folder or partial file of the broken clip
    assert sorted(p.name for p in out.iterdir()) == [".flashvsr-q-batch.lock", "batch-summary.json",
                                                     "batch-summary.md", "wide.mp4"]


# -- without Ray work --------------------------------------------------------------------------------------------


def test_inputs_from_files_folders_and_lists(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "a/y.mkv", "a/notes.txt", "z.avi"):
        (tmp_path / name).write_bytes(b"v")
    (tmp_path / "list.txt").write_text("# comment\n\nz.avi\na\n")
    (tmp_path / "list.csv").write_text(f"name,Path\nfirst,{tmp_path / 'a' / 'x.mp4'}\n")
    a, z = tmp_path.resolve() / "a", tmp_path.resolve() / "z.avi"
    assert collect_inputs([tmp_path / "list.csv", tmp_path / "list.txt"]) == [a / "x.mp4", z, a / "y.mkv"]  # once each
    (tmp_path / "bare.csv").write_text("z.avi\n")
    assert collect_inputs([tmp_path / "bare.csv"]) == [z]  # no header: the first column
    assert batch_task.output_name(Path("clip.avi")) == "clip.mp4" and batch_task.output_name(Path("c.mkv")) == "c.mkv"
    with pytest.raises(FlashVSRError, match="no such folder"):
        collect_inputs([tmp_path / "nope"])
    with pytest.raises(FlashVSRError, match="no such list"):
        collect_inputs([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlashVSRError, match="holds no videos"):
        collect_inputs([tmp_path / "empty"])


def test_bad_batches_are_one_line_errors_before_ray_starts(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("a/clip.mp4", "b/clip.mp4"):
        (tmp_path / name).write_bytes(b"v")
    cases = [([tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out"], "would both be written"),
             ([tmp_path / "a", "-o", tmp_path / "out", "--tile", "huge"], "tile"),
             ([tmp_path / "a", "-o", tmp_path / "no" / "out"], "does not exist"),
             ([tmp_path / "a", "-o", tmp_path / "a" / "clip.mp4"], "is a file")]
    for args, message in cases:
        assert main(["batch", *map(str, args), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_ray_is_a_one_line_error_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the [batch] extra
    monkeypatch.delitem(sys.modules, "flashvsr_q.tasks.batch")
    monkeypatch.delattr(tasks, "batch")
    with pytest.raises(FlashVSRError, match=r"pip install 'flashvsr-q\[batch\]'"):
        importlib.import_module("flashvsr_q.tasks.batch")
    assert main(["batch", "x.mp4", "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert "flashvsr-q[batch]" in err and err.count("\n") == 1
