"""TCDecoder: a TAEHV-style tiny video decoder conditioned on the LR frames, run as a stream (spec §7.1).

Each latent frame is concatenated with the pixel-unshuffled LR frames it covers and decoded time step by time
step: ``MemBlock`` layers see their own input from the previous time step, ``TGrow`` layers turn one time step
into several. State persists across calls, so decoding chunk by chunk equals decoding the whole clip at once.
The first call drops the first 3 frames: T latents give 4T - 3 frames, then 4T per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from flashvsr_q.model.configs import DECODER_COND_CHANNELS, SPATIAL_DOWN, TEMPORAL_DOWN, FlashVSRConfig
from flashvsr_q.model.lq_proj import pixel_unshuffle_3d

FRAMES_TO_TRIM = 3


def conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latent input to about [-3, 3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """ReLU(conv(cat[x, past]) + x), where past is this block's input at the previous time step."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(conv(2 * channels, channels), nn.ReLU(), conv(channels, channels), nn.ReLU(),
                                  conv(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TGrow(nn.Module):
    """1x1 conv to ``stride`` x channels, split into ``stride`` consecutive time steps (earliest first)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.conv(x).chunk(self.stride, dim=1))


@dataclass
class DecoderState:
    """Per-layer memory of the MemBlocks (their previous input) and whether the first call has happened."""

    memory: dict[int, torch.Tensor] = field(default_factory=dict)
    calls: int = 0


class TCDecoder(nn.Module):
    """``TCDecoder.ckpt``; ``decoder.N`` indices match the official keys."""

    def __init__(self, config: FlashVSRConfig):
        super().__init__()
        c0, c1, c2, c3 = config.decoder_channels
        self.decoder = nn.Sequential(
            Clamp(), conv(DECODER_COND_CHANNELS + config.latent_channels, c0), nn.ReLU(),
            conv(c0, c0, bias=False), nn.ReLU(),
            MemBlock(c0), MemBlock(c0), MemBlock(c0), nn.Upsample(scale_factor=2), TGrow(c0, 1),
            conv(c0, c1, bias=False),
            MemBlock(c1), MemBlock(c1), MemBlock(c1), nn.Upsample(scale_factor=2), TGrow(c1, 2),
            conv(c1, c2, bias=False),
            MemBlock(c2), MemBlock(c2), MemBlock(c2), nn.Upsample(scale_factor=2), TGrow(c2, 2),
            conv(c2, c3, bias=False), nn.ReLU(), conv(c3, c3, bias=False), nn.ReLU(), conv(c3, 3),
        )

    def forward(self, latents: torch.Tensor, cond: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Decode one chunk.

        Args:
            latents: [B, T, C, h, w] (NTCHW) DiT outputs x0, no VAE de-normalisation.
            cond: [B, 3, T', 8h, 8w] bicubic-upsampled LR frames in [-1, 1] aligned with the output frames;
                T' = 4T - 3 on the first call (front-padded with frame 0), 4T later.
            state: streaming memory, updated in place.

        Returns:
            [B, T', 3, 8h, 8w] frames, roughly in [0, 1] (not clamped).
        """
        pad = (-cond.shape[2]) % TEMPORAL_DOWN
        if pad:
            cond = torch.cat([cond[:, :, :1].expand(-1, -1, pad, -1, -1), cond], dim=2)
        cond = pixel_unshuffle_3d(cond, TEMPORAL_DOWN, SPATIAL_DOWN, SPATIAL_DOWN).transpose(1, 2)
        if cond.shape[1] != latents.shape[1]:
            raise ValueError(f"{cond.shape[1]} LR frame groups for {latents.shape[1]} latent frames")
        x = torch.cat([cond.to(latents.dtype), latents], dim=2)  # LR channels first, then the latent
        frames: list[torch.Tensor] = []
        for t in range(x.shape[1]):
            self._step(x[:, t], 0, state, frames)
        out = torch.stack(frames, dim=1)
        if state.calls == 0:
            out = out[:, FRAMES_TO_TRIM:]
        state.calls += 1
        return out

    def _step(self, x: torch.Tensor, start: int, state: DecoderState, out: list[torch.Tensor]) -> None:
        """Run one time step through layers ``start``..end, depth first (TAEHV's sequential mode)."""
        for i in range(start, len(self.decoder)):
            layer = self.decoder[i]
            if isinstance(layer, MemBlock):
                past = state.memory.get(i)
                state.memory[i] = x
                x = layer(x, torch.zeros_like(x) if past is None else past)
            elif isinstance(layer, TGrow):
                for step in layer(x):
                    self._step(step, i + 1, state, out)
                return
            else:
                x = layer(x)
        out.append(x)
