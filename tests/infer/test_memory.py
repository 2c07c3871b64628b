"""Memory planner: sizes, the estimate against published peaks, budget-driven tiling, and the OOM fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer.upscale_support import IdentityStream, random_frames

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.memory import GIB, choose_plan, estimate, module_bytes, parse_bytes, tensor_bytes
from flashvsr_q.infer.pipeline import upscale_frames
from flashvsr_q.infer.tiling import Geometry, plan_tiles
from flashvsr_q.model import get_config

OFFICIAL = get_config("flashvsr-v1.1")
OFFICIAL_WEIGHTS = (1_418_996_800 + 287_845_888 + 45_338_371) * 2  # bf16, spec §8


def test_parse_bytes():
    assert parse_bytes("8GB") == 8 * GIB == parse_bytes("8 GiB") == parse_bytes("8g")
    assert parse_bytes("512MB") == 512 * 1024**2 and parse_bytes("1.5GB") == int(1.5 * GIB)
    assert parse_bytes("1000") == 1000 and parse_bytes(42) == 42
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")


def test_weights_are_measured_as_stored(test_model):
    params = sum(p.numel() for p in test_model.parameters()) + test_model.prompt.numel()
    assert module_bytes(test_model) == 4 * params
    linear = torch.nn.Linear(256, 256)
    torchao = pytest.importorskip("torchao.quantization")
    torchao.quantize_(linear, torchao.Int8WeightOnlyConfig())
    w = linear.weight
    assert type(w) is not torch.nn.Parameter  # a tensor subclass...
    assert 256 * 256 <= tensor_bytes(w) < 2 * 256 * 256  # ...measured as int8 data + scales, not 4 B/param


def test_estimate_matches_published_peaks():
    """Spec §9: 768x1408, 101 frames, A100 tiny pipeline: 14,574-14,844 MiB, of which ~1.3 GB is the whole-clip LR
    input and output kept on the GPU (our pipeline streams them); the KV cache alone is ~4.7 GB (3 groups)."""
    g = Geometry(352, 192, 4)
    est = estimate(OFFICIAL, OFFICIAL_WEIGHTS, torch.bfloat16, g, plan_tiles(768, 1408),
                   backend="block_sparse")
    kv3 = 30 * 2 * 3 * 2 * (768 * 1408 // 256) * 1536 * 2
    assert abs(kv3 / 1e9 - 4.7) < 0.1
    clip_buffers = 2 * 3 * 101 * 768 * 1408 * 2
    measured = 14_574 * 1024**2
    assert 0.8 * measured <= est.peak + clip_buffers <= 1.25 * measured


def test_planner_fits_the_budget_and_prefers_few_pixels():
    g = Geometry(480, 270, 4)  # 1080p out
    kw = dict(backend="block_sparse")
    unlimited = choose_plan(OFFICIAL, OFFICIAL_WEIGHTS, torch.bfloat16, g, None, **kw)
    assert not unlimited.plan.tiled
    peaks, overheads = [], []
    for budget_gb in (24, 16, 12, 8):
        mp = choose_plan(OFFICIAL, OFFICIAL_WEIGHTS, torch.bfloat16, g, budget_gb * GIB, **kw)
        assert mp.estimate.peak <= budget_gb * GIB
        peaks.append(mp.estimate.peak)
        overheads.append(mp.plan.area_ratio)
        if mp.plan.tiled:
            assert min(mp.plan.tile_size) >= 256 and mp.plan.overlap >= 128
    assert peaks == sorted(peaks, reverse=True) and overheads == sorted(overheads)
    with pytest.raises(FlashVSRError, match="budget"):
        choose_plan(OFFICIAL, OFFICIAL_WEIGHTS, torch.bfloat16, g, 3 * GIB, **kw)  # less than the weights


class OOMOnLargeTiles(IdentityStream):
    """Raises CUDA's out-of-memory error (on CPU) for tiles wider than 256 px."""

    def step(self, lr):
        if lr.shape[-1] > 256:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().step(lr)


def test_oom_in_the_first_chunk_retries_with_smaller_tiles(test_model, monkeypatch):
    """A fake CUDA OOM for tiles wider than 256 px: the run restarts with smaller tiles and still gives every frame."""
    monkeypatch.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", OOMOnLargeTiles)
    plans = []
    frames = random_frames(30, 8, 160)  # 640 px wide: one 640-px tile first
    out = list(upscale_frames(test_model, (f for f in frames), tile="off", on_plan=plans.append, color_fix="none"))
    assert len(out) == 30 and out[0].shape == (32, 640, 3)
    widths = [p.plan.tile_size[1] for p in plans]
    assert widths[0] == 640 and widths[-1] <= 256 and widths == sorted(widths, reverse=True)
    monkeypatch.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", IdentityStream)
    reference = list(upscale_frames(test_model, frames, tile="off", color_fix="none"))
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(out, reference)) <= 1


def test_other_errors_are_not_retried(test_model, monkeypatch):
    class Broken(IdentityStream):
        def step(self, lr):
            raise RuntimeError("something else")

    monkeypatch.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", Broken)
    with pytest.raises(RuntimeError, match="something else"):
        list(upscale_frames(test_model, random_frames(2, 8, 8)))


def test_file_runs_retry_after_oom_and_say_so(tmp_path, checkpoint_dir, monkeypatch):
    from PIL import Image

    from flashvsr_q import upscale

    monkeypatch.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", OOMOnLargeTiles)
    Image.fromarray(random_frames(1, 8, 160)[0]).save(tmp_path / "in.png")
    logs = []
    summary = upscale(tmp_path / "in.png", tmp_path / "out.png", checkpoint=checkpoint_dir, device="cpu",
                      dtype="fp32", tile="off", show_progress=False, log=logs.append)
    assert summary.oom_retries and any("out of device memory" in line and "retrying" in line for line in logs)
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (32, 640, 3)
