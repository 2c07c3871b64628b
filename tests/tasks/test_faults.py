"""Faults injected the way they happen: processes killed (SIGKILL, SIGINT, SIGTERM) at random points and resumed,
two runs on one output, outputs that overlap inputs, truncated and damaged containers, bad arguments (issue #17).

The kill tests run the real CLI in subprocesses on the small test model; everything else runs in-process, most of it
with the identity stream (model cost zero) or before the model is loaded.
"""
# ruff: noqa: F811 (pytest fixtures imported from infer.upscale_support are parameters here)

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from infer.upscale_support import checkpoint_dir, identity_stream, make_clip  # noqa: F401 (fixtures)
from PIL import Image

from flashvsr_q.cli import main
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.resume import MANIFEST_NAME
from flashvsr_q.tasks.outputs import OutputClash, RunInUse, RunLock, check_output, check_paths
from flashvsr_q.video.segments import SegmentedWriter

REPO = Path(__file__).resolve().parents[2]
SEGMENT = 8  # output frames per segment: chunk 0 gives 21 frames, every later chunk 8, one chunk per segment
CLIP_FRAMES = 61  # 6 segments (21 + 5 x 8)
FAST = ["--device", "cpu", "--dtype", "fp32", "--segment-frames", str(SEGMENT), "--preset", "ultrafast"]

# The CLI with a pause after every chunk (SLOW_CHUNK_S), so that a kill can land anywhere in a run.
WRAPPER = """\
import os, sys, time
from flashvsr_q.infer import pipeline
orig = pipeline.ChunkRunner.__iter__
def slow(self):
    for r in orig(self):
        yield r
        time.sleep(float(os.environ.get("SLOW_CHUNK_S", "0")))
pipeline.ChunkRunner.__iter__ = slow
from flashvsr_q.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli(*args, capsys=None) -> tuple[int, str]:
    """``flashvsr-q ARGS`` in this process: (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err if capsys is not None else ""


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert "\x1b" not in err, "terminal escape codes in the message"
    return lines[0]


def video_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def folder_frames(path: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(path.glob("*.png"))}


def assert_same_frames(out: Path, ref: Path) -> None:
    """Frame by frame (decoded), then the bytes of the video as well."""
    if ref.is_dir():
        a, b = folder_frames(out), folder_frames(ref)
        assert a.keys() == b.keys() and len(a) == CLIP_FRAMES
        bad = [name for name in a if not np.array_equal(a[name], b[name])]
        assert not bad, f"frames differ after resuming: {bad}"
        return
    a, b = video_frames(out), video_frames(ref)
    assert len(a) == len(b) == CLIP_FRAMES
    bad = [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]
    assert not bad, f"frames differ after resuming: {bad}"
    assert out.read_bytes() == ref.read_bytes()
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 1  # the audio came along


# ---------------------------------------------------------------------------------------------------------------
# kills at random points, then --resume, against an uninterrupted run
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, checkpoint_dir):
    """A clip with audio, the same frames as an image folder, and the uninterrupted outputs of both."""
    root = tmp_path_factory.mktemp("faults")
    clip = make_clip(root / "in.mp4", frames=CLIP_FRAMES, size=(32, 24))
    frames = root / "frames"
    frames.mkdir()
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(frames / f"f{i:03d}.png")
    wrapper = root / "slow_cli.py"
    wrapper.write_text(WRAPPER)
    base = [sys.executable, str(wrapper), "upscale", "--checkpoint", str(checkpoint_dir), *FAST, "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    refs = {}
    for name, source, out in (("video", clip, root / "ref.mp4"), ("folder", frames, root / "ref_frames")):
        subprocess.run([*base, str(source), "-o", str(out)], env=env, check=True, timeout=600)
        refs[name] = (source, out)
    return {"root": root, "base": base, "env": env, "refs": refs}


def _progress(manifest: Path) -> int:
    try:
        return json.loads(manifest.read_text())["progress"]["segments"]
    except (OSError, ValueError, KeyError):
        return -1


def _kill_and_resume(setup, kind: str, sig: signal.Signals, seed: int, tmp_path: Path) -> None:
    source, ref = setup["refs"][kind]
    out = tmp_path / ("out.mp4" if kind == "video" else "out_frames")
    args = [*setup["base"], str(source), "-o", str(out)]
    rng = random.Random(seed)
    # a random segment to wait for (0: before the first snapshot), then a random pause into the next chunk
    after_segments, pause = rng.randint(0, 3), rng.uniform(0.0, 0.9)
    manifest = out.with_name(out.name + ".parts") / MANIFEST_NAME
    proc = subprocess.Popen(args, env={**setup["env"], "SLOW_CHUNK_S": "0.6"}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while _progress(manifest) < after_segments:
            assert proc.poll() is None, f"the run ended before segment {after_segments}: {proc.stderr.read()}"
            assert time.time() < deadline, "no progress"
            time.sleep(0.05)
        time.sleep(pause)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists(), "an interrupted run left an output"
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert proc.returncode == (130 if sig == signal.SIGINT else 143)
        line = one_line_error(err)
        resume = shlex.split(line.split("continue with: ", 1)[1])  # the exact command it printed
        assert resume[0] == "flashvsr-q" and resume[-1] == "--resume"
        resume = [*setup["base"][:2], *resume[1:]]
    else:
        assert proc.returncode == -signal.SIGKILL
        resume = [*args, "--resume"]
    done = subprocess.run(resume, env=setup["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not out.with_name(out.name + ".parts").exists()
    assert_same_frames(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("kind,sig,seed", [("video", signal.SIGKILL, 1), ("video", signal.SIGINT, 2),
                                           ("folder", signal.SIGKILL, 3), ("folder", signal.SIGINT, 4),
                                           ("video", signal.SIGKILL, 5), ("video", signal.SIGTERM, 6)])
def test_kill_at_a_random_point_then_resume_gives_the_same_frames(kill_setup, kind, sig, seed, tmp_path):
    _kill_and_resume(kill_setup, kind, sig, seed, tmp_path)


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_and_a_killed_runs_lock_is_stale(kill_setup, tmp_path):
    source, ref = kill_setup["refs"]["video"]
    out = tmp_path / "out.mp4"
    args = [*kill_setup["base"], str(source), "-o", str(out)]
    manifest = out.with_name(out.name + ".parts") / MANIFEST_NAME
    first = subprocess.Popen(args, env={**kill_setup["env"], "SLOW_CHUNK_S": "15"})
    try:
        deadline = time.time() + 300
        while _progress(manifest) < 1:
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        for extra in ([], ["--resume"], ["--overwrite"]):  # whatever the second run asks for
            second = subprocess.run([*args, *extra], env=kill_setup["env"], capture_output=True, text=True,
                                    timeout=300)
            assert second.returncode == 2
            line = one_line_error(second.stderr)
            assert f"is in use by a running process (pid {first.pid})" in line
        assert first.poll() is None  # the first run is untouched by the attempts
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    locks = list(tmp_path.glob(".out.mp4*.lock"))
    assert locks, "the killed run's lock file stays (released by the kernel, not deleted)"
    done = subprocess.run([*args, "--resume"], env=kill_setup["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".out.mp4*.lock"))
    assert_same_frames(out, ref)


def test_run_lock_names_the_holder_and_takes_over_a_stale_one(tmp_path):
    target = tmp_path / "out.mp4"
    with RunLock(target) as lock:
        assert lock.held and lock.stale_pid is None
        with pytest.raises(RunInUse, match=rf"is in use by a running process \(pid {os.getpid()}\)"):
            RunLock(target).__enter__()
    assert not lock.path.exists()
    # a lock file left by a process that died: its pid is recorded, nobody holds the flock
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.path.write_text(dead.stdout)
    with RunLock(target) as again:
        assert again.stale_pid == int(dead.stdout)
    with pytest.raises(FlashVSRError, match="does not exist"):
        RunLock(tmp_path / "missing" / "out.mp4").__enter__()


# ---------------------------------------------------------------------------------------------------------------
# interrupted while finishing: remux and cleanup
# ---------------------------------------------------------------------------------------------------------------


def _api_run(clip, out, ckpt, **kw):
    from flashvsr_q import upscale

    return upscale(clip, out, checkpoint=ckpt, device="cpu", dtype="fp32", segment_frames=SEGMENT,
                   show_progress=False, log=lambda m: None, preset="ultrafast", **kw)


def test_interrupted_while_remuxing_or_cleaning_up_resumes(tmp_path, checkpoint_dir, identity_stream,
                                                           monkeypatch):
    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(32, 24))
    ref = tmp_path / "ref.mp4"
    _api_run(clip, ref, checkpoint_dir)
    out = tmp_path / "out.mp4"
    work = out.with_name(out.name + ".parts")

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    # Ctrl-C during the remux: every segment and the last snapshot are on disk
    with monkeypatch.context() as m:
        m.setattr(SegmentedWriter, "_remux", interrupt)
        with pytest.raises(KeyboardInterrupt):
            _api_run(clip, out, checkpoint_dir)
    assert not out.exists() and (work / MANIFEST_NAME).exists()
    summary = _api_run(clip, out, checkpoint_dir, resume=True)  # no frame recomputed: straight to the remux
    assert summary.resumed_from_frame == 30 and out.read_bytes() == ref.read_bytes() and not work.exists()

    # Ctrl-C after the rename, while the work folder is removed
    out.unlink()
    with monkeypatch.context() as m:
        m.setattr(SegmentedWriter, "discard", interrupt)
        with pytest.raises(KeyboardInterrupt):
            _api_run(clip, out, checkpoint_dir)
    assert out.exists() and work.exists()
    with pytest.raises(OutputClash, match="--overwrite"):
        _api_run(clip, out, checkpoint_dir, resume=True)
    _api_run(clip, out, checkpoint_dir, resume=True, overwrite=True)
    assert out.read_bytes() == ref.read_bytes() and not work.exists()


# ---------------------------------------------------------------------------------------------------------------
# outputs that overlap inputs, sources, work folders and the current folder
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def frames_dir(tmp_path) -> Path:
    folder = tmp_path / "project" / "frames"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"f{i}.png")
    (tmp_path / "project" / "notes.txt").write_text("the user's other files")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_upscale_never_writes_over_into_or_around_an_input(tmp_path, frames_dir, checkpoint_dir, capsys,
                                                          monkeypatch, overwrite):
    monkeypatch.chdir(tmp_path)
    clip = make_clip(tmp_path / "clip.mp4", frames=3, size=(16, 16), audio=False)
    (tmp_path / "link.mp4").symlink_to(clip)
    (tmp_path / "link_frames").symlink_to(frames_dir, target_is_directory=True)
    before = _snapshot(tmp_path)
    flags = ["--checkpoint", checkpoint_dir, "--device", "cpu", "--quiet"] + (["--overwrite"] if overwrite else [])
    cases = [  # (input, output, words of the message)
        (clip, clip, "is the input"),
        (clip, tmp_path / "link.mp4", "is the input"),  # a symlink to the input
        (frames_dir, frames_dir, "is the input"),
        (frames_dir, tmp_path / "link_frames", "is the input"),
        (frames_dir, frames_dir.parent, "holds the input"),  # the folder that holds the frames (issue #17)
        (frames_dir, tmp_path, "current folder"),
        (frames_dir, ".", "current folder"),
        (frames_dir, frames_dir / "up", "lies inside the input folder"),
        (clip, checkpoint_dir / "up.mp4", "lies inside the input folder"),  # inside the checkpoint folder
    ]
    for source, out, words in cases:
        code, err = cli("upscale", source, "-o", out, *flags, capsys=capsys)
        assert code == 2 and words in one_line_error(err), (source, out, err)
    assert _snapshot(tmp_path) == before  # nothing written, nothing deleted


def test_upscale_overwrite_replaces_only_what_it_wrote(tmp_path, frames_dir, checkpoint_dir, capsys,
                                                       identity_stream):
    flags = ["--checkpoint", checkpoint_dir, "--device", "cpu", "--quiet"]
    foreign = tmp_path / "holiday"
    foreign.mkdir()
    (foreign / "photo.png").write_bytes(b"precious")
    code, err = cli("upscale", frames_dir, "-o", foreign, *flags, "--overwrite", capsys=capsys)
    assert code == 2 and "not written by it" in one_line_error(err)
    assert (foreign / "photo.png").read_bytes() == b"precious"

    out = tmp_path / "up"
    assert cli("upscale", frames_dir, "-o", out, *flags, capsys=capsys)[0] == 0
    code, err = cli("upscale", frames_dir, "-o", out, *flags, capsys=capsys)
    assert code == 2 and "already exists" in one_line_error(err)
    assert cli("upscale", frames_dir, "-o", out, *flags, "--overwrite", capsys=capsys)[0] == 0  # ours: replaced
    assert sorted(p.name for p in out.glob("*.png")) == ["f0.png", "f1.png", "f2.png"]

    clip = make_clip(tmp_path / "clip.mp4", frames=3, size=(16, 16), audio=False)
    squatter = tmp_path / "v.mp4.parts"  # the work folder's name, taken by something else
    squatter.mkdir()
    (squatter / "keep.txt").write_text("x")
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, err = cli("upscale", clip, "-o", tmp_path / "v.mp4", *flags, *extra, capsys=capsys)
        assert code == 2 and "work folder" in one_line_error(err)
    assert (squatter / "keep.txt").exists()


@pytest.fixture
def official_source(tmp_path, checkpoint_dir) -> Path:
    """A private copy of the test checkpoint inside tmp_path/work/src."""
    src = tmp_path / "work" / "src"
    src.mkdir(parents=True)
    for f in checkpoint_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    return src


@pytest.mark.parametrize("overwrite", [False, True])
def test_quantize_never_replaces_its_source_or_the_current_folder(tmp_path, official_source, capsys, monkeypatch,
                                                                  overwrite):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    flags = ["--recipe", "int8-weight-only", "--checkpoint", official_source] + (["--overwrite"] if overwrite else [])
    (tmp_path / "src_link").symlink_to(official_source, target_is_directory=True)
    cases = [(official_source, "is the input"), (tmp_path / "src_link", "is the input"),
             (official_source.parent, "holds the input"), (tmp_path, "current folder"), (".", "current folder"),
             ("..", "current folder"), (official_source / "q", "lies inside the input folder")]
    for out, words in cases:
        code, err = cli("quantize", "-o", out, *flags, capsys=capsys)
        assert code == 2 and words in one_line_error(err), (out, err)
    assert _snapshot(tmp_path) == before


def test_quantize_overwrite_replaces_a_checkpoint_it_wrote_not_a_foreign_folder(tmp_path, official_source, capsys):
    flags = ["--recipe", "int8-weight-only", "--checkpoint", official_source]
    foreign = tmp_path / "models"
    foreign.mkdir()
    (foreign / "other.bin").write_bytes(b"x")
    code, err = cli("quantize", "-o", foreign, *flags, "--overwrite", capsys=capsys)
    assert code == 2 and "not written by it" in one_line_error(err) and (foreign / "other.bin").exists()
    out = tmp_path / "int8"
    assert cli("quantize", "-o", out, *flags, capsys=capsys)[0] == 0
    code, err = cli("quantize", "-o", out, *flags, capsys=capsys)
    assert code == 2 and "already exists" in one_line_error(err)
    assert cli("quantize", "-o", out, *flags, "--overwrite", capsys=capsys)[0] == 0
    assert (out / "manifest.json").is_file()
    with RunLock(out):  # a run holding the output: quantize waits for nobody
        code, err = cli("quantize", "-o", out, *flags, "--overwrite", capsys=capsys)
    assert code == 2 and f"in use by a running process (pid {os.getpid()})" in one_line_error(err)


def test_check_output_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "a" / "src"
    src.mkdir(parents=True)
    check_paths(tmp_path / "b", [src])
    for out in (src, src.parent, src / "x", tmp_path, Path(".")):
        with pytest.raises(OutputClash):
            check_paths(out, [src, None])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("1")
    with pytest.raises(OutputClash, match="already exists"):
        check_output(tmp_path / "mine", overwrite=False)
    with pytest.raises(OutputClash, match="not written by it"):
        check_output(tmp_path / "mine", overwrite=True)
    assert check_output(tmp_path / "mine", overwrite=True, owned=lambda p: True)
    assert not check_output(tmp_path / "new", overwrite=False)


# ---------------------------------------------------------------------------------------------------------------
# truncated and damaged inputs
# ---------------------------------------------------------------------------------------------------------------


def _truncated_mkv(path: Path) -> Path:
    """A 30-frame .mkv cut after about a quarter of its bytes: its header still promises 30 frames."""
    whole = make_clip(path.with_name("whole.mkv"), frames=30, size=(32, 24))
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def test_truncated_input_is_refused_or_with_allow_truncated_recorded(tmp_path, checkpoint_dir, capsys,
                                                                     identity_stream):
    cut = _truncated_mkv(tmp_path / "cut.mkv")
    out = tmp_path / "out.mkv"
    flags = ["--checkpoint", checkpoint_dir, "--device", "cpu", "--quiet"]
    code, err = cli("upscale", cut, "-o", out, *flags, capsys=capsys)
    line = one_line_error(err)
    assert code == 2 and "truncated" in line and "promises 30 frames" in line and "--allow-truncated" in line
    assert not out.exists() and not out.with_name("out.mkv.parts").exists()
    assert main(["upscale", str(cut), "-o", str(out), *map(str, flags), "--allow-truncated", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    summary = summary[0] if isinstance(summary, list) else summary
    assert summary["frames"] < 30 and len(video_frames(out)) == summary["frames"]
    assert any("truncated" in note and "of the 30 frames" in note for note in summary["notes"])


def test_damaged_input_fails_in_one_line_and_leaves_nothing(tmp_path, checkpoint_dir, capsys,
                                                           identity_stream):
    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(32, 24))
    data = bytearray(clip.read_bytes())
    flags = ["--checkpoint", checkpoint_dir, "--device", "cpu", "--quiet"]
    cases = {"garbage.mp4": b"\x00not a video at all" * 50, "empty.mp4": b"",
             "headless.mkv": bytes(data[len(data) // 2:])}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        out = tmp_path / f"up_{name}"
        code, err = cli("upscale", tmp_path / name, "-o", out, *flags, capsys=capsys)
        assert code == 2 and name in one_line_error(err), err
        assert not out.exists() and not out.with_name(out.name + ".parts").exists()


# ---------------------------------------------------------------------------------------------------------------
# bad arguments: one line each, before any work
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,words", [
    (["--device", "tpu"], "device 'tpu' is not supported"),
    (["--device", "cuda:x"], "not supported"),
    (["--segment-frames", "0"], "--segment-frames must be"),
    (["--segment-frames", "-8"], "--segment-frames must be"),
    (["--vram", "0"], "--vram must be a positive"),
    (["--vram", "lots"], "memory size"),
    (["--tile", "8x100"], "at least 256 output px"),
    (["--tile", "64x64"], "at most half the tile"),
    (["--scale", "0"], "--scale"),
    (["--crf", "99"], "crf"),
])
def test_each_bad_argument_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, args, words):
    clip = make_clip(tmp_path / "in.mp4", frames=3, size=(16, 16), audio=False)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("flashvsr_q.tasks.upscale.load_model", no_model)
    out = tmp_path / "out.mp4"
    code, err = cli("upscale", clip, "-o", out, *args, capsys=capsys)
    assert code == 2 and words in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]  # no output, work folder or lock left


def test_a_checkpoint_that_wants_to_run_code_is_refused_in_plain_words(tmp_path, checkpoint_dir, capsys):
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    for f in checkpoint_dir.iterdir():
        (evil_dir / f.name).write_bytes(f.read_bytes())

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"weight": Payload()}, evil_dir / "LQ_proj_in.ckpt")
    clip = make_clip(tmp_path / "in.mp4", frames=3, size=(16, 16), audio=False)
    code, err = cli("upscale", clip, "-o", tmp_path / "out.mp4", "--checkpoint", evil_dir, "--device", "cpu",
                    "--quiet", capsys=capsys)
    line = one_line_error(err)
    assert code == 2 and "LQ_proj_in.ckpt" in line and "refused without running" in line
    assert "weights_only" not in line and "will likely succeed" not in line  # no advice to load it unsafely
    assert not (tmp_path / "pwned").exists()
