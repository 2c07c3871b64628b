"""One function loads every checkpoint: the official layout, our compressed layout, or the shipped default.

    model = load_checkpoint()                         # $FLASHVSR_Q_CHECKPOINT, else the shipped small model
    model = load_checkpoint("FlashVSR-v1.1/")         # official files, unchanged
    model = load_checkpoint("int8/")                  # manifest.json + safetensors written by `flashvsr-q quantize`
    model = load_checkpoint("FlashVSR-v1/", variant="v1", recipe="int8-weight-only")   # quantized while loading
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flashvsr_q.errors import CheckpointError, FlashVSRError
from flashvsr_q.model import FlashVSR, infer_config, is_official_layout, load_official
from flashvsr_q.shipped import small_model_dir

if TYPE_CHECKING:
    from flashvsr_q.quant import CalibrationStats, QuantPlan, Recipe

ENV_CHECKPOINT = "FLASHVSR_Q_CHECKPOINT"
MANIFEST = "manifest.json"


def default_checkpoint() -> Path:
    """``$FLASHVSR_Q_CHECKPOINT`` if set, else the small model shipped in ``checkpoints/flashvsr-small``."""
    env = os.environ.get(ENV_CHECKPOINT)
    return Path(env) if env else small_model_dir()


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
    device: torch.device | str = "cpu", variant: str = "v1.1", recipe: str | os.PathLike | Recipe | None = None,
    calibration: str | os.PathLike | CalibrationStats | None = None,
    on_plan: Callable[[QuantPlan], None] | None = None,
) -> FlashVSR:
    """Load any checkpoint folder onto ``device``, optionally quantizing it on the fly.

    Args:
        path: folder; None means :func:`default_checkpoint`.
        dtype: compute dtype of the unquantized parts (bf16 on GPU; fp32 is exact on CPU).
        variant: for official folders, which LQ projection the weights are for ("v1" or "v1.1"); folders that
            record their architecture (a compressed manifest, a config sidecar) use what they record.
        recipe: a shipped recipe name, a YAML path or a ``Recipe`` (``flashvsr-q upscale --recipe``). An official
            folder is then read layer by layer and each planned layer quantized as it arrives, as
            ``flashvsr-q quantize`` does (never a float copy of the whole model); a compressed one is loaded, then
            its float layers quantized.
        calibration: ``CalibrationStats`` or the path of a statistics file (``flashvsr-q calibrate``), for recipes
            with static activation scales or SmoothQuant.
        on_plan: called with the resolved per-layer plan before any weight is quantized.
    Raises:
        CheckpointError: a missing, unreadable or mismatched folder. RecipeError / BackendUnavailable: a recipe that
        does not fit the model or the device, or needs statistics that were not given.
    """
    path = Path(path) if path is not None else default_checkpoint()
    kind = checkpoint_kind(path)
    if recipe is None:
        if calibration is not None:
            raise FlashVSRError("calibration statistics are only used together with a recipe")
        if kind == "compressed":
            from flashvsr_q.quant.checkpoint import load_compressed

            return load_compressed(path, dtype=dtype, device=device)
        return load_official(path, variant=variant, dtype=dtype, device=device)

    from flashvsr_q.quant import (
        CalibrationStats,
        Recipe,
        load_compressed,
        load_recipe,
        quantize_model,
        quantize_official,
        resolve_plan,
    )

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = CalibrationStats.load(calibration)
    if kind == "official":
        with torch.device("meta"):
            skeleton = FlashVSR(infer_config(path, variant))
        plan = resolve_plan(recipe, skeleton, device)
        if on_plan is not None:
            on_plan(plan)
        model, _ = quantize_official(path, plan, dtype=dtype, device=device, calibration=calibration,
                                     variant=variant)
        return model
    model = load_compressed(path, dtype=dtype, device=device)
    plan = resolve_plan(recipe, model, device)
    if on_plan is not None:
        on_plan(plan)
    return quantize_model(model, plan, calibration)
