"""Regional ``torch.compile``: compile each DiT block, not the whole streaming loop.

One block graph is compiled once and reused by every layer (same shapes), so compile time stays small, and the
Python control flow of streaming (chunks, KV cache bookkeeping, tiles) never becomes part of a graph. Recompiles
happen per distinct chunk shape: chunk 0 (6 latent frames) and later chunks (2), per tile size.
"""

from __future__ import annotations

from flashvsr_q.model import FlashVSR


def compile_blocks(model: FlashVSR, *, mode: str | None = None, dynamic: bool = False) -> int:
    """Compile every DiT block in place (``nn.Module.compile``); returns how many were compiled.

    Args:
        mode: a ``torch.compile`` mode, e.g. ``"max-autotune-no-cudagraphs"`` on GPU (CUDA graphs do not suit the
            changing KV-cache tensors).
        dynamic: compile for dynamic shapes (fewer recompiles across tile sizes, slower kernels).
    """
    if model.dit.backend.name == "flex" and model.device.type == "cpu":
        raise ValueError("the flex backend cannot be compiled inside a block on CPU; use sparse or dense there")
    for block in model.dit.blocks:
        block.compile(mode=mode, dynamic=dynamic)
    return len(model.dit.blocks)


def is_compiled(model: FlashVSR) -> bool:
    return any(getattr(block, "_compiled_call_impl", None) is not None for block in model.dit.blocks)


__all__ = ["compile_blocks", "is_compiled"]
