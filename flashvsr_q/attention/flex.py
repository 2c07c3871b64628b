"""``flex``: torch FlexAttention with a BlockMask built directly from the LCSA block indices.

On CUDA the attention call is compiled, which makes FlexAttention emit a fused Triton block-sparse kernel (no
extension to build). On CPU it runs FlexAttention's eager reference path (exact, slow, for tests).
"""

from __future__ import annotations

import torch

from flashvsr_q.attention.lcsa import BLOCK
from flashvsr_q.attention.registry import register_backend

_compiled_flex = None


def _flex_call():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def _unavailable(device: torch.device) -> str | None:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:  # torch < 2.5
        return "torch.nn.attention.flex_attention is missing (needs torch >= 2.5)"
    return None


@register_backend("flex", description="torch FlexAttention with a BlockMask (Triton kernel on CUDA)",
                  unavailable=_unavailable)
def flex_attention_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None
) -> torch.Tensor:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    # selected key blocks first (stable order) and their count per query block
    order = torch.argsort((~block_mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    counts = block_mask.sum(-1, dtype=torch.int32)

    def lookup(b, h, q_idx, kv_idx):  # token-level view, used by the unfused (eager) path
        return block_mask[b, h, q_idx // BLOCK, kv_idx // BLOCK]

    # every selected block is "full": the compiled kernel skips mask_mod inside it
    mask = BlockMask.from_kv_blocks(torch.zeros_like(counts), order, full_kv_num_blocks=counts, full_kv_indices=order,
                                    BLOCK_SIZE=BLOCK, mask_mod=lookup, seq_lengths=(q.shape[-2], k.shape[-2]))
    out = (_flex_call() if q.is_cuda else flex_attention)(q, k, v, block_mask=mask)
    # query blocks with no key block: FlexAttention yields zeros, but guard anyway (the kernel contract)
    return out.masked_fill((counts == 0).repeat_interleave(BLOCK, dim=-1)[..., None], 0.0)
