"""Quantized attention: ``sage`` (SageAttention, int8 Q/K) and ``sparge`` (SpargeAttn-style sparse Sage).

Both keep the LCSA block selection and compute only the selected blocks.

- ``sage``: the sageattention package on CUDA, run on gathered blocks; on CPU the same quantization math is
  emulated in PyTorch (SageAttention 1: K smoothed by its mean, Q int8 per 128-token block, K int8 per
  64-token block, P.V in fp16), so its accuracy cost can be measured anywhere.
- ``sparge``: the SpargeAttn block-sparse Sage2 kernel on CUDA (mask at 128x64 granularity); emulated
  elsewhere with SageAttention 2 math (Q int8 per 32-token warp block, K int8 per 64-token block, P and V in fp8
  e4m3 with V scaled per channel).

Neither ever modifies the caller's K: sageattention 1.x subtracts the key mean *in place*, which would corrupt the
streaming KV cache, so kernels always get a copy.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from flashvsr_q.attention.lcsa import BLOCK, expand_block_mask
from flashvsr_q.attention.registry import register_backend
from flashvsr_q.attention.sparse import gathered_attention

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _quantize_int8(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block of ``block`` tokens: [n, L, d] -> (integer values as float, scale [n, L, 1])."""
    n, length, d = x.shape
    pad = (-length) % block
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, pad)).view(n, -1, block, d)
    scale = xp.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-8) / 127.0
    ints = (xp / scale).round().clamp(-127, 127)
    scale = scale.expand(-1, -1, block, 1).reshape(n, -1, 1)[:, :length]
    return ints.view(n, -1, d)[:, :length], scale


def sage1_emulated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SageAttention 1 math on [n, Lq, d] / [n, Lk, d]; integer products are exact in fp32 at these sizes."""
    k = k - k.mean(dim=-2, keepdim=True)  # smoothing K: softmax-invariant, shrinks the int8 range; a new tensor
    qi, qs = _quantize_int8(q, 128)
    ki, ks = _quantize_int8(k, 64)
    scores = (qi @ ki.transpose(-1, -2)) * qs * ks.transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = scores.softmax(dim=-1)
    return (probs.half().float() @ v.half().float()).to(q.dtype)


def sage2_emulated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SageAttention 2 math: finer Q blocks, fp8 (e4m3) P and V."""
    k = k - k.mean(dim=-2, keepdim=True)
    qi, qs = _quantize_int8(q, 32)
    ki, ks = _quantize_int8(k, 64)
    scores = (qi @ ki.transpose(-1, -2)) * qs * ks.transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = scores.softmax(dim=-1)
    v_scale = v.float().abs().amax(dim=-2, keepdim=True).clamp_min(1e-8) / FP8_MAX  # per channel
    p8 = (probs * FP8_MAX).to(torch.float8_e4m3fn).float()
    v8 = (v.float() / v_scale).to(torch.float8_e4m3fn).float()
    return ((p8 @ v8) * v_scale / FP8_MAX).to(q.dtype)


def _sage_unavailable(device: torch.device) -> str | None:
    if device.type == "cuda" and importlib.util.find_spec("sageattention") is None:
        return "the sageattention package is not installed (pip install sageattention)"
    if device.type not in ("cuda", "cpu"):
        return f"no SageAttention path for {device.type}"
    return None


def _sparge_unavailable(device: torch.device) -> str | None:
    if device.type == "cuda" and importlib.util.find_spec("spas_sage_attn") is None:
        return "the SpargeAttn package (spas_sage_attn) is not installed"
    if device.type not in ("cuda", "cpu"):
        return f"no SpargeAttn path for {device.type}"
    return None


def _sageattn_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    # NHD layout with one head per gathered row; k is cloned because sageattention 1.x smooths K in place
    out = sageattn(q[:, :, None].to(dtype), k[:, :, None].to(dtype).clone(), v[:, :, None].to(dtype),
                   tensor_layout="NHD", is_causal=False)
    return out[:, :, 0].to(q.dtype)


@register_backend("sage", exact=False, unavailable=_sage_unavailable,
                  description="SageAttention int8 Q/K on the LCSA blocks (kernel on CUDA, emulated on CPU)")
def sage_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None
) -> torch.Tensor:
    kernel = _sageattn_kernel if q.is_cuda else sage1_emulated
    return gathered_attention(q, k, v, block_mask, kernel=kernel)


@register_backend("sparge", exact=False, unavailable=_sparge_unavailable,
                  description="SpargeAttn block-sparse Sage2 on the LCSA blocks (kernel on CUDA, emulated on CPU)")
def sparge_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None
) -> torch.Tensor:
    if not q.is_cuda:
        return gathered_attention(q, k, v, block_mask, kernel=sage2_emulated)
    from spas_sage_attn import block_sparse_sage2_attn_cuda

    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    # SpargeAttn masks are 128 (query) x 64 (key) blocks: split every 128-key block in two
    mask_id = block_mask.repeat_interleave(2, dim=-1).to(torch.int8)
    out = block_sparse_sage2_attn_cuda(q.to(dtype), k.to(dtype).clone(), v.to(dtype), mask_id=mask_id,
                                       tensor_layout="HND")
    empty = ~block_mask.any(-1)  # guard the zero-row contract regardless of the kernel version
    return out.to(q.dtype).masked_fill(empty.repeat_interleave(BLOCK, dim=-1)[..., None], 0.0)


__all__ = ["expand_block_mask", "sage1_emulated", "sage2_emulated"]
