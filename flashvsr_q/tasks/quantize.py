"""The quantize use case: an official-layout checkpoint + a recipe -> a compressed checkpoint folder.

    from flashvsr_q.tasks.quantize import QuantizeOptions, quantize

    result = quantize(QuantizeOptions("int8/", recipe="int8-weight-only"))      # the shipped small model
    print(result.describe())

The source is read layer by layer and each planned layer quantized as it arrives (never a float copy of the whole
model), then written as safetensors + a manifest under a temporary name and renamed when complete. With
``export="fp8-official"`` it writes the official file layout with fp8 e4m3 DiT linears instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from flashvsr_q.checkpoints import CalibrationLike, RecipeLike, checkpoint_kind, default_checkpoint
from flashvsr_q.errors import CheckpointError, FlashVSRError
from flashvsr_q.files import is_owned
from flashvsr_q.infer.checks import DTYPES, resolve_device
from flashvsr_q.model import OFFICIAL_FILES, FlashVSR, infer_config, load_official
from flashvsr_q.quant import (
    CalibrationStats,
    QuantPlan,
    Recipe,
    RecipeError,
    load_recipe,
    quantize_official,
    resolve_plan,
    save_compressed,
)
from flashvsr_q.quant.checkpoint import read_manifest
from flashvsr_q.quant.export import export_fp8_official
from flashvsr_q.tasks.outputs import RunLock, check_output


@dataclass
class QuantizeOptions:
    """What ``flashvsr-q quantize`` takes (the CLI flags, same names and defaults).

    Attributes:
        output: the folder to write (must not exist unless ``overwrite``).
        recipe: a shipped recipe name, a YAML path or a ``Recipe``; or
        export: ``"fp8-official"``: the official layout with fp8 e4m3 DiT linears instead (one of the two).
        checkpoint: the official-layout folder to quantize (None: ``$FLASHVSR_Q_CHECKPOINT`` or the shipped model).
        calibration: statistics from ``flashvsr-q calibrate`` (static and SmoothQuant recipes need them).
        device: the device that quantizes and will run the model; the recipe's schemes are checked against it.
        dtype: compute dtype, ``bf16`` | ``fp32`` | ``fp16``. variant: LQ projection of official weights.
        dry_run: resolve and report the per-layer plan, write nothing.
    """

    output: str | Path
    recipe: RecipeLike | None = None
    export: str | None = None
    checkpoint: str | Path | None = None
    calibration: CalibrationLike | None = None
    device: str = "cpu"
    dtype: str = "bf16"
    variant: str = "v1.1"
    dry_run: bool = False
    overwrite: bool = False


@dataclass
class QuantizeResult:
    """What was written: the folder, the plan (None for an export), and the folder's size in bytes."""

    output: Path
    plan: QuantPlan | None
    bytes: int

    def describe(self) -> str:
        if self.plan is None:
            return f"wrote {self.output} (official layout, fp8 e4m3 DiT linears with scale_weight)"
        return f"wrote {self.output}: {len(self.plan.quantized)} layers quantized, {self.bytes / 1e6:.1f} MB"


def quantize(options: QuantizeOptions, on_plan: Callable[[QuantPlan], None] | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> QuantizeResult | None:
    """Quantize (or export) a checkpoint; returns what was written, or None for a dry run.

    ``on_plan`` receives the resolved per-layer plan before any weight is read (``flashvsr-q quantize`` prints it);
    ``progress`` is called with (layer name, layers done, total) as layers are quantized.

    Raises:
        FlashVSRError: an existing output without ``overwrite``, a compressed source, a bad recipe, statistics or
        device (all before any weight is read).
    """
    o = options
    if (o.recipe is None) == (o.export is None):
        raise FlashVSRError("give exactly one of --recipe and --export")
    if o.dtype not in DTYPES:
        raise FlashVSRError(f"--dtype must be one of {', '.join(DTYPES)}, got {o.dtype!r}")
    dtype = DTYPES[o.dtype]
    resolve_device(o.device)  # `--device cuda` without CUDA is said now, not at the scheme check
    source = Path(o.checkpoint) if o.checkpoint else default_checkpoint()
    output = Path(o.output)
    reads = [source] + [p for p in (o.calibration, o.recipe) if isinstance(p, (str, Path)) and Path(p).exists()]
    check_output(output, inputs=reads, overwrite=o.overwrite, owned=written_checkpoint, kind="folder")
    if checkpoint_kind(source) != "official":
        raise FlashVSRError(f"{source} is already a compressed checkpoint; quantize the original (official-layout) "
                            f"weights")
    if o.export is not None:
        if o.export != "fp8-official":
            raise FlashVSRError(f"unknown export {o.export!r}; the quantize command exports fp8-official")
        if o.dry_run:
            return None
        with torch.device("meta"):
            config = infer_config(source, o.variant)
        with RunLock(output):
            check_output(output, inputs=reads, overwrite=o.overwrite, owned=written_checkpoint, kind="folder")
            export_fp8_official(load_official(source, config, variant=o.variant, dtype=dtype), output,
                                overwrite=o.overwrite)
        return QuantizeResult(output, None, _folder_bytes(output))

    recipe = o.recipe if isinstance(o.recipe, Recipe) else load_recipe(o.recipe)
    if recipe.needs_calibration and o.calibration is None:  # before the plan is printed, and in a dry run too
        raise RecipeError(f"recipe {recipe.name} needs calibration statistics: run `flashvsr-q calibrate --recipe "
                          f"{recipe.name} --footage ... -o stats.safetensors` and pass --calibration stats.safetensors")
    calibration = o.calibration
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = CalibrationStats.load(calibration)
    with torch.device("meta"):
        skeleton = FlashVSR(infer_config(source, o.variant))
    plan = resolve_plan(recipe, skeleton, o.device)
    if on_plan is not None:
        on_plan(plan)
    if o.dry_run:
        return None
    with RunLock(output):  # one writer per output folder; re-checked now that no other run can change it
        check_output(output, inputs=reads, overwrite=o.overwrite, owned=written_checkpoint, kind="folder")
        model, plan = quantize_official(source, plan, dtype=dtype, device=o.device, calibration=calibration,
                                        variant=o.variant, progress=progress)
        save_compressed(model, output, recipe, plan, calibration.fingerprint() if calibration else None,
                        overwrite=o.overwrite)
    return QuantizeResult(output, plan, _folder_bytes(output))


def written_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint this tool wrote (so ``--overwrite`` may replace it): a compressed one (its
    manifest), an fp8-official export (the marker in its DiT file's metadata) or one carrying the owned marker."""
    if is_owned(folder):
        return True
    try:
        read_manifest(folder)  # a flashvsr-q manifest, not any manifest.json
        return True
    except CheckpointError:
        pass
    dit = folder / OFFICIAL_FILES["dit"]
    try:
        with safe_open(str(dit), "pt") as f:
            return "flashvsr_q" in (f.metadata() or {})
    except (OSError, SafetensorError):
        return False


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
