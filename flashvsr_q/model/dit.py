"""The FlashVSR DiT: Wan2.1 blocks with LCSA self-attention over a streaming KV cache (spec §4-6).

Module and parameter names match the official checkpoint keys exactly (``blocks.N.self_attn.q.weight`` ...), so the
official state dict loads with ``strict=True``. Tokens are in (f, h, w) order; one token covers 16x16 output pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from flashvsr_q.attention import (
    AttentionBackend,
    LCSASettings,
    from_windows,
    get_backend,
    select_blocks,
    to_windows,
    topk_budget,
)
from flashvsr_q.attention.lcsa import BLOCK
from flashvsr_q.model.configs import FlashVSRConfig

ROPE_POSITIONS = 1024  # the official RoPE tables: at most 1024 latent frames (~4093 output frames)

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, dim] as [cos, sin] (cos first), computed in float64 then cast to position's dtype."""
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device).div(half))
    angles = torch.outer(position.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(position.dtype)


def rope_table(dim: int, positions: int = ROPE_POSITIONS, theta: float = 10000.0) -> torch.Tensor:
    """[positions, dim/2] complex128 rotations with frequencies 1/theta^(2i/dim)."""
    freqs = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Real dims of a head given to (frame, row, column): 44/42/42 for head_dim 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_freqs(tables: tuple[torch.Tensor, ...], grid: tuple[int, int, int], frame_offset: int) -> torch.Tensor:
    """[f*h*w, 1, head_dim/2] rotations for a token grid; the frame index is absolute, rows/columns local."""
    f, h, w = grid
    if frame_offset + f > ROPE_POSITIONS:
        raise ValueError(f"latent frame {frame_offset + f} exceeds the RoPE table ({ROPE_POSITIONS} positions)")
    tf, th, tw = tables
    return torch.cat(
        [
            tf[frame_offset : frame_offset + f].view(f, 1, 1, -1).expand(f, h, w, -1),
            th[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            tw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of each head in float64; [B, L, D] -> [B, L, D] in x's dtype."""
    b, length, dim = x.shape
    pairs = torch.view_as_complex(x.to(torch.float64).reshape(b, length, num_heads, -1, 2))
    return torch.view_as_real(pairs * freqs).flatten(2).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMS norm over the whole last dim (all heads together), computed in fp32, then scaled by ``weight``."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class KVCache:
    """Self-attention keys/values of the last ``kv_len`` frame groups, in window layout and already RoPE'd.

    ``k``/``v`` are [B, groups * ws * 128, D], oldest group first.
    """

    def __init__(self, kv_len: int):
        self.kv_len = kv_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def keys_with(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys/values followed by the current chunk's (what this chunk attends to)."""
        if self.k is None:
            return k, v
        return torch.cat([self.k, k], dim=1), torch.cat([self.v, v], dim=1)

    def update(self, k_all: torch.Tensor, v_all: torch.Tensor, group_tokens: int) -> None:
        """Keep ``k_all``/``v_all`` minus the oldest group while there are more than ``kv_len`` groups."""
        if k_all.shape[1] // group_tokens > self.kv_len:
            k_all, v_all = k_all[:, group_tokens:], v_all[:, group_tokens:]
        self.k, self.v = k_all, v_all

    @property
    def num_groups(self) -> int:
        return 0 if self.k is None else self.k.shape[1]


class SelfAttention(nn.Module):
    """q/k/v projections, full-width q/k RMSNorm, 3-D RoPE, LCSA block selection, KV cache, output projection."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int, int], freqs: torch.Tensor, cache: KVCache,
        backend: AttentionBackend, lcsa: LCSASettings, topk: int,
    ) -> torch.Tensor:
        f, h, w = grid
        heads = self.num_heads
        q = apply_rope(self.norm_q(self.q(x)), freqs, heads)  # [B, L, D]
        k = apply_rope(self.norm_k(self.k(x)), freqs, heads)
        v = self.v(x)
        q, k, v = (to_windows(t, grid) for t in (q, k, v))  # [B, L, D] in window order
        k_all, v_all = cache.keys_with(k, v)
        blocks_hw = (h // 8, w // 8)
        mask = select_blocks(q, k_all, heads, blocks_hw, lcsa.local_range, topk) if backend.uses_lcsa else None
        split = lambda t: rearrange(t, "b l (n d) -> b n l d", n=heads)  # noqa: E731
        out = backend(split(q), split(k_all), split(v_all), mask)  # [B, H, L, d]
        cache.update(k_all, v_all, group_tokens=blocks_hw[0] * blocks_hw[1] * BLOCK)
        return self.o(from_windows(rearrange(out, "b n l d -> b l (n d)"), grid))


class CrossAttention(nn.Module):
    """Dense attention from the tokens to the fixed prompt; its K/V are computed once (:meth:`prompt_kv`)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def prompt_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, text_len, D] embedded prompt -> cached (K, V); norm_k on K only, no RoPE."""
        return self.norm_k(self.k(context)), self.v(context)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        split = lambda t: rearrange(t, "b l (n d) -> b n l d", n=self.num_heads)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.norm_q(self.q(x))), split(kv[0]), split(kv[1]))
        return self.o(rearrange(out, "b n l d -> b l (n d)"))


class DiTBlock(nn.Module):
    """adaLN-modulated self-attention and FFN, plus an unmodulated, ungated cross-attention (spec §4.4)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float):
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=eps)  # the only affine LayerNorm
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(self, x, t_mod, cross_kv, grid, freqs, cache, backend, lcsa, topk) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (self.modulation + t_mod).chunk(6, dim=1)
        attn = self.self_attn(modulate(self.norm1(x), shift_msa, scale_msa), grid, freqs, cache, backend, lcsa, topk)
        x = x + gate_msa * attn
        x = x + self.cross_attn(self.norm3(x), cross_kv)
        return x + gate_mlp * self.ffn(modulate(self.norm2(x), shift_mlp, scale_mlp))


class Head(nn.Module):
    """Final LayerNorm modulated by ``t`` (not t_mod) and a linear layer to patch channels."""

    def __init__(self, dim: int, out_channels: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_channels)
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation + t[:, None]).chunk(2, dim=1)
        return self.head(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------------------------
# the DiT
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DiTConditioning:
    """What depends only on the weights (fixed timestep and prompt): computed once, reused for every chunk.

    t [1, D], t_mod [1, 6, D], cross_kv: per block (K, V) [1, text_len, D].
    """

    t: torch.Tensor
    t_mod: torch.Tensor
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]


class WanDiT(nn.Module):
    """The Wan2.1 DiT of FlashVSR, run one chunk at a time over a per-layer KV cache."""

    TIMESTEP = 1000.0  # one-step distilled model: always t = 1000

    def __init__(self, config: FlashVSRConfig):
        super().__init__()
        c = config
        self.config = c
        self.patch_embedding = nn.Conv3d(c.latent_channels, c.dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.text_embedding = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(DiTBlock(c.dim, c.ffn_dim, c.num_heads, c.eps) for _ in range(c.num_layers))
        self.head = Head(c.dim, c.patch_channels, c.eps)
        self.backend: AttentionBackend = get_backend("sparse")
        self._rope_tables: tuple[torch.Tensor, ...] | None = None

    def set_attention(self, backend: AttentionBackend | str, device: torch.device | str = "cpu") -> AttentionBackend:
        """Select the self-attention backend (a registry name, ``auto``, or a backend object); returns it."""
        self.backend = get_backend(backend, device) if isinstance(backend, str) else backend
        return self.backend

    @torch.no_grad()
    def conditioning(self, prompt: torch.Tensor) -> DiTConditioning:
        """Timestep embedding at t=1000 and the prompt's cross-attention K/V for every block."""
        dtype = self.patch_embedding.weight.dtype
        timestep = torch.tensor([self.TIMESTEP], dtype=dtype, device=prompt.device)
        t = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, timestep))  # [1, D]
        t_mod = self.time_projection(t).unflatten(1, (6, self.config.dim))  # [1, 6, D]
        context = self.text_embedding(prompt.to(dtype))  # [1, text_len, D]; all rows, padding included
        return DiTConditioning(t, t_mod, [block.cross_attn.prompt_kv(context) for block in self.blocks])

    def new_caches(self, kv_len: int) -> list[KVCache]:
        return [KVCache(kv_len) for _ in self.blocks]

    def patchify(self, noise: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """[B, C, f, H/8, W/8] latent -> [B, f*h*w, D] tokens and the grid (f, h, w)."""
        x = self.patch_embedding(noise)  # [B, D, f, h, w]
        grid = tuple(x.shape[2:])
        return rearrange(x, "b d f h w -> b (f h w) d"), grid

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, f*h*w, 4C] -> [B, C, f, 2h, 2w]; channel index = py*2C + px*C + c."""
        f, h, w = grid
        return rearrange(x, "b (f h w) (pt py px c) -> b c (f pt) (h py) (w px)", f=f, h=h, w=w, pt=1, py=2, px=2)

    def forward(
        self, noise: torch.Tensor, lq_tokens: torch.Tensor, cond: DiTConditioning, caches: list[KVCache],
        frame_offset: int, lcsa: LCSASettings,
    ) -> torch.Tensor:
        """One chunk: returns the velocity v [B, C, f, H/8, W/8]; x0 = noise - v.

        Args:
            noise: [B, C, f, H/8, W/8] latent noise of this chunk (f even: 6 for chunk 0, then 2).
            lq_tokens: [B, f*h*w, D] LQ-projection tokens, added before block 0.
            cond: from :meth:`conditioning`.
            caches: one :class:`KVCache` per block (updated in place).
            frame_offset: absolute latent index of the chunk's first frame (RoPE frame position).
            lcsa: sparse-attention settings; the top-k budget is derived from this chunk's size.
        """
        x, grid = self.patchify(noise)
        x = x + lq_tokens  # [B, L, D]
        f, h, w = grid
        topk = topk_budget((h // 8) * (w // 8), h * 16, w * 16, lcsa.sparse_ratio)
        freqs = rope_freqs(self._rope(x.device), grid, frame_offset)
        for block, cache, cross_kv in zip(self.blocks, caches, cond.cross_kv):
            x = block(x, cond.t_mod, cross_kv, grid, freqs, cache, self.backend, lcsa, topk)
        return self.unpatchify(self.head(x, cond.t), grid)

    def _rope(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if self._rope_tables is None or self._rope_tables[0].device != device:
            self._rope_tables = tuple(rope_table(d).to(device) for d in rope_split(self.config.head_dim))
        return self._rope_tables


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(parameters, tensors) of a module's state dict."""
    sd = module.state_dict()
    return sum(math.prod(t.shape) for t in sd.values()), len(sd)
