"""Colour correction of the model output against the bicubic-upsampled LR frames (spec §7.3).

``adain`` (official default): per frame and RGB channel, match the output's spatial mean/std to the LR frame's.
``wavelet``: keep the output's high frequencies and take the lowest band (5 dilated blurs) from the LR frame.
Both are per frame, so chunked and tiled runs give the same result as whole-clip runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("adain", "wavelet", "none")


def adain(frames: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """[B, 3, T, H, W] both in [-1, 1] -> corrected and clipped to [-1, 1]. Variance biased, + eps."""
    dims = (-2, -1)
    var, mean = torch.var_mean(frames, dim=dims, keepdim=True, correction=0)
    ref_var, ref_mean = torch.var_mean(reference.to(frames.dtype), dim=dims, keepdim=True, correction=0)
    out = (frames - mean) / (var + eps).sqrt() * (ref_var + eps).sqrt() + ref_mean
    return out.clamp(-1, 1)


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """3x3 [1,2,1] x [1,2,1] / 16 Gaussian, dilated by ``radius``, replicate padding; x [N, C, H, W]."""
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (torch.outer(k1, k1) / 16).expand(x.shape[1], 1, 3, 3)
    pad = F.pad(x, (radius,) * 4, mode="replicate") if radius < min(x.shape[-2:]) else \
        F.pad(F.pad(x, (1,) * 4, mode="replicate"), (radius - 1,) * 4, mode="constant")
    return F.conv2d(pad, kernel, groups=x.shape[1], dilation=radius)


def _split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _blur(x, 2**i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1]: output's high bands + LR's low band, clipped to [-1, 1]."""
    b, c, t, h, w = frames.shape
    flat = lambda x: x.transpose(1, 2).reshape(b * t, c, h, w).float()  # noqa: E731
    high, _ = _split(flat(frames))
    _, low = _split(flat(reference))
    out = (high + low).reshape(b, t, c, h, w).transpose(1, 2).to(frames.dtype)
    return out.clamp(-1, 1)


def color_fix(frames: torch.Tensor, reference: torch.Tensor, method: str = "adain") -> torch.Tensor:
    """Apply ``method`` (one of :data:`COLOR_FIXES`)."""
    if method == "adain":
        return adain(frames, reference)
    if method == "wavelet":
        return wavelet(frames, reference)
    if method == "none":
        return frames.clamp(-1, 1)
    raise ValueError(f"unknown colour fix {method!r}; choose one of {COLOR_FIXES}")


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 as the official writer: truncate((x + 1) * 127.5) clipped to [0, 255]."""
    return ((frames.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
