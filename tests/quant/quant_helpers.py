"""Helpers for the quantization tests (import as `from quant.quant_helpers import ...`): a cheap DiT forward, SQNR."""

from __future__ import annotations

import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.model import FlashVSR


@torch.no_grad()
def dit_output(model: FlashVSR, seed: int = 0) -> torch.Tensor:
    """One first-chunk DiT step at a 128x128 output ([1, C, 6, 16, 16] latents): every block linear runs,
    including the cross-attention K/V of the prompt. Much cheaper than ``run_clip``."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    noise = torch.randn(1, cfg.latent_channels, 6, 16, 16, generator=g).to(model.device, model.dtype)
    lq = torch.randn(1, 6 * 8 * 8, cfg.dim, generator=g).to(model.device, model.dtype)
    return model.dit(noise, lq, model.conditioning(), model.dit.new_caches(3), 0, LCSASettings())


def sqnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    ref, out = reference.detach().float(), test.detach().float()
    return float(20 * torch.log10(ref.norm() / (ref - out).norm().clamp_min(1e-30)))
