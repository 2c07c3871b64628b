"""The calibrate and sensitivity use cases: clips cut from the user's footage run through the float model.

    from flashvsr_q.tasks.calibrate import CalibrateOptions, SensitivityOptions, calibrate, sensitivity

    result = calibrate(CalibrateOptions(output="stats.safetensors", calibration_set="builtin"))
    result = sensitivity(SensitivityOptions(output="report/", scheme="nf4", footage=["builtin"]))

Both cut the same kind of clips (``--set`` file, flags, defaults; flags win) and load the float checkpoint the same
way; ``calibrate`` records activation statistics (and SmoothQuant factors) for static and smoothed recipes,
``sensitivity`` quantizes one group at a time and ranks the damage, optionally writing a mixed-precision recipe.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flashvsr_q.checkpoints import checkpoint_kind, default_checkpoint, load_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import write_text
from flashvsr_q.infer.checks import resolve_device, resolve_dtype
from flashvsr_q.model import FlashVSR
from flashvsr_q.progress import ProgressBar
from flashvsr_q.quant.calibration import (
    DIT_BLOCK_LINEARS,
    CalibrationConfig,
    FootageClips,
    load_calibration_set,
    parse_alpha_overrides,
    parse_wxh,
    smoothing_from_recipe,
)
from flashvsr_q.quant.calibration import calibrate as collect_statistics
from flashvsr_q.quant.recipes import load_recipe
from flashvsr_q.quant.schemes import Scheme, get_scheme
from flashvsr_q.quant.sensitivity import (
    SensitivityReport,
    analyze_sensitivity,
    generate_recipe,
    parse_size,
    write_report,
)
from flashvsr_q.quant.stats import CalibrationStats

Log = Callable[[str], None]
CLIP_DEFAULTS = {"calibrate": {"clips": 24, "frames": 41, "size": "256x256"},
                 "sensitivity": {"clips": 2, "frames": 33, "size": "256x256"}}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(kw_only=True)
class ClipOptions:
    """The footage and how clips are cut from it (None: the ``--set`` file's value, else the default)."""

    calibration_set: str | None = None
    checkpoint: str | None = None
    footage: list[str] | None = None
    clips: int | None = None
    frames: int | None = None
    size: str | None = None
    lr: bool | None = None
    seed: int | None = None
    hash: str | None = None
    device: str | None = None
    dtype: str | None = None
    grouping: str = "layer"
    rank_by: str = "sqnr"
    option: list[str] = field(default_factory=list)
    show_progress: bool = True  # a bar with ETA on a terminal, plain lines when piped


@dataclass(kw_only=True)
class CalibrateOptions(ClipOptions):
    """What ``flashvsr-q calibrate`` takes (the CLI flags, same names and defaults); ``output`` is the statistics
    file. ``sensitivity`` names a scheme to also rank on the first ``sensitivity_clips`` clips."""

    output: str | Path
    observer: str | None = None
    percentile: float | None = None
    smoothquant_alpha: float | None = None
    alpha: list[str] = field(default_factory=list)
    recipe: str | None = None
    sensitivity: str | None = None
    sensitivity_clips: int = 2
    report: str | None = None
    overwrite: bool = False


@dataclass(kw_only=True)
class SensitivityOptions(ClipOptions):
    """What ``flashvsr-q sensitivity`` takes; ``output`` is the report folder. With ``recipe_out`` and ``budget`` it
    also writes a recipe that keeps the most sensitive groups in ``fallback`` within the size budget."""

    output: str | Path
    scheme: str
    calibration: str | None = None
    smoothquant: bool = False
    budget: str | None = None
    fallback: str = "bf16"
    recipe_out: str | None = None
    recipe_name: str | None = None


def _settings(options: ClipOptions, command: str, from_set: tuple[str, ...]) -> dict:
    """Options, else the ``--set`` file's values (for the keys in ``from_set``), else the defaults."""
    file = load_calibration_set(options.calibration_set) if options.calibration_set else {}
    merged = {"seed": 0, "hash": "content", "lr": False, **CLIP_DEFAULTS[command]}
    merged.update({k: v for k, v in file.items() if k in from_set})
    merged.update({k: v for k, v in dataclasses.asdict(options).items() if v is not None and v != []})
    if not merged.get("footage"):
        raise FlashVSRError("no footage: give --footage PATH... or a --set file that lists some")
    return merged


def _clips(settings: dict) -> FootageClips:
    return FootageClips(settings["footage"], clips=settings["clips"], frames=settings["frames"],
                        size=parse_wxh(settings["size"]), lr_input=settings["lr"], seed=settings["seed"],
                        hash_mode=settings["hash"])


def _float_model(options: ClipOptions) -> FlashVSR:
    source = options.checkpoint or default_checkpoint()
    if checkpoint_kind(source) != "official":
        raise FlashVSRError(f"{source} is a compressed checkpoint; calibrate the float (official-layout) weights")
    device = resolve_device(options.device)
    return load_checkpoint(source, dtype=resolve_dtype(options.dtype, device), device=device)


def _scheme(name: str, options: list[str]) -> Scheme:
    parsed = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlashVSRError(f"--option takes KEY=VALUE, got {item!r}")
        parsed[key] = yaml.safe_load(value)
    try:
        return get_scheme(name, **parsed)
    except (ValueError, TypeError) as exc:
        raise FlashVSRError(str(exc)) from None


def _rank(options: ClipOptions, model: FlashVSR, clips, scheme: Scheme, out_dir: Path, seed: int,
          calibration: CalibrationStats | None, smoothing: bool, log: Log) -> tuple[SensitivityReport, dict]:
    with ProgressBar("sensitivity", None, enabled=options.show_progress, unit="groups") as bar:
        report = analyze_sensitivity(model, scheme, clips, grouping=options.grouping, rank_by=options.rank_by,
                                     calibration=calibration, smoothing=smoothing, seed=seed,
                                     progress=lambda group, i, total: bar.update(i + 1, total))
    return report, write_report(report, out_dir)


@dataclass
class CalibrateResult:
    """The statistics written (and the sensitivity report, if asked for)."""

    output: Path
    stats: CalibrationStats
    observer: str
    report: SensitivityReport | None = None
    report_files: dict[str, Path] | None = None

    def to_dict(self) -> dict:
        """What ``flashvsr-q calibrate --json`` prints."""
        return {"output": str(self.output), "layers": len(self.stats.layers), "observer": self.observer,
                "chunks": self.stats.meta["chunks"], "smoothed_layers": len(self.stats.meta["smoothed_layers"]),
                "calibration_set": self.stats.source_hash,
                "report": {k: str(v) for k, v in (self.report_files or {}).items()} or None}

    def describe(self) -> str:
        smoothed = len(self.stats.meta["smoothed_layers"])
        chunks = self.stats.meta["chunks"]
        return (f"wrote {self.output}: {len(self.stats.layers)} layers, {chunks['first']} first + {chunks['later']} "
                f"cache-warm chunks, observer {self.observer}"
                f"{f', SmoothQuant factors for {smoothed} layers' if smoothed else ''}; "
                f"calibration set {self.stats.source_hash[:16]}")


def calibrate(options: CalibrateOptions, log: Log = _stderr) -> CalibrateResult:
    """Activation statistics of every linear on the options' clips, written to ``options.output``.

    Raises:
        FlashVSRError: an existing output without ``overwrite``, no footage, a compressed checkpoint, bad options.
    """
    output = Path(options.output)
    if output.exists() and not options.overwrite:
        raise FlashVSRError(f"{output} already exists; choose another file or pass --overwrite")
    if output.is_dir():
        raise FlashVSRError(f"{output} is a folder; --output is the statistics file")
    settings = _settings(options, "calibrate", ("footage", "clips", "frames", "size", "lr", "seed", "hash",
                                                "observer", "percentile", "smoothquant_alpha", "alpha"))
    scheme = _scheme(options.sensitivity, options.option) if options.sensitivity else None
    clips = _clips(settings)
    model = _float_model(options)
    smooth_layers, alpha, overrides = DIT_BLOCK_LINEARS, None, {}
    if options.recipe:  # the recipe's alpha and per-layer overrides, unless options or the set file say otherwise
        recipe = load_recipe(options.recipe)
        smooth_layers, alpha = smoothing_from_recipe(recipe, model)
        overrides = recipe.alpha_overrides
    overrides = parse_alpha_overrides(options.alpha) if options.alpha else settings.get("alpha", overrides)
    alpha = settings.get("smoothquant_alpha", alpha)
    if overrides and alpha is None:
        raise FlashVSRError("--alpha overrides need SmoothQuant: give --smoothquant-alpha (or a smoothquant recipe)")
    observer = settings.get("observer", "minmax")
    config = CalibrationConfig(observer=observer, percentile=settings.get("percentile", 99.99), alpha=alpha,
                               alpha_overrides=overrides, smooth_layers=smooth_layers, seed=settings["seed"])
    with ProgressBar("calibrate", len(clips), enabled=options.show_progress, unit="clips") as bar:
        stats = collect_statistics(model, clips, config, progress=lambda name, i: bar.update(i + 1))
    if options.calibration_set:
        stats.meta["calibration_set_file"] = Path(options.calibration_set).name
    output.parent.mkdir(parents=True, exist_ok=True)
    stats.save(output)
    result = CalibrateResult(output, stats, observer)
    if scheme is not None:
        subset = [clip for _, clip in zip(range(max(1, options.sensitivity_clips)), clips)]
        folder = Path(options.report) if options.report else output.with_name(f"{output.stem}-sensitivity")
        result.report, result.report_files = _rank(options, model, subset, scheme, folder, settings["seed"], stats,
                                                   False, log)
    return result


@dataclass
class SensitivityResult:
    """The ranking, the files it was written to, and the generated recipe (path and mix summary) if any."""

    report: SensitivityReport
    files: dict[str, Path]
    recipe: Path | None = None
    mix: str | None = None

    def to_dict(self) -> dict:
        """What ``flashvsr-q sensitivity --json`` prints: the files, and the recipe written (if any)."""
        return {"files": {k: str(v) for k, v in self.files.items()},
                "recipe": None if self.recipe is None else str(self.recipe), "mix": self.mix}


def sensitivity(options: SensitivityOptions, log: Log = _stderr) -> SensitivityResult:
    """Quantize one group at a time under ``options.scheme`` and rank the damage; optionally write a recipe.

    Raises:
        FlashVSRError: ``recipe_out`` without ``budget`` (or the reverse), an existing ``recipe_out``, bad options.
    """
    if bool(options.recipe_out) != bool(options.budget):
        raise FlashVSRError("--recipe-out and --budget go together")
    budget = parse_size(options.budget) if options.budget else None
    if options.recipe_out and Path(options.recipe_out).exists():
        raise FlashVSRError(f"{options.recipe_out} already exists; choose another file")
    settings = _settings(options, "sensitivity", ("footage", "size", "lr", "seed", "hash"))
    scheme = _scheme(options.scheme, options.option)
    fallback = options.fallback if options.fallback == "bf16" else _scheme(options.fallback, [])
    calibration = CalibrationStats.load(options.calibration) if options.calibration else None
    clips = list(_clips(settings))
    model = _float_model(options)
    report, files = _rank(options, model, clips, scheme, Path(options.output), settings["seed"], calibration,
                          options.smoothquant, log)
    result = SensitivityResult(report, files)
    if options.recipe_out:
        text, mix = generate_recipe(report, model, fallback, budget, name=options.recipe_name,
                                    device=str(model.device))
        out = Path(options.recipe_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, text)
        result.recipe, result.mix = out, mix.summary()
    return result
