"""Test helpers (importable as `helpers`: pytest puts tests/ on sys.path): models, clips, reference paths."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

from flashvsr_q.model import FlashVSR, get_config
from flashvsr_q.model.configs import FlashVSRConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLASHVSR_Q_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance"

def requires_cuda(test):
    """Marks a test ``cuda`` (``pytest -m cuda`` selects it) and skips it where no CUDA GPU is present."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def random_model(name: str | FlashVSRConfig = "test", seed: int = 0, variant: str | None = None) -> FlashVSR:
    """A model of preset ``name`` (or of a config) with deterministic random weights (modulations and norms
    perturbed too)."""
    config = name if isinstance(name, FlashVSRConfig) else get_config(name)
    if variant is not None:
        config = config.replace(lq_variant=variant)
    torch.manual_seed(seed)
    model = FlashVSR(config)
    with torch.no_grad():
        for name_, p in model.named_parameters():
            if "modulation" in name_ or "norm" in name_ or "gamma" in name_:
                p.add_(0.1 * torch.randn_like(p))
        model.prompt.normal_(0, 0.5)
    return model.eval()


def random_lr(frames: int = 25, height: int = 128, width: int = 128, seed: int = 0) -> torch.Tensor:
    """[1, 3, frames, H, W] smooth-ish LR video in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, frames, height // 8, width // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(frames, height, width), mode="trilinear").clamp(-1, 1)


@contextlib.contextmanager
def one_torch_thread():
    """One intra-op torch thread inside the block: on two shared cores, OpenMP spin-waiting makes two threads
    several times slower than one under load (and a batch worker runs with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
