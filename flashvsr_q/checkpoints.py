"""One function loads every checkpoint: the official layout, our compressed layout, or the shipped default.

    model = load_checkpoint()                         # $FLASHVSR_Q_CHECKPOINT, else the shipped small model
    model = load_checkpoint("FlashVSR-v1.1/")         # official files, unchanged
    model = load_checkpoint("int8/")                  # manifest.json + safetensors written by `flashvsr-q quantize`
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flashvsr_q.errors import CheckpointError
from flashvsr_q.model import FlashVSR, is_official_layout, load_official

ENV_CHECKPOINT = "FLASHVSR_Q_CHECKPOINT"
SHIPPED_SMALL = Path(__file__).resolve().parent.parent / "checkpoints" / "flashvsr-small"
MANIFEST = "manifest.json"


def default_checkpoint() -> Path:
    """``$FLASHVSR_Q_CHECKPOINT`` if set, else the small model shipped in ``checkpoints/flashvsr-small``."""
    env = os.environ.get(ENV_CHECKPOINT)
    return Path(env) if env else SHIPPED_SMALL


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"official"`` or ``"compressed"``; raises CheckpointError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    if (path / MANIFEST).is_file():
        return "compressed"
    if is_official_layout(path):
        return "official"
    raise CheckpointError(f"{path} is neither an official FlashVSR folder nor a flashvsr-q checkpoint "
                          f"(no {MANIFEST}, no diffusion_pytorch_model_streaming_dmd.safetensors)")


def load_checkpoint(
    path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu", variant: str = "v1.1", recipe: str | os.PathLike | None = None,
) -> FlashVSR:
    """Load any checkpoint folder onto ``device``, optionally quantizing it on the fly.

    Args:
        path: folder; None means :func:`default_checkpoint`.
        dtype: compute dtype of the unquantized parts (bf16 on GPU; fp32 is exact on CPU).
        variant: for official folders, which LQ projection the weights are for ("v1" or "v1.1").
        recipe: a shipped recipe name or a YAML path, applied after loading (``flashvsr-q upscale --recipe``);
            recipes that need calibration statistics must go through ``flashvsr-q quantize`` instead.
    """
    path = Path(path) if path is not None else default_checkpoint()
    if checkpoint_kind(path) == "compressed":
        from flashvsr_q.quant.checkpoint import load_compressed

        model = load_compressed(path, dtype=dtype, device=device)
    else:
        model = load_official(path, variant=variant, dtype=dtype, device=device)
    if recipe is not None:
        from flashvsr_q.quant import load_recipe, quantize_model, resolve_plan

        quantize_model(model, resolve_plan(load_recipe(recipe), model, device=torch.device(device)))
    return model
