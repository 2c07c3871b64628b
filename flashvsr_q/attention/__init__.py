"""Attention for the FlashVSR DiT: LCSA block selection and a registry of backends selected by name.

    backend = get_backend("auto", device)     # or "sparse", "dense", "triton", ... (backend_names())
    out = backend(q, k, v, block_mask)        # q [B, H, Lq, d]; k, v [B, H, Lk, d]; block_mask [B, H, Lq/128, Lk/128]
"""

from flashvsr_q.attention.lcsa import (
    BLOCK,
    LCSASettings,
    expand_block_mask,
    from_windows,
    local_mask,
    select_blocks,
    to_windows,
    topk_budget,
)
from flashvsr_q.attention.registry import (
    AttentionBackend,
    available_backends,
    backend_names,
    get_backend,
    register_backend,
)

# The built-in backends register themselves on import (each loads its optional kernel only when first called).
from flashvsr_q.attention import block_sparse, dense, flex, sage, sparse, triton_sparse  # noqa: E402,F401  isort: skip

__all__ = [
    "BLOCK",
    "AttentionBackend",
    "LCSASettings",
    "available_backends",
    "backend_names",
    "expand_block_mask",
    "from_windows",
    "get_backend",
    "local_mask",
    "register_backend",
    "select_blocks",
    "to_windows",
    "topk_budget",
]
