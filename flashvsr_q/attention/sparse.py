"""``sparse``: computes only the selected 128x128 blocks by gathering their keys and values.

Rows (batch, head, query block) are bucketed by how many key blocks they selected, so each bucket is one batched,
unmasked SDPA call over exactly its gathered keys; memory is proportional to the selection (and bounded per call).
Works on any device; the default where no kernel is available.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from flashvsr_q.attention.lcsa import BLOCK
from flashvsr_q.attention.registry import register_backend

# [rows, 128, d], [rows, c*128, d], [rows, c*128, d] -> [rows, 128, d]
BlockKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MAX_GATHER_ELEMENTS = 1 << 26  # per K (and V) gather: 64 Mi elements = 128 MiB in bf16


def sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]


def gathered_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, kernel: BlockKernel = sdpa_kernel
) -> torch.Tensor:
    """Block-sparse attention by gather; see the module docstring. Layouts as in the registry."""
    b, h, q_len, d = q.shape
    n_q, n_k = block_mask.shape[-2:]
    if q_len != n_q * BLOCK or k.shape[-2] != n_k * BLOCK:
        raise ValueError(f"sequence lengths {q_len}/{k.shape[-2]} do not match the block mask "
                         f"{tuple(block_mask.shape)}")
    q_rows = q.reshape(b * h * n_q, BLOCK, d)
    k_blocks = k.reshape(b * h, n_k, BLOCK, d)
    v_blocks = v.reshape(b * h, n_k, BLOCK, d)
    mask = block_mask.reshape(b * h * n_q, n_k)
    head_of_row = torch.arange(b * h * n_q, device=q.device) // n_q
    counts = mask.sum(-1)
    out = q.new_zeros(b * h * n_q, BLOCK, d)  # rows that select nothing stay zero
    for count in counts.unique().tolist():
        if count == 0:
            continue
        rows = (counts == count).nonzero().squeeze(1)
        step = max(1, MAX_GATHER_ELEMENTS // (count * BLOCK * d))
        for start in range(0, rows.numel(), step):
            r = rows[start : start + step]
            selected = mask[r].nonzero()[:, 1].view(r.numel(), count)  # key block ids, ascending
            heads = head_of_row[r][:, None]
            keys = k_blocks[heads, selected].reshape(r.numel(), count * BLOCK, d)
            values = v_blocks[heads, selected].reshape(r.numel(), count * BLOCK, d)
            out[r] = kernel(q_rows[r], keys, values).to(out.dtype)
    return out.view(b, h, q_len, d)


@register_backend("sparse", description="gathers only the selected blocks; exact, any device, memory ~ selection")
def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None
) -> torch.Tensor:
    return gathered_attention(q, k, v, block_mask)
