"""The TCDecoder's blind spot at the LR Nyquist frequency, and the closed-form linear upsampler bounds."""

from __future__ import annotations

import pytest
import torch
from bounds import LinearUpsampler, blind_null_space, fit, planes, window_features
from helpers import REPO, random_model

from flashvsr_q.data.clips import bicubic_lr, upsample
from flashvsr_q.model.tc_decoder import DecoderState

SHIPPED = REPO / "checkpoints" / "flashvsr-small"
LR_SIDE = 64  # the decoder's reach is ~90 output px: check a centre well away from the borders


def column_periodic_lr(along: str, seed: int = 1) -> torch.Tensor:
    """LR frames [1, 3, 5, 64, 64] in [0, 1]: ``a + (-1)^y b`` with ``a``, ``b`` random along x (``along="y"``),
    or the same transposed: repeating every 2 pixels along one axis, any detail along the other."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(LR_SIDE, generator=g) * 0.5 + 0.25, torch.rand(LR_SIDE, generator=g) * 0.25
    sign = (-1.0) ** torch.arange(LR_SIDE)
    frame = a[None, :] + sign[:, None] * b[None, :]
    return (frame if along == "y" else frame.T).expand(1, 3, 5, LR_SIDE, LR_SIDE)


def decode(model, lr: torch.Tensor, along: str) -> torch.Tensor:
    cond = upsample(lr[0].transpose(0, 1)).transpose(0, 1)[None] * 2 - 1  # bicubic x4, [-1, 1]
    # any latents that do not vary along the repeating axis (they may along the other)
    shape = (1, 2, model.config.latent_channels, 1, LR_SIDE // 2) if along == "y" else \
        (1, 2, model.config.latent_channels, LR_SIDE // 2, 1)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    latents = latents.expand(-1, -1, -1, LR_SIDE // 2, LR_SIDE // 2)
    with torch.no_grad():
        return model.decoder(latents, cond, DecoderState())


def centre_spread(frames: torch.Tensor, dim: int) -> float:
    """Largest standard deviation along ``dim`` (-2: y, -1: x) of the central 32 x 32 output pixels."""
    c = frames.shape[-1] // 2
    return float(frames[..., c - 16 : c + 16, c - 16 : c + 16].std(dim=dim).max())


@pytest.mark.parametrize("along", ["y", "x"])
def test_decoder_output_is_constant_along_an_axis_where_the_lr_repeats_every_2_pixels(along):
    from flashvsr_q.checkpoints import load_checkpoint

    axis, other = (-2, -1) if along == "y" else (-1, -2)
    lr = column_periodic_lr(along)
    bicubic = upsample(lr[0].transpose(0, 1))
    assert centre_spread(bicubic, axis) > 0.05  # bicubic keeps the alternation...
    for model in (load_checkpoint(SHIPPED, dtype=torch.float32), random_model("small", 3)):
        out = decode(model, lr, along)
        assert centre_spread(out, axis) < 1e-5  # ... the decoder keeps nothing of it, whatever the weights
        assert centre_spread(out, other) > 1e-4  # while it does follow the detail along the other axis


def test_blind_weights_ignore_every_pattern_that_alternates_along_one_axis():
    k, side = 5, 12
    basis = blind_null_space(k)
    assert basis.shape == (k * k + 1, (k - 1) ** 2 + 1)
    blind = basis @ torch.randn(basis.shape[1], 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    free = torch.randn(k * k + 1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    sign = (-1.0) ** torch.arange(side)
    for pattern in (sign[:, None] * torch.randn(1, side, generator=g), torch.randn(side, 1, generator=g) * sign):
        x = torch.cat([window_features(pattern[None, None], k).double(), torch.zeros(side * side, 1).double()], 1)
        response = {name: (x @ w).reshape(side, side, 16)[2:-2, 2:-2] for name, w in (("blind", blind), ("free", free))}
        assert response["blind"].abs().max() < 1e-12  # inside, away from the replicated borders
        assert response["free"].abs().max() > 0.1


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
