"""Locality-Constrained Sparse Attention (LCSA): windows, the local mask and top-k block selection (spec §5).

Tokens are grouped into 3-D windows of (2 latent frames, 8 rows, 8 columns) = 128 tokens; one window is one
128x128 kernel block. A draft score between mean-pooled query and key windows, restricted to a local spatial
window of ``local_range`` x ``local_range`` blocks, picks the key blocks each query block attends to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

BLOCK = 128  # tokens per window = per kernel block
WINDOW = (2, 8, 8)  # (latent frames, token rows, token columns)
OFFICIAL_PIXELS = 768 * 1280  # the resolution at which sparse_ratio is defined


@dataclass(frozen=True)
class LCSASettings:
    """Runtime knobs of the sparse attention (official defaults of the example scripts).

    Args:
        local_range: side of the local window in blocks (11: stable, 9: sharper).
        sparse_ratio: key blocks kept per query block, in units of 60 (2.0: stable, 1.5: faster).
        kv_len: number of cached frame groups (2 latent frames each) kept in the KV cache.
    """

    local_range: int = 11
    sparse_ratio: float = 2.0
    kv_len: int = 3

    def __post_init__(self) -> None:
        if self.local_range < 1:
            raise ValueError(f"local_range must be >= 1, got {self.local_range}")
        if self.sparse_ratio <= 0:
            raise ValueError(f"sparse_ratio must be > 0, got {self.sparse_ratio}")
        if self.kv_len < 1:
            raise ValueError(f"kv_len must be >= 1, got {self.kv_len}")


def to_windows(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """[B, f*h*w, D] tokens in (f, h, w) order -> [B, n_windows*128, D] in window order (group, row, col)."""
    f, h, w = grid
    if f % WINDOW[0] or h % WINDOW[1] or w % WINDOW[2]:
        raise ValueError(f"token grid {grid} is not a multiple of the LCSA window {WINDOW}")
    return rearrange(x, "b (g t hb y wb xx) d -> b (g hb wb t y xx) d", t=2, y=8, xx=8, g=f // 2, hb=h // 8, wb=w // 8)


def from_windows(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`to_windows`."""
    f, h, w = grid
    return rearrange(x, "b (g hb wb t y xx) d -> b (g t hb y wb xx) d", t=2, y=8, xx=8, g=f // 2, hb=h // 8, wb=w // 8)


def local_mask(blocks_h: int, blocks_w: int, local_range: int, device: torch.device | None = None) -> torch.Tensor:
    """Bool [ws, ws] mask between spatial blocks: (r', c') within the R x R window starting at r - R//2.

    The window slides normally and is *not* clamped at the picture edges, so edge blocks see truncated windows.
    """
    r = torch.arange(blocks_h, device=device)
    c = torch.arange(blocks_w, device=device)
    lo = local_range // 2
    rows_ok = (r[None, :] >= r[:, None] - lo) & (r[None, :] <= r[:, None] - lo + local_range - 1)
    cols_ok = (c[None, :] >= c[:, None] - lo) & (c[None, :] <= c[:, None] - lo + local_range - 1)
    # block index = row * blocks_w + col, query blocks on dim 0
    return (rows_ok[:, None, :, None] & cols_ok[None, :, None, :]).reshape(blocks_h * blocks_w, -1)


def topk_budget(blocks_per_group: int, height_px: int, width_px: int, sparse_ratio: float) -> int:
    """Key blocks kept per (head, query group): ``int(ws^2 * topk_ratio) - 1`` (spec §5.3 step 5).

    ``topk_ratio = sparse_ratio * 768*1280 / (H*W)`` in output pixels of the frame (or tile) being processed, so
    the per-query budget, and the compute, stay constant when the resolution or tile size changes.
    """
    topk_ratio = sparse_ratio * OFFICIAL_PIXELS / (height_px * width_px)
    return int(blocks_per_group * blocks_per_group * topk_ratio) - 1


@torch.no_grad()
def select_blocks(
    q: torch.Tensor, k: torch.Tensor, num_heads: int, blocks_hw: tuple[int, int], local_range: int, topk: int
) -> torch.Tensor:
    """LCSA block selection.

    Args:
        q: [B, nQ*128, D] query windows (RoPE applied), nQ = query groups * ws.
        k: [B, nK*128, D] key windows, oldest cached group first, nK = key groups * ws.
        num_heads: heads to split D into.
        blocks_hw: spatial blocks per frame group (rows, cols); ws = rows * cols.
        local_range: side R of the local window.
        topk: the budget from :func:`topk_budget`; clipped to entries - 1.

    Returns:
        bool [B, H, nQ, nK]: True where query block i attends to key block j.
    """
    b, lq, dim = q.shape
    n_q, n_k = lq // BLOCK, k.shape[1] // BLOCK
    ws = blocks_hw[0] * blocks_hw[1]
    head_dim = dim // num_heads
    # 1. mean-pool each window; the pooling and the matmul run in the model dtype, like the official draft.
    q_mean = q.view(b, n_q, BLOCK, num_heads, head_dim).mean(2).transpose(1, 2)  # [B, H, nQ, d]
    k_mean = k.view(b, n_k, BLOCK, num_heads, head_dim).mean(2).transpose(1, 2)  # [B, H, nK, d]
    scores = (q_mean @ k_mean.transpose(-1, -2) / math.sqrt(head_dim)).float()  # [B, H, nQ, nK]
    # 2. the local spatial window, tiled over every (query group, key group) pair; no causal mask
    allowed = local_mask(*blocks_hw, local_range, device=q.device).repeat(n_q // ws, n_k // ws)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    # 3. one shared budget per (head, query group): flatten [ws x nK] and keep entries > the (topk+1)-th largest
    groups = probs.view(b, num_heads, n_q // ws, ws * n_k)
    k_eff = min(topk, ws * n_k - 1)
    threshold = groups.topk(k_eff + 1, dim=-1).values[..., -1:]
    keep = groups > threshold  # strict: ties at the threshold are all dropped, as in the official code
    return keep.view(b, num_heads, n_q, n_k)


def expand_block_mask(block_mask: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """[B, H, nQ, nK] block mask -> [B, H, q_len, k_len] token mask (128-token blocks)."""
    return block_mask.repeat_interleave(BLOCK, dim=-2)[..., :q_len, :].repeat_interleave(BLOCK, dim=-1)[..., :k_len]
