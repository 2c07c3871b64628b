"""The library calls behind the GUI's buttons, one function per button, free of gradio.

Each function takes the values of the widgets (already converted by ``app.jobs``), calls the same library API
that the matching CLI command calls, and returns what the page shows. None of them holds pipeline logic; they
pick which library function to call and with what. Long ones take ``report`` (a progress callback) and
``cancel`` (a ``threading.Event``) and pass them on to the library.

- Estimate memory: ``tasks.upscale.preflight`` (what ``flashvsr-q upscale`` prints before it runs);
- Upscale: ``tasks.upscale.upscale`` with its progress callback and cancel event (``flashvsr-q upscale``);
- Check recipe: ``quant.parse_recipe`` + ``quant.resolve_plan`` (``flashvsr-q quantize --dry-run``);
- Calibrate: ``quant.calibration.calibrate`` + ``quant.sensitivity`` (``flashvsr-q calibrate --sensitivity``);
- Write a recipe: ``quant.sensitivity.generate_recipe`` (``flashvsr-q sensitivity --budget``);
- Export: ``tasks.quantize.quantize`` with the editor's recipe (``flashvsr-q quantize``);
- Evaluate: ``eval.datasets.video_dataset`` + ``eval.runner.evaluate`` (``flashvsr-q eval``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flashvsr_q.checkpoints import checkpoint_kind, default_checkpoint, load_checkpoint, resolve_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.datasets import video_dataset
from flashvsr_q.eval.metrics import METRICS
from flashvsr_q.eval.report import Report, column_title, fmt
from flashvsr_q.eval.runner import EvalConfig, evaluate
from flashvsr_q.eval.weights import MetricUnavailable, require
from flashvsr_q.infer import resolve_device, resolve_dtype
from flashvsr_q.infer.pipeline import check_cancel
from flashvsr_q.quant import (
    SCHEMES,
    parse_recipe,
    resolve_plan,
)
from flashvsr_q.quant.calibration import (
    DIT_BLOCK_LINEARS,
    CalibrationConfig,
    FootageClips,
    calibrate,
    smoothing_from_recipe,
)
from flashvsr_q.quant.recipes import recipe_path
from flashvsr_q.quant.sensitivity import analyze_sensitivity, generate_recipe, load_report, write_report
from flashvsr_q.tasks import quantize as quantize_task
from flashvsr_q.tasks import upscale as upscale_task
from flashvsr_q.tasks.inspect import format_inspection, inspect_checkpoint

log = logging.getLogger(__name__)


def cancellable(callback: Callable | None, cancel: threading.Event | None) -> Callable:
    """A library progress callback that also stops the run (``infer.Cancelled``) once ``cancel`` is set: for the
    library calls that take a progress callback but no cancel event."""

    def wrapped(*args, **kwargs):
        check_cancel(cancel)
        if callback is not None:
            callback(*args, **kwargs)

    return wrapped


# ---------------------------------------------------------------------------------------------------------------
# models: loaded once per (checkpoint, recipe, dtype, device, variant), kept until another one is asked for
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """What the model widgets select. ``checkpoint`` None: the default; ``recipe`` None: as stored."""

    checkpoint: str | None = None
    recipe: str | None = None
    dtype: str | None = None  # bf16 | fp16 | fp32; None: bf16 on CUDA, fp32 on CPU
    device: str | None = None  # cpu | cuda; None: cuda when available
    variant: str = "v1.1"  # LQ projection of an official folder
    pipeline: str = "tiny"  # "full": with the Wan2.1 VAE decoder (Wan2.1_VAE.pth in the checkpoint folder)


class ModelCache:
    """Holds one loaded model (bounded memory: a new choice drops the previous model first)."""

    def __init__(self) -> None:
        self._key: ModelChoice | None = None
        self._model = None
        self._lock = threading.Lock()

    def get(self, choice: ModelChoice, say: Callable[[str], None] = log.info):
        with self._lock:
            if self._key == choice and self._model is not None:
                return self._model
            self._key, self._model = None, None  # free the old one before loading the next
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._model = load_model(choice, say)
            self._key = choice
            return self._model

    def clear(self) -> None:
        with self._lock:
            self._key, self._model = None, None


MODELS = ModelCache()


def load_model(choice: ModelChoice, say: Callable[[str], None] = log.info):
    """``load_checkpoint`` with the recipe applied on the fly, as ``flashvsr-q upscale --recipe`` loads."""
    device = resolve_device(choice.device)
    dtype = resolve_dtype(choice.dtype, device)
    source = resolve_checkpoint(choice.checkpoint, full=choice.pipeline == "full")
    say(f"loading {source} ({str(dtype).removeprefix('torch.')} on {device}, {choice.pipeline} pipeline)")
    # the variant widget only means something for official folders without a config (their files cannot tell)
    variant = choice.variant if checkpoint_kind(source) == "official" else None
    return load_checkpoint(source, dtype=dtype, device=device, variant=variant, recipe=choice.recipe,
                           on_plan=lambda plan: say(plan.format().splitlines()[0]), pipeline=choice.pipeline)


# ---------------------------------------------------------------------------------------------------------------
# Upscale
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpscaleOptions:
    """The Upscale tab's settings, named as ``tasks.upscale.UpscaleOptions`` names them."""

    attention: str = "auto"
    tile: str = "auto"
    vram: int | None = None
    scale: int = 4
    color_fix: str = "adain"
    seed: int = 0
    crf: float = 18
    codec: str = "libx264"
    audio: bool = True


def preflight(input_path: str | os.PathLike, choice: ModelChoice, options: UpscaleOptions,
              say: Callable[[str], None] = log.info) -> str:
    """The plan ``upscale`` would run with and its estimated peak device memory, without running it
    (``tasks.upscale.preflight``; ``flashvsr-q upscale --dry-run``)."""
    model = MODELS.get(choice, say)
    task = upscale_task.UpscaleOptions(input_path, None, scale=options.scale, tile=options.tile, vram=options.vram,
                                       attention=options.attention, color_fix=options.color_fix)
    reports = upscale_task.preflight(task, model, log=say)
    return "\n\n".join(
        f"{r.source.width}x{r.source.height} -> {r.geometry.out_width}x{r.geometry.out_height}, "
        f"{r.source.num_frames} frame(s); model {r.model} {r.dtype} on {r.device}, attention {r.backend}\n"
        f"{r.memory.describe()}" for r in reports)


def run_upscale(input_path: str | os.PathLike, output_path: str | os.PathLike, choice: ModelChoice,
                options: UpscaleOptions, report=None, cancel: threading.Event | None = None,
                say: Callable[[str], None] = log.info):
    """``tasks.upscale.upscale`` on one uploaded file; returns its Summary."""
    model = MODELS.get(choice, say)
    task = upscale_task.UpscaleOptions(input_path, output_path, scale=options.scale, tile=options.tile,
                                       vram=options.vram, attention=options.attention, color_fix=options.color_fix,
                                       seed=options.seed, codec=options.codec, crf=options.crf, audio=options.audio,
                                       overwrite=True, show_progress=False)
    return upscale_task.upscale(task, model, progress=report, cancel=cancel, log=say)


# ---------------------------------------------------------------------------------------------------------------
# Quantize
# ---------------------------------------------------------------------------------------------------------------


DEFAULT_RECIPE = "int8-weight-only"  # the safe default: no calibration, near-lossless, about half the DiT memory


def read_recipe_text(name: str) -> str:
    """The YAML of a shipped recipe (or of a recipe file), for the editor."""

    return Path(recipe_path(name)).read_text()


def check_recipe(yaml_text: str, choice: ModelChoice, say: Callable[[str], None] = log.info) -> str:
    """``parse_recipe`` + ``resolve_plan`` against the chosen checkpoint: the per-layer plan, nothing changed."""

    recipe = parse_recipe(yaml_text, "editor")
    model = MODELS.get(ModelChoice(choice.checkpoint, None, choice.dtype, choice.device, choice.variant), say)
    return resolve_plan(recipe, model, model.device).format()


@dataclass(frozen=True)
class CalibrationOptions:
    """The Calibration settings of the Quantize tab (``flashvsr-q calibrate`` options)."""

    clips: int = 2
    frames: int = 33
    size: int = 128
    observer: str = "minmax"
    alpha: float | None = None
    scheme: str | None = "int8_weight_only"  # sensitivity of this scheme; None: statistics only
    grouping: str = "block"
    lr_input: bool = False  # the footage is already low-resolution (used as is) instead of HR (downscaled x4)


def scheme_choices(device: str | None = None) -> list[str]:
    """Registered quantization schemes that can run on ``device`` (for the sensitivity analysis)."""

    dev = torch.device(device or "cpu")
    return [name for name, cls in SCHEMES.items() if cls().unavailable(dev) is None]


def _float_model(choice: ModelChoice, say: Callable[[str], None]):
    """The float model calibration and sensitivity need (``flashvsr-q calibrate`` refuses compressed folders)."""

    source = choice.checkpoint or default_checkpoint()
    if checkpoint_kind(source) != "official":
        raise FlashVSRError(f"{source} is a compressed checkpoint; calibrate the float (official-layout) weights")
    return MODELS.get(ModelChoice(choice.checkpoint, None, choice.dtype, choice.device, choice.variant), say)


def run_calibration(files: list[str], out_dir: Path, choice: ModelChoice, options: CalibrationOptions,
                    recipe_text: str | None = None, report=None, cancel: threading.Event | None = None,
                    say: Callable[[str], None] = log.info):
    """What ``flashvsr-q calibrate --footage FILES... --recipe R --sensitivity SCHEME`` does: ``calibrate`` on clips
    cut from the footage (``FootageClips``), SmoothQuant factors for the layers the recipe smooths
    (``smoothing_from_recipe``, with the recipe's per-layer overrides; the alpha box overrides the recipe's
    default alpha), statistics saved as ``stats.safetensors``;
    then, with a scheme, ``analyze_sensitivity`` on the first two clips and ``write_report`` into ``out_dir``.

    Returns (stats path, sensitivity plot path or None, sensitivity Markdown or a one-line summary).
    """

    clips = FootageClips(files, clips=options.clips, frames=options.frames, size=(options.size, options.size),
                         lr_input=options.lr_input)
    model = _float_model(choice, say)
    smooth_layers, alpha, overrides = DIT_BLOCK_LINEARS, None, {}
    if recipe_text:

        recipe = parse_recipe(recipe_text, "editor")
        if recipe.smoothquant:
            smooth_layers, alpha = smoothing_from_recipe(recipe, model)
            overrides = recipe.alpha_overrides
    alpha = options.alpha if options.alpha is not None else alpha
    config = CalibrationConfig(observer=options.observer, alpha=alpha, alpha_overrides=overrides,
                               smooth_layers=smooth_layers)
    progress = cancellable(lambda name, i: report and report(i + 1, options.clips, f"calibration: {name}", "clips"),
                           cancel)
    stats = calibrate(model, clips, config, progress=progress)
    stats_path = stats.save(Path(out_dir) / "stats.safetensors")
    smoothed = len(stats.meta["smoothed_layers"])
    say(f"wrote {stats_path}: {len(stats.layers)} layers, observer {options.observer}"
        f"{f', SmoothQuant factors for {smoothed} layers' if smoothed else ''}")
    if options.scheme is None:
        return stats_path, None, f"statistics of {len(stats.layers)} layers (no sensitivity analysis asked for)"


    subset = [clip for _, clip in zip(range(min(2, options.clips)), clips)]
    progress = cancellable(lambda group, i, total: report and report(i, total, f"sensitivity: {group}", "groups"),
                           cancel)
    result = analyze_sensitivity(model, options.scheme, subset, grouping=options.grouping, calibration=stats,
                                 progress=progress)
    paths = write_report(result, out_dir)
    say(f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return stats_path, paths["plot"], result.to_markdown(top=20)


def suggest_recipe(report_dir: str | os.PathLike, choice: ModelChoice, budget: str, fallback: str = "bf16",
                   name: str | None = None, say: Callable[[str], None] = log.info) -> str:
    """What ``flashvsr-q sensitivity --budget B --recipe-out R`` writes: a recipe keeping the most sensitive groups
    of the last sensitivity report in ``fallback`` while the checkpoint stays within ``budget`` (YAML text)."""

    model = _float_model(choice, say)
    text, mix = generate_recipe(load_report(report_dir), model, fallback, budget, name=name,
                                device=str(model.device))
    say(mix.summary())
    return text


def checkpoint_folder_name(name: str) -> str:
    """A folder name for an export: the typed name, refused if it is empty or a path."""
    name = (name or "").strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise FlashVSRError(f"the checkpoint name must be a plain folder name, got {name!r}")
    return name


def export_checkpoint(yaml_text: str, choice: ModelChoice, target: Path, stats: str | None, report=None,
                      cancel: threading.Event | None = None, say: Callable[[str], None] = log.info) -> str:
    """What ``flashvsr-q quantize --recipe R --checkpoint C --calibration S -o T`` does, with the editor's recipe:
    the plan on a meta skeleton, ``quantize_official`` layer by layer, ``save_compressed``; returns the
    ``flashvsr-q inspect`` text of the new checkpoint."""

    device = resolve_device(choice.device)
    options = quantize_task.QuantizeOptions(target, recipe=parse_recipe(yaml_text, "editor"),
                                            checkpoint=choice.checkpoint, calibration=stats, device=str(device),
                                            dtype=choice.dtype or "bf16", variant=choice.variant)
    progress = cancellable(lambda fqn, done, total: report and report(done, total, f"quantizing {fqn}", "layers"),
                           cancel)
    result = quantize_task.quantize(options, on_plan=lambda plan: say(plan.format()), progress=progress)
    say(result.describe())
    return format_inspection(inspect_checkpoint(target, hashes=False))


# ---------------------------------------------------------------------------------------------------------------
# Evaluate
# ---------------------------------------------------------------------------------------------------------------


def metric_choices() -> list[tuple[str, str]]:
    """(label, name) of the registered per-frame and temporal metrics (``eval.metrics.METRICS``) with their
    direction, and a note when their weight files are missing (``eval.weights.require``)."""

    choices = []
    for name, metric in METRICS.items():
        if metric.kind not in ("frame", "temporal"):
            continue
        label = f"{metric.label} {metric.arrow}"
        try:
            require(name, metric.weights)
        except MetricUnavailable:
            label += " (weights missing)"
        choices.append((label, name))
    return choices


def default_metrics() -> list[str]:
    """The weight-free full-reference metrics."""
    return ["psnr", "ssim", "tdiff"]


@dataclass(frozen=True)
class EvaluateOptions:
    """The Evaluate tab's settings."""

    metrics: list[str]
    degradation: str = "bicubic"  # eval.degrade preset that makes the LR input from the HR clip
    dtype: str | None = None
    device: str | None = None
    seed: int = 0


@dataclass
class EvaluationResult:
    """What the tab shows: the mean table (header row first), the report's plots and all its files."""

    table: list[list[str]]
    plots: list[str]
    files: list[str]


def config_name(checkpoint: str | None, recipe: str | None) -> str:
    """A configuration's name in the report: the checkpoint folder's name (``default``), plus ``+recipe``."""
    name = Path(checkpoint).name if checkpoint else "default"
    return f"{name}+{recipe}" if recipe else name


def run_evaluation(files: list[str], entries: list[tuple[str | None, str | None]], out: Path,
                   options: EvaluateOptions, report=None, cancel: threading.Event | None = None,
                   say: Callable[[str], None] = log.info) -> EvaluationResult:
    """What ``flashvsr-q eval --dataset FILE... --config NAME:checkpoint=C,recipe=R ...`` does: the uploaded HR
    clips become a dataset (``eval.datasets.video_dataset``: LR made in memory by the degradation preset, seeded),
    ``eval.runner.evaluate`` runs every (checkpoint, recipe) configuration (models from the tab's cache) and writes
    the report into ``out/report`` (deltas against the first configuration).
    """

    unknown = [m for m in options.metrics if m not in METRICS]
    if not options.metrics or unknown:
        raise FlashVSRError(f"choose metrics among {', '.join(METRICS)}"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    dataset = video_dataset(files, degradation=options.degradation, seed=options.seed, name="uploaded clips")
    configs: list[EvalConfig] = []
    for checkpoint, recipe in entries:
        name = config_name(checkpoint, recipe)
        name = name if name not in [c.name for c in configs] else f"{name} ({len(configs) + 1})"
        configs.append(EvalConfig(name, checkpoint=checkpoint, recipe=recipe, attention="auto", tile="auto",
                                  dtype=options.dtype))

    def load(config: EvalConfig, device):
        return MODELS.get(ModelChoice(config.checkpoint, config.recipe, options.dtype, options.device), say)

    def progress(done: int, total: int, text: str) -> None:
        if report:
            report(done, total, f"evaluating {text}", "runs")

    res = evaluate(dataset, configs, options.metrics, Path(out) / "report", device=options.device,
                   title="flashvsr-q app evaluation", overwrite=True, load_model=load, progress=progress,
                   cancel=cancel, say=say)
    table = Report(res.results, res.reference, res.skipped_metrics)
    rows = [["configuration", *(column_title(m) for m in table.metrics)]]
    rows += [[config, *(fmt(m, table.means[config][m]) for m in table.metrics)] for config in table.configs]
    plots = [str(p) for p in res.files.values() if p.suffix == ".png"]
    say(f"report written to {Path(out) / 'report'}")
    return EvaluationResult(rows, plots, [str(p) for p in res.files.values()])
