"""The exact references: ``dense`` (LCSA as a token-level mask) and ``full`` (no LCSA, ablations only)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flashvsr_q.attention.lcsa import expand_block_mask
from flashvsr_q.attention.registry import register_backend


@register_backend("dense", description="token-level masked attention in fp32; the exact LCSA reference")
def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) over the allowed keys only, in fp32; a row with no allowed key outputs 0."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if block_mask is not None:
        scores = scores.masked_fill(~expand_block_mask(block_mask, q.shape[-2], k.shape[-2]), float("-inf"))
    probs = scores.softmax(dim=-1).nan_to_num(0.0)  # all -inf rows give NaN: those query blocks output zeros
    return (probs @ v.float()).to(q.dtype)


@register_backend("full", uses_lcsa=False, description="dense attention to every key, no LCSA (ablations only)")
def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None) -> torch.Tensor:
    """Plain SDPA over all keys; ``block_mask`` is ignored (it is None for this backend)."""
    return F.scaled_dot_product_attention(q, k, v)
