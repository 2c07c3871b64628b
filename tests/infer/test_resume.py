"""Resume: stream-state snapshots are exact, the manifest guards against changes, and an interrupted run (cancelled,
or SIGKILLed in a subprocess) resumes to a byte-identical video."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from infer.upscale_support import make_clip

from flashvsr_q import upscale
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.pipeline import Cancelled, preprocess
from flashvsr_q.infer.resume import MANIFEST_NAME, Manifest, ResumeError, fingerprint, load_states, save_states
from flashvsr_q.infer.tiling import Geometry
from flashvsr_q.model import FlashVSRStream, SeededNoise

REPO = Path(__file__).resolve().parents[2]


def test_state_snapshot_round_trip_is_exact(test_model, tmp_path):
    g = Geometry(32, 32, 4)
    lr = torch.stack([preprocess(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy(), g, torch.float32)
                      for _ in range(33)], dim=1)[None]
    # two "tiles"; the second skips the decoder (cheaper) and is compared on its latents
    streams = [FlashVSRStream(test_model, SeededNoise(s, 16, 16, 16), decode=s == 0) for s in (0, 1)]
    for s in streams:
        s.step(lr[:, :, :25])
    save_states(tmp_path / "state.safetensors", [s.state for s in streams], {"chunks": 1})
    restored, extra = load_states(tmp_path / "state.safetensors", "cpu")
    assert extra == {"chunks": 1} and len(restored) == 2
    for s, state in zip(streams, restored):
        twin = FlashVSRStream(test_model, s.noise, decode=s.decode)
        twin.state = state
        a, b = s.step(lr[:, :, 25:]), twin.step(lr[:, :, 25:])
        assert torch.equal(a.latents, b.latents)
        assert (a.frames is None and b.frames is None) or torch.equal(a.frames, b.frames)


def test_manifest_refuses_other_input_model_or_options(tmp_path):
    fp = fingerprint({"file": "a"}, "model-1", {"seed": 0})
    Manifest.create(tmp_path, fp, {"tiles": {}})
    manifest = Manifest.load(tmp_path)
    manifest.check(fp)
    with pytest.raises(ResumeError, match="model"):
        manifest.check(fingerprint({"file": "a"}, "model-2", {"seed": 0}))
    with pytest.raises(ResumeError, match="input and options"):
        manifest.check(fingerprint({"file": "b"}, "model-1", {"seed": 1}))
    (tmp_path / MANIFEST_NAME).write_text("{broken")
    with pytest.raises(ResumeError, match="damaged"):
        Manifest.load(tmp_path)


def _run(clip, out, ckpt, **kw):
    return upscale(clip, out, checkpoint=ckpt, device="cpu", dtype="fp32", segment_frames=8, show_progress=False,
                   log=lambda m: None, preset="ultrafast", **kw)


def test_cancelled_run_resumes_to_identical_bytes(tmp_path, checkpoint_dir):
    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(32, 24))
    reference = tmp_path / "ref.mp4"
    _run(clip, reference, checkpoint_dir)

    out = tmp_path / "out.mp4"
    done = []
    with pytest.raises(Cancelled):  # cancel once the first segment (21 frames) is on disk
        _run(clip, out, checkpoint_dir, progress=lambda d, t: done.append(d), cancel=lambda: bool(done))
    work = out.with_name(out.name + ".parts")
    assert not out.exists() and (work / MANIFEST_NAME).exists()
    assert json.loads((work / MANIFEST_NAME).read_text())["progress"]["frames"] == 21

    with pytest.raises(FlashVSRError, match="--resume"):
        _run(clip, out, checkpoint_dir)  # a leftover run is never silently restarted or overwritten
    with pytest.raises(ResumeError, match="options"):
        _run(clip, out, checkpoint_dir, resume=True, seed=1)
    summary = _run(clip, out, checkpoint_dir, resume=True)
    assert summary.resumed_from_frame == 21 and summary.frames == 30
    assert out.read_bytes() == reference.read_bytes()
    assert not work.exists()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path, checkpoint_dir):
    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(32, 24))
    # a wrapper that sleeps after each chunk, so the kill lands between segments and not after the end
    wrapper = tmp_path / "slow_cli.py"
    wrapper.write_text(
        "import os, sys, time\n"
        "from flashvsr_q.infer import pipeline\n"
        "orig = pipeline.ChunkRunner.__iter__\n"
        "def slow(self):\n"
        "    for r in orig(self):\n"
        "        yield r\n"
        "        time.sleep(float(os.environ.get('SLOW_CHUNK_S', '0')))\n"
        "pipeline.ChunkRunner.__iter__ = slow\n"
        "from flashvsr_q.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    args = ["upscale", str(clip), "--checkpoint", str(checkpoint_dir), "--device", "cpu", "--dtype", "fp32",
            "--segment-frames", "8", "--preset", "ultrafast", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ref = tmp_path / "ref.mp4"
    subprocess.run([sys.executable, str(wrapper), *args, "-o", str(ref)], env=env, check=True, timeout=600)

    out = tmp_path / "out.mp4"
    manifest = out.with_name(out.name + ".parts") / MANIFEST_NAME
    proc = subprocess.Popen([sys.executable, str(wrapper), *args, "-o", str(out)],
                            env={**env, "SLOW_CHUNK_S": "30"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if manifest.exists() and json.loads(manifest.read_text())["progress"]["segments"] >= 1:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no segment completed in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and not out.exists()

    subprocess.run([sys.executable, str(wrapper), *args, "-o", str(out), "--resume"], env=env, check=True,
                   timeout=600)
    assert out.read_bytes() == ref.read_bytes()
