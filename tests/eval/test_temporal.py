"""Temporal metrics: the weight-free frame-difference error, warping error with known flow, RAFT wiring, tLP."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.metrics import RAFT_LARGE
from flashvsr_q.eval.temporal import (
    FrameDifferenceError,
    WarpingError,
    backward_warp,
    build_temporal,
    compute_temporal_metrics,
    occlusion_mask,
)


@pytest.fixture(scope="module")
def panning() -> list[np.ndarray]:
    """Three frames of a real photo panning 3 px right and 2 px down per frame (128x128)."""
    image = skimage.data.astronaut()[::4, ::4].copy()
    return [np.roll(image, (2 * k, 3 * k), axis=(0, 1)) for k in range(3)]


def test_frame_difference_error_matches_formula(panning):
    gt = np.stack(panning)
    rng = np.random.default_rng(0)
    flicker = (gt.astype(np.int16) + rng.integers(-6, 7, size=(3, 1, 1, 3))).clip(0, 255).astype(np.uint8)
    values = compute_temporal_metrics(flicker, gt, ["tdiff"])["tdiff"]
    sr64, gt64 = flicker.astype(np.float64), gt.astype(np.float64)
    expected = [np.abs((sr64[t] - sr64[t - 1]) - (gt64[t] - gt64[t - 1])).mean() for t in (1, 2)]
    assert values == pytest.approx(expected, abs=1e-3)
    assert compute_temporal_metrics(gt, gt, ["tdiff"])["tdiff"] == [0.0, 0.0]
    with pytest.raises(FlashVSRError, match="need GT"):
        compute_temporal_metrics(gt, None, ["tdiff"])


class TranslationFlow:
    """Known flow for the panning clip: forward (+3, +2) px, backward (-3, -2), alternating as WarpingError asks."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sign = 1 if self.calls % 2 == 0 else -1
        self.calls += 1
        flow = torch.zeros(a.shape[0], 2, *a.shape[2:])
        flow[:, 0], flow[:, 1] = 3 * sign, 2 * sign
        return flow


def test_warping_error_is_zero_for_the_true_flow_and_not_for_zero_flow(panning):
    exact = WarpingError("cpu", flow=TranslationFlow(), half_resolution=False)
    still = WarpingError("cpu", flow=lambda a, b: torch.zeros(a.shape[0], 2, *a.shape[2:]), half_resolution=False)
    for frame in panning:
        exact.update(frame)
        still.update(frame)
    assert len(exact.values()) == 2 and max(exact.values()) < 1e-6
    assert min(still.values()) > 1.0


def test_occlusion_mask_drops_only_pixels_warped_from_outside():
    fw = torch.zeros(1, 2, 16, 20)
    fw[:, 0] = 3
    mask = occlusion_mask(fw, -fw)
    assert mask[..., :17].all() and not mask[..., 17:].any()  # x + 3 leaves the frame for the last 3 columns
    warped, inside = backward_warp(torch.arange(20.0).expand(1, 1, 16, 20), fw)
    assert torch.allclose(warped[0, 0, 0, :17], torch.arange(3.0, 20.0), atol=1e-4) and torch.equal(inside, mask)


def test_ewarp_runs_raft_from_the_weights_folder(empty_weights, panning):
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(0)
    path = RAFT_LARGE.path(empty_weights)
    path.parent.mkdir(parents=True)
    torch.save(raft_large(weights=None).state_dict(), path)  # random weights: wiring, not accuracy
    assert isinstance(build_temporal("ewarp", device="cpu"), WarpingError)
    meter = WarpingError(device="cpu", iterations=4)  # fewer refinement steps: this checks wiring, not flow
    for frame in panning[:2]:
        meter.update(frame)  # 64x64 after halving: padded to RAFT's 128 minimum inside
    assert len(meter.values()) == 1 and np.isfinite(meter.values()[0])


def test_tlp_with_synthetic_lpips_weights(fake_lpips_weights, panning):
    gt = np.stack(panning)
    values = compute_temporal_metrics(gt, gt, ["tlp"], device="cpu")["tlp"]
    assert values == pytest.approx([0.0, 0.0], abs=1e-6)
    frozen = np.stack([panning[0]] * 3)  # SR that does not move while GT pans
    assert min(compute_temporal_metrics(frozen, gt, ["tlp"], device="cpu")["tlp"]) > 0


def test_frame_difference_meter_streams():
    meter = FrameDifferenceError()
    frames = [np.full((8, 8, 3), v, np.uint8) for v in (10, 20, 20)]
    for frame in frames:
        meter.update(frame, np.full((8, 8, 3), 10, np.uint8))
    assert meter.values() == pytest.approx([10.0, 0.0], abs=1e-4)
