"""The streaming pipeline: exact geometry and frame alignment, tiling vs untiled, reference equality, cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from infer.upscale_support import IdentityStream, random_frames

from flashvsr_q.attention import LCSASettings
from flashvsr_q.infer.colorfix import to_uint8
from flashvsr_q.infer.pipeline import Cancelled, TiledStreams, UpscaleSettings, plan_memory, preprocess, upscale_frames
from flashvsr_q.infer.tiling import Geometry
from flashvsr_q.model import SeededNoise, padded_length, run_clip


@pytest.fixture
def identity(monkeypatch):
    monkeypatch.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", IdentityStream)


def upsampled(frames: list[np.ndarray], scale: int) -> np.ndarray:
    """What an identity model must output: the bicubic-upsampled input, frame by frame, as uint8."""
    h, w = frames[0].shape[:2]
    g = Geometry(w, h, scale)
    return np.stack([to_uint8(preprocess(f, g, torch.float32)[:, : g.out_height, : g.out_width]).permute(1, 2, 0)
                     .numpy() for f in frames])


# -- geometry and alignment, with the identity stream (model cost ~0) --------------------------------------------


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 30), h=st.integers(1, 24), w=st.integers(1, 24), scale=st.sampled_from([1, 2, 3, 4]),
       tile=st.sampled_from(["off", "smallest", "wider"]))
def test_n_frames_in_n_frames_out_aligned(n, h, w, scale, tile, test_model):
    smallest = -(-256 // scale)  # LR px of the smallest tile allowed: 256 output px
    tile = {"off": "off", "smallest": f"{smallest}x{smallest // 2}", "wider": f"{2 * smallest}x{smallest // 4}"}[tile]
    frames = random_frames(n, h, w, seed=n * 1000 + h * 10 + w)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", IdentityStream)
        out = np.stack(list(upscale_frames(test_model, frames, scale=scale, tile=tile, color_fix="none")))
    assert out.shape == (n, h * scale, w * scale, 3) and out.dtype == np.uint8
    # frame i of the output is frame i of the input (frames are independent noise, so any shift shows)
    diff = np.abs(out.astype(int) - upsampled(frames, scale).astype(int))
    assert diff.max() <= (0 if tile == "off" else 1)  # tiles: blending rounds by at most one level


@pytest.mark.parametrize("n, h, w", [(1, 2, 2), (1, 1, 1), (2, 33, 17), (21, 32, 33), (22, 8, 8), (29, 5, 7),
                                     (30, 64, 65)])
def test_exact_shapes_at_the_edges(n, h, w, test_model, identity):
    # 32x33 -> 128x132 is just above a 128-px boundary; 21/22/29/30 frames straddle the chunk boundaries
    frames = random_frames(n, h, w)
    out = list(upscale_frames(test_model, frames, tile="off", color_fix="none"))
    assert len(out) == n and all(o.shape == (4 * h, 4 * w, 3) for o in out)
    assert np.array_equal(np.stack(out), upsampled(frames, 4))


def test_unknown_length_stream_and_progress(test_model, identity):
    calls = []
    frames = (f for f in random_frames(30, 8, 8))  # a one-shot iterator: the end is found by exhausting it
    out = list(upscale_frames(test_model, frames, tile="off", progress=lambda d, t: calls.append((d, t))))
    assert len(out) == 30
    assert calls[0] == (21, None) and calls[-1] == (30, 30)


def test_input_is_read_just_in_time(test_model, identity):
    """Host RAM: the pipeline never reads more than the current chunk of input ahead of its output."""
    pulled = []

    def frames():
        for i, f in enumerate(random_frames(60, 8, 8)):
            pulled.append(i)
            yield f

    gen = upscale_frames(test_model, frames(), tile="off")
    for produced in range(1, 61):
        next(gen)
        assert len(pulled) - produced <= 25  # at most one chunk (25 LR frames) beyond what came out


def test_cancel_between_tiles(test_model, identity):
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        list(upscale_frames(test_model, random_frames(3, 8, 8), cancel=event))


def test_bad_frames_are_errors(test_model, identity):
    from flashvsr_q.errors import FlashVSRError

    with pytest.raises(FlashVSRError, match="no frames"):
        list(upscale_frames(test_model, []))
    with pytest.raises(FlashVSRError, match="uint8"):
        list(upscale_frames(test_model, [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)]))
    with pytest.raises(FlashVSRError, match="scale"):
        list(upscale_frames(test_model, random_frames(1, 4, 4), scale=9))


# -- the real (random-weight) model ------------------------------------------------------------------------------


def test_untiled_pipeline_equals_the_whole_clip_reference(test_model):
    """upscale_frames == preprocess + pad in time + run_clip + crop, bit for bit (colour fix off)."""
    n, h, w = 22, 30, 32  # 120x128 out: padded to 128x128 in space, 22 -> 33 frames (2 chunks) in time
    frames = random_frames(n, h, w, seed=3)
    g = Geometry(w, h, 4)
    out = np.stack(list(upscale_frames(test_model, frames, tile="off", color_fix="none", seed=5)))
    lr = torch.stack([preprocess(f, g, test_model.dtype) for f in frames], dim=1)[None]
    pad = padded_length(n) - n
    lr = torch.cat([lr, lr[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
    ref, _ = run_clip(test_model, lr, SeededNoise(5, 16, 16, 16))
    ref = to_uint8(ref[:, :, :n, : g.out_height, : g.out_width].clamp(-1, 1))[0].permute(1, 2, 3, 0).numpy()
    assert np.array_equal(out, ref)


def test_tiled_output_differs_from_untiled_only_in_the_overlaps(test_model):
    """With block-local attention (local_range=1) a tile computes what the untiled frame computes there (up to float
    rounding of differently sized matmuls), except near its cut edges, and blending hides those edges inside the
    overlaps. So outside the overlap bands the tiled frames equal the untiled ones; inside them they differ."""
    g = Geometry(96, 32, 4)  # 384x128 out
    settings_ = UpscaleSettings(color_fix="none", lcsa=LCSASettings(local_range=1))
    lr = torch.stack([preprocess(f, g, test_model.dtype) for f in random_frames(25, 32, 96, seed=1)], dim=1)[None]
    full, _ = TiledStreams(test_model, g, plan_memory(test_model, g, "off", None, settings_), settings_).step(lr)
    plan = plan_memory(test_model, g, "64x32", None, settings_)
    assert plan.plan.cols == ((0, 256), (128, 256))  # 2 tiles of 256 px overlapping on [128, 256)
    tiled, _ = TiledStreams(test_model, g, plan, settings_).step(lr)
    diff = (full - tiled).abs().amax(dim=(0, 1, 2, 3))  # per column
    seams = torch.zeros(384, dtype=torch.bool)
    seams[128:256] = True
    assert diff[~seams].max() <= 1e-6  # float32 rounding only (measured: 1.2e-7)
    assert diff[seams].max() > 5e-6  # not vacuous: the tiles were computed separately (measured: 1.3e-5)


def test_real_model_tiny_image(test_model):
    out = list(upscale_frames(test_model, random_frames(1, 2, 2), tile="auto", color_fix="wavelet"))
    assert len(out) == 1 and out[0].shape == (8, 8, 3)
