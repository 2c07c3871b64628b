"""``triton``: a block-sparse flash-attention forward kernel in Triton that visits only the selected key blocks.

The host side turns the LCSA block mask [B, H, nQ, nK] into, for every (batch, head, query block) row, the
ascending list of its selected key blocks and their count (``kv_indices`` [B*H*nQ, nK] and ``kv_counts``
[B*H*nQ], int32; entries past the count are never read). One program computes ``BLOCK_M`` query rows of one
query block: it loads its Q tile once, walks the ``count`` selected key blocks in ``BLOCK_N``-key sub-tiles with an
online softmax (running max and sum, fp32 accumulator, exp2 with the log2(e) folded into the scale) and writes
``acc / sum``. Work is proportional to the selection, and a query block that selected nothing writes zeros (the
kernel contract of spec §5.4). fp16/bf16 inputs run tensor-core dots with fp32 accumulation; fp32 inputs use IEEE
fp32 dots (no TF32), so the backend is exact to fp32 rounding like ``sparse``.

On CUDA (SM80+) Triton compiles the kernel for the GPU. With ``TRITON_INTERPRET=1`` in the environment when Python
starts (Triton decorates its own library functions for one mode when it is imported), Triton's interpreter runs the
same kernel on CPU tensors, slowly (numpy per tile): that is how the tests check it without a GPU. ``auto`` never
picks it on CPU.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

from flashvsr_q.attention.lcsa import BLOCK
from flashvsr_q.attention.registry import register_backend

try:  # optional: Triton ships with CUDA builds of torch on Linux, not everywhere
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

log = logging.getLogger(__name__)

# Read once, like Triton itself, which decorates its library functions for one mode when it is imported: setting the
# variable later in the process does not turn the interpreter on.
INTERPRETED = triton is not None and bool(triton.knobs.runtime.interpret)

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch settings. ``block_m`` and ``block_n`` must divide the 128-token LCSA block.

    Attributes:
        block_m: query rows per program (a query block is split into ``128 / block_m`` programs).
        block_n: keys per inner step (a selected key block is visited in ``128 / block_n`` steps).
        num_warps, num_stages: Triton launch options (ignored by the interpreter).
    """

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            size = getattr(self, name)
            if size < 16 or BLOCK % size or size & (size - 1):
                raise ValueError(f"{name}={size} must be a power of two in [16, {BLOCK}]")


# tried once when a configuration does not fit the GPU's shared memory (SM86/89 have ~100 KiB per block)
FALLBACK = KernelConfig(block_m=64, block_n=32, num_warps=4, num_stages=1)


def default_config(head_dim: int, dtype: torch.dtype) -> KernelConfig:
    """The launch configuration used when none is given; a first guess, to be tuned on a GPU (docs/benchmarks.md).

    Half precision: 128x64 tiles, 8 warps for the official head dim 128 (4 below). fp32: 64x32 tiles, since its IEEE
    dots run on CUDA cores and its tiles take twice the bytes.
    """
    if dtype == torch.float32:
        return KernelConfig(block_m=64, block_n=32, num_warps=4, num_stages=1)
    return KernelConfig(block_m=128, block_n=64, num_warps=8 if head_dim >= 128 else 4, num_stages=2)


def _block_sparse_fwd(
    q_ptr, k_ptr, v_ptr, out_ptr, kv_indices_ptr, kv_counts_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    num_heads, n_q_blocks, n_k_blocks, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, LCSA_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr,
):
    """One program: rows [pid_m * BLOCK_M, +BLOCK_M) of head ``pid_bh``; see the module docstring.

    Grid (nQ * LCSA_BLOCK / BLOCK_M, B * H). ``qk_scale`` = log2(e) / sqrt(d). ``UPCAST_DOTS`` feeds the dots fp32
    copies of the operands: only for bf16 under the interpreter, whose ``tl.dot`` multiplies the uint16 storage of
    bf16 instead of the values (triton-lang/triton#11584, unsupported as of Triton 3.9); the bf16 rounding of P is
    kept. Undecorated so that this module imports without triton; ``_kernel`` wraps it with ``triton.jit``.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    row = pid_bh * n_q_blocks + pid_m // (LCSA_BLOCK // BLOCK_M)  # (batch, head, query block) row of the lists
    count = tl.load(kv_counts_ptr + row)
    indices = kv_indices_ptr + row * n_k_blocks

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # head dims that are not a power of two are padded with zeros
    q_ptrs = q_ptr + batch * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if UPCAST_DOTS:
        q = q.to(tl.float32)
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the scaled scores (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    steps_per_block = LCSA_BLOCK // BLOCK_N
    for step in range(0, count * steps_per_block):
        key_block = tl.load(indices + step // steps_per_block)
        offs_k = key_block * LCSA_BLOCK + (step % steps_per_block) * BLOCK_N + offs_n
        k = tl.load(k_base + offs_k[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=d_ok[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
        if UPCAST_DOTS:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # 0 on the first step (m_i = -inf); keys inside a block are never masked
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_k[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=d_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        p = p.to(v.dtype)
        if UPCAST_DOTS:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=INPUT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # count 0: acc = 0, so the block writes zeros
    o_ptrs = out_ptr + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=d_ok[None, :])


@functools.cache
def _kernel():
    """``triton.jit`` of the kernel (compiled, or interpreted under TRITON_INTERPRET=1), made once."""
    return triton.jit(_block_sparse_fwd)


def block_mask_to_lists(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, H, nQ, nK] bool -> (selected key-block ids [B*H*nQ, nK] int32, ascending first; counts [B*H*nQ] int32)."""
    rows = block_mask.reshape(-1, block_mask.shape[-1])
    indices = torch.argsort((~rows).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return indices.contiguous(), rows.sum(-1, dtype=torch.int32)


def triton_block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, config: KernelConfig | None = None
) -> torch.Tensor:
    """Block-sparse attention with the Triton kernel; layouts as in the registry, any strides.

    Args:
        q: [B, H, Lq, d] with Lq = nQ * 128; k, v: [B, H, Lk, d] with Lk = nK * 128; all of one dtype
            (fp16, bf16 or fp32) and device.
        block_mask: bool [B, H, nQ, nK].
        config: tile sizes and launch options (default: ``default_config``).

    Returns:
        [B, H, Lq, d] in q's dtype; rows of query blocks with no selected key block are zero.
    """
    if triton is None:
        raise RuntimeError("the triton backend needs the triton package")
    if block_mask is None:
        raise ValueError("the triton backend needs the LCSA block mask")
    b, h, q_len, d = q.shape
    n_q, n_k = block_mask.shape[-2:]
    if k.shape != v.shape or k.shape[:2] != (b, h) or k.shape[-1] != d or block_mask.shape[:2] != (b, h):
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, block mask "
                         f"{tuple(block_mask.shape)} do not fit [B, H, L, d] / [B, H, nQ, nK]")
    if q_len != n_q * BLOCK or k.shape[-2] != n_k * BLOCK:
        raise ValueError(f"sequence lengths {q_len}/{k.shape[-2]} do not match the block mask "
                         f"{tuple(block_mask.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the triton backend takes q, k, v of one dtype among fp16/bf16/fp32, got "
                         f"{q.dtype}/{k.dtype}/{v.dtype}")
    config = config or default_config(d, q.dtype)
    indices, counts = block_mask_to_lists(block_mask.to(device=q.device, dtype=torch.bool))
    out = torch.empty((b, h, q_len, d), dtype=q.dtype, device=q.device)  # every row is written
    if out.numel() == 0:
        return out

    def launch(cfg: KernelConfig) -> None:
        grid = (n_q * (BLOCK // cfg.block_m), b * h)
        _kernel()[grid](
            q, k, v, out, indices, counts, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            h, n_q, n_k, LOG2E / math.sqrt(d),
            HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), LCSA_BLOCK=BLOCK, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            UPCAST_DOTS=q.dtype == torch.bfloat16 and INTERPRETED,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    try:
        launch(config)
    except triton.runtime.errors.OutOfResources as error:
        if config == FALLBACK:
            raise
        log.warning("triton attention: %s does not fit this GPU (%s); using %s", config, error, FALLBACK)
        launch(FALLBACK)
    return out


def _unavailable(device: torch.device) -> str | None:
    if triton is None:
        return "the triton package is not installed"
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device) < (8, 0):
            return "the Triton block-sparse kernel needs a CUDA GPU of SM80 or newer (bf16 tensor cores)"
        return None
    if device.type == "cpu" and INTERPRETED:
        return None  # Triton's interpreter: exact but slow, for tests without a GPU
    return (f"the Triton kernel needs a CUDA GPU (on {device.type} only with TRITON_INTERPRET=1 set before Python "
            "starts, for tests)")


@register_backend("triton", description="block-sparse flash attention in Triton over the selected blocks; exact, "
                  "CUDA SM80+", unavailable=_unavailable)
def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor | None
) -> torch.Tensor:
    return triton_block_sparse_attention(q, k, v, block_mask)
