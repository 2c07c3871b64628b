"""``block_sparse``: MIT-Han-Lab's Block-Sparse-Attention kernel, the one the official FlashVSR code calls (§5.4)."""

from __future__ import annotations

import importlib.util

import torch

from flashvsr_q.attention.registry import register_backend


def _unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "the Block-Sparse-Attention kernel needs a CUDA GPU (SM80+)"
    if importlib.util.find_spec("block_sparse_attn") is None:
        return "the block_sparse_attn package (mit-han-lab/Block-Sparse-Attention) is not installed"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "the Block-Sparse-Attention kernel needs SM80 or newer"
    return None


@register_backend("block_sparse", description="Block-Sparse-Attention CUDA kernel (official)", unavailable=_unavailable)
def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None
) -> torch.Tensor:
    from block_sparse_attn import block_sparse_attn_func

    b, h, q_len, d = q.shape
    if b != 1:
        raise ValueError("the Block-Sparse-Attention path takes batch size 1 (varlen-packed)")
    k_len = k.shape[-2]
    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    # varlen layout [L, H, d]; the kernel supports fp16/bf16 only
    qv, kv, vv = (t[0].transpose(0, 1).to(dtype).contiguous() for t in (q, k, v))
    cu_q = torch.tensor([0, q_len], dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0, k_len], dtype=torch.int32, device=q.device)
    head_mask_type = torch.ones(h, dtype=torch.int32, device=q.device)  # every head block-sparse
    out = block_sparse_attn_func(
        qv, kv, vv, cu_q, cu_k, head_mask_type, None, block_mask.contiguous(), q_len, k_len,
        p_dropout=0.0, deterministic=True, softmax_scale=None, is_causal=False, exact_streaming=False,
        return_attn_probs=False,
    )
    return out.transpose(0, 1)[None].to(q.dtype)
