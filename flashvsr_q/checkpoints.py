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

import torch

from flashvsr_q.errors import CheckpointError, FlashVSRError
from flashvsr_q.model import FlashVSR, infer_config, is_official_layout, load_official
from flashvsr_q.quant import (
    CalibrationStats,
    QuantPlan,
    Recipe,
    RecipeError,
    load_compressed,
    load_recipe,
    quantize_model,
    quantize_official,
    resolve_plan,
)
from flashvsr_q.shipped import small_model_dir

ENV_CHECKPOINT = "FLASHVSR_Q_CHECKPOINT"
MANIFEST = "manifest.json"

RecipeLike = str | os.PathLike | Recipe
CalibrationLike = str | os.PathLike | CalibrationStats


def default_checkpoint() -> Path:
    """``$FLASHVSR_Q_CHECKPOINT`` if set, else the small model shipped with flashvsr-q."""
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


def read_recipe_and_calibration(recipe: RecipeLike | None, calibration: CalibrationLike | None,
                                ) -> tuple[Recipe | None, CalibrationStats | None]:
    """Read a recipe (name, YAML path or ``Recipe``) and statistics (path or ``CalibrationStats``) up front, so
    that a bad name or file is refused before any weight is read; returns (recipe or None, statistics or None)."""
    if recipe is None:
        if calibration is not None:
            raise FlashVSRError("--calibration only applies with --recipe (the statistics are used while quantizing)")
        return None, None
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if calibration is None and recipe.needs_calibration:
        raise RecipeError(f"recipe {recipe.name} needs calibration statistics: run `flashvsr-q calibrate` and pass "
                          "the result with --calibration")
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = CalibrationStats.load(calibration)
    return recipe, calibration


def load_checkpoint(
    path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu", variant: str | None = None, recipe: RecipeLike | None = None,
    calibration: CalibrationLike | None = None, on_plan: Callable[[QuantPlan], None] | None = None,
) -> FlashVSR:
    """Load any checkpoint folder onto ``device``, optionally quantizing it on the fly; the model is in eval mode.

    Args:
        path: folder; None means :func:`default_checkpoint`.
        dtype: compute dtype of the unquantized parts (bf16 on GPU; fp32 is exact on CPU).
        variant: for official folders, which LQ projection the weights are for ("v1" or "v1.1"; None: v1.1, the
            files cannot tell). Folders that record their architecture (a compressed manifest, a config sidecar) use
            what they record, and a ``variant`` that contradicts it is an error.
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

    Example:
        >>> import torch, flashvsr_q as fq
        >>> model = fq.load_checkpoint(dtype=torch.float32)     # the shipped small model
        >>> model.config.name
        'small'
    """
    path = Path(path) if path is not None else default_checkpoint()
    kind = checkpoint_kind(path)
    recipe, calibration = read_recipe_and_calibration(recipe, calibration)
    if recipe is None:
        model = (load_compressed(path, dtype=dtype, device=device) if kind == "compressed"
                 else load_official(path, variant=variant or "v1.1", dtype=dtype, device=device))
    elif kind == "official":
        with torch.device("meta"):
            skeleton = FlashVSR(infer_config(path, variant or "v1.1"))
        plan = resolve_plan(recipe, skeleton, device)
        if on_plan is not None:
            on_plan(plan)
        model, _ = quantize_official(path, plan, dtype=dtype, device=device, calibration=calibration,
                                     variant=variant or "v1.1")
    else:
        model = load_compressed(path, dtype=dtype, device=device)
        plan = resolve_plan(recipe, model, device)
        if on_plan is not None:
            on_plan(plan)
        model = quantize_model(model, plan, calibration)
    if variant is not None and model.config.lq_variant != variant:
        raise CheckpointError(f"{path} records its LQ projection as {model.config.lq_variant}; --variant "
                              f"{variant} is only for official folders without a config (their files cannot tell)")
    return model.eval()
