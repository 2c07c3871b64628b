"""The TCDecoder's blind spot at the LR Nyquist frequency, and the closed-form linear upsampler bounds."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO, random_model

from flashvsr_q.data.clips import bicubic_lr, upsample
from flashvsr_q.model.tc_decoder import DecoderState
from flashvsr_q.train.bounds import LinearUpsampler, blind_null_space, fit, planes, window_features

SHIPPED = REPO / "checkpoints" / "flashvsr-small"
LR_SIDE = 64  # the decoder's reach is ~90 output px: check a centre well away from the borders


def nyquist_lr(kind: str) -> torch.Tensor:
    """LR frames [1, 3, 5, 64, 64] in [0, 1] alternating from pixel to pixel along x, y or both."""
    i = torch.arange(LR_SIDE)
    pattern = {"x": i[None, :] % 2, "y": i[:, None] % 2, "xy": (i[:, None] + i[None, :]) % 2}[kind]
    return pattern.float().expand(1, 3, 5, LR_SIDE, LR_SIDE)


def decode(model, lr: torch.Tensor) -> torch.Tensor:
    cond = upsample(lr[0].transpose(0, 1)).transpose(0, 1)[None] * 2 - 1  # bicubic x4, [-1, 1]
    # any latent values, the same at every position: only the LR conditioning varies over space
    latents = torch.randn(1, 2, model.config.latent_channels, 1, 1, generator=torch.Generator().manual_seed(0))
    latents = latents.expand(-1, -1, -1, LR_SIDE // 2, LR_SIDE // 2)
    with torch.no_grad():
        return model.decoder(latents, cond, DecoderState())


def centre_spread(frames: torch.Tensor) -> float:
    """Largest spatial standard deviation, over frames and colours, of the central 32 x 32 output pixels."""
    c = frames.shape[-1] // 2
    return float(frames[..., c - 16 : c + 16, c - 16 : c + 16].std(dim=(-1, -2)).max())


@pytest.mark.parametrize("kind", ["x", "y", "xy"])
def test_decoder_conditioning_cannot_carry_lr_nyquist_detail_whatever_the_weights(kind):
    from flashvsr_q.checkpoints import load_checkpoint

    noise = torch.rand(1, 3, 5, LR_SIDE, LR_SIDE, generator=torch.Generator().manual_seed(1))
    for model in (load_checkpoint(SHIPPED, dtype=torch.float32), random_model("small", 3)):
        assert centre_spread(decode(model, nyquist_lr(kind))) < 1e-5
        assert centre_spread(decode(model, noise)) > 1e-4  # the same decoder does respond to detail
    # ... where bicubic keeps the pattern
    bicubic = upsample(nyquist_lr(kind)[0].transpose(0, 1))
    assert centre_spread(bicubic) > 0.1


def test_blind_weights_ignore_the_nyquist_patterns():
    basis = blind_null_space(5)
    weights = basis @ torch.randn(basis.shape[1], 16, dtype=torch.float64)
    for kind in ("x", "y", "xy"):
        lr = nyquist_lr(kind)[0, 0, :1, :12, :12][:, None] * 2 - 1  # [1, 1, 12, 12], +-1: no DC
        x = torch.cat([window_features(lr, 5).double(), torch.zeros(144, 1, dtype=torch.float64)], 1)
        inside = (x @ weights).reshape(12, 12, 16)[2:-2, 2:-2]  # away from the replicated borders
        assert inside.abs().max() < 1e-12


def test_least_squares_beats_bicubic_on_its_own_fit_data_and_grows_with_support():
    hr = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    hr = torch.nn.functional.avg_pool2d(hr, 3, 1, 1)  # some spatial correlation, like images
    lr = bicubic_lr(hr)
    errors = {}
    for k in (3, 5):
        m = LinearUpsampler("free", k, ridge=0.0)
        m.add(planes(lr), planes(hr))
        m.solve()
        errors[k] = float(((m(planes(lr)) - planes(hr)) ** 2).mean())
    bicubic = float(((upsample(lr) - hr) ** 2).mean())
    assert errors[5] <= errors[3]
    assert errors[5] < bicubic  # bicubic's 4x4 taps per output lie inside the 5x5 window


def test_fit_and_call_give_frames_of_the_output_size():
    free, designed = fit(("free", "designed"), (3,), clips=1)
    lr = torch.rand(2, 1, 8, 12)
    assert free(lr).shape == designed(lr).shape == (2, 1, 32, 48)
    with pytest.raises(ValueError, match="unknown family"):
        LinearUpsampler("cubic", 3)
