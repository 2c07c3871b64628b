"""Attention backend registry: every backend has one exact signature and fails loudly when it cannot run.

A backend computes ``out = attend(q, k, v, block_mask)`` with q [B, H, Lq, d], k/v [B, H, Lk, d] and a bool
block mask [B, H, Lq/128, Lk/128] from LCSA (or ``None`` for backends that do not use LCSA). Query blocks that
select no key block output zeros. Backends never modify their inputs (the KV cache is passed in).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flashvsr_q.errors import BackendUnavailable

log = logging.getLogger(__name__)

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class AttentionBackend:
    """A registered backend.

    Attributes:
        name: registry name (``--attention NAME``).
        attend: the attention function (signature in the module docstring).
        uses_lcsa: False only for ``full``, which attends to every key (ablations).
        exact: True when it matches ``dense`` to fp32 rounding; False for the quantized Sage/Sparge paths.
        description: one line for ``--help`` and reports.
        unavailable: ``(device) -> reason or None``; a reason means it cannot run on that device.
    """

    name: str
    attend: AttendFn
    uses_lcsa: bool
    exact: bool
    description: str
    unavailable: Callable[[torch.device], str | None]

    def __call__(self, q, k, v, block_mask):
        return self.attend(q, k, v, block_mask)


_REGISTRY: dict[str, AttentionBackend] = {}
# preference order for "auto": fast kernels first, the portable exact gather last. The kernels are candidates on
# CUDA only: on CPU "triton" can run under Triton's interpreter (for tests), which is far slower than "sparse".
AUTO_ORDER = ("block_sparse", "triton", "sparse")
AUTO_CUDA_ONLY = frozenset({"block_sparse", "triton"})


def _always(_: torch.device) -> str | None:
    return None


def register_backend(
    name: str,
    *,
    description: str,
    uses_lcsa: bool = True,
    exact: bool = True,
    unavailable: Callable[[torch.device], str | None] = _always,
) -> Callable[[AttendFn], AttendFn]:
    """Decorator: register ``attend`` under ``name``."""

    def register(attend: AttendFn) -> AttendFn:
        _REGISTRY[name] = AttentionBackend(name, attend, uses_lcsa, exact, description, unavailable)
        return attend

    return register


def backend_names() -> list[str]:
    """All registered names (available or not)."""
    return list(_REGISTRY)


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """name -> None if it can run on ``device``, else the reason it cannot."""
    device = torch.device(device)
    return {name: b.unavailable(device) for name, b in _REGISTRY.items()}


def get_backend(name: str, device: torch.device | str = "cpu") -> AttentionBackend:
    """The backend called ``name`` (or the best available for ``auto``), checked against ``device``.

    Raises:
        BackendUnavailable: unknown name, or the backend cannot run here (the message says why and what can).
    """
    device = torch.device(device)
    if name == "auto":
        for candidate in AUTO_ORDER:
            if candidate in AUTO_CUDA_ONLY and device.type != "cuda":
                continue
            if _REGISTRY[candidate].unavailable(device) is None:
                log.info("attention backend 'auto' chose %r on %s", candidate, device)
                return _REGISTRY[candidate]
        raise BackendUnavailable(f"no attention backend can run on {device}")  # 'sparse' always can
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown attention backend {name!r}; choose one of {['auto', *_REGISTRY]}")
    reason = _REGISTRY[name].unavailable(device)
    if reason is not None:
        ok = [n for n, r in available_backends(device).items() if r is None]
        raise BackendUnavailable(f"attention backend {name!r} cannot run on {device}: {reason}; available: {ok}")
    return _REGISTRY[name]

