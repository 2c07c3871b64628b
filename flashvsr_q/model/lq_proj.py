"""The LQ projection (``LQ_proj_in``): bicubic-upsampled LR frames -> DiT tokens, 4 frames per latent (spec §3).

PixelUnshuffle3d(1, 16, 16) -> causal Conv3d (k=(4,3,3), stride (2,1,1)) -> RMS norm -> SiLU -> the same again ->
tokens -> Linear. The two causal convolutions carry a 2-frame cache between calls. The official v1 and v1.1 classes
differ only in *which* frames that cache holds:

- v1 (``Buffer_LQ4x_Proj``): before each conv the cache is overwritten with the tail of the current clip's own input,
  so every clip is processed on its own (a quirk the v1 weights were trained with, reproduced on purpose);
- v1.1 (``Causal_LQ4x_Proj``): each conv sees the previous clip's tail, updated after the conv: a true causal stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from flashvsr_q.model.configs import LQ_IN_CHANNELS, TEMPORAL_DOWN, TOKEN_PX, FlashVSRConfig

CACHE_FRAMES = 2


def pixel_unshuffle_3d(x: torch.Tensor, ff: int, hh: int, ww: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*ff*hh*ww, T/ff, H/hh, W/ww], channel order (c, ff, hh, ww) with c slowest."""
    return rearrange(x, "b c (t ff) (h hh) (w ww) -> b (c ff hh ww) t h w", ff=ff, hh=hh, ww=ww)


class CausalConv3d(nn.Conv3d):
    """Conv3d with kernel (4,3,3), stride (2,1,1): replicate padding of 1 in space and 2 frames in front.

    With a cache (the last 2 input frames of the previous step), the cache replaces the front padding.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=(4, 3, 3), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        front = CACHE_FRAMES
        if cache is not None:
            x = torch.cat([cache, x], dim=2)
            front -= cache.shape[2]
        return super().forward(F.pad(x, (1, 1, 1, 1, front, 0), mode="replicate"))


class ChannelRMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and ``gamma`` [C,1,1,1] (no bias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


@dataclass
class LQProjState:
    """Streaming state: the two conv caches and how many clips have been seen (clip 0 only primes)."""

    cache1: torch.Tensor | None = None
    cache2: torch.Tensor | None = None
    clips: int = field(default=0)


class LQProjection(nn.Module):
    """``LQ_proj_in``; parameter names match ``LQ_proj_in.ckpt``."""

    def __init__(self, config: FlashVSRConfig):
        super().__init__()
        c1, c2 = config.lq_channels
        self.variant = config.lq_variant
        self.conv1 = CausalConv3d(LQ_IN_CHANNELS, c1)
        self.norm1 = ChannelRMSNorm(c1)
        self.conv2 = CausalConv3d(c1, c2)
        self.norm2 = ChannelRMSNorm(c2)
        self.linear_layers = nn.ModuleList([nn.Linear(c2, config.dim)])

    def forward(self, clip: torch.Tensor, state: LQProjState) -> torch.Tensor | None:
        """One clip of LR frames [B, 3, T, H, W] in [-1, 1] -> tokens [B, (H/16)(W/16), D], or None.

        The first call takes frame 0 alone (T = 1), primes the caches and returns None; every later call
        takes 4 frames and returns the tokens of one latent frame.
        """
        first = state.clips == 0
        state.clips += 1
        if first:
            clip = clip[:, :, :1].expand(-1, -1, TEMPORAL_DOWN, -1, -1)  # 4 copies of frame 0
        elif clip.shape[2] != TEMPORAL_DOWN:
            raise ValueError(f"LQ projection takes clips of {TEMPORAL_DOWN} frames, got {clip.shape[2]}")
        x = pixel_unshuffle_3d(clip, 1, TOKEN_PX, TOKEN_PX)
        x, state.cache1 = self._causal(self.conv1, x, state.cache1)
        x = F.silu(self.norm1(x))
        if first:
            state.cache2 = x[:, :, -CACHE_FRAMES:]
            return None
        x, state.cache2 = self._causal(self.conv2, x, state.cache2)
        x = F.silu(self.norm2(x))  # [B, c2, 1, h, w]
        return self.linear_layers[0](rearrange(x, "b c f h w -> b (f h w) c"))

    def _causal(self, conv: CausalConv3d, x: torch.Tensor, cache: torch.Tensor | None):
        """Run ``conv`` with the variant's cache rule; returns (output, new cache)."""
        tail = x[:, :, -CACHE_FRAMES:]
        if self.variant == "v1":
            return conv(x, tail), tail  # own tail: no information from earlier clips (v1 quirk)
        return conv(x, cache), tail
