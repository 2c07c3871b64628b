"""The evaluation runner: configurations (checkpoint x recipe x tiling x attention, plus bicubic) over a dataset.

    results = evaluate(load_dataset("heldout"), [EvalConfig("bicubic", kind="bicubic"), EvalConfig("fp32")],
                       metrics=["psnr", "ssim", "tdiff"], out_dir="report")

Each configuration loads its model once (``load_checkpoint``, then the recipe applied on the fly with
``resolve_plan`` + ``quantize_model``), upscales every clip in memory with ``infer.upscale_frames`` (uint8 frames,
exact geometry, seeded noise) and scores the frames as they come: per-frame metrics accumulate one value per frame,
temporal metrics keep the previous frame only. Nothing is encoded lossily; only DOVER, a whole-video metric, needs
a file, and gets a lossless one (``ClipWriter``) when its weights are present. A configuration that cannot run here
(a GPU-only recipe on CPU, a recipe that needs calibration statistics) is reported as skipped with the reason.

Configuration syntax (``parse_config``): ``NAME:key=value,key=value`` with keys ``checkpoint``, ``recipe``,
``tile``, ``attention``, ``dtype``, ``color_fix``, ``calibration``, ``kind`` (``model`` | ``bicubic``); ``bicubic``
alone is the bicubic baseline.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.datasets import Clip, Dataset

log = logging.getLogger(__name__)

CONFIG_KEYS = ("checkpoint", "recipe", "tile", "attention", "dtype", "color_fix", "calibration", "kind")
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "niqe", "musiq", "clipiqa", "dover", "ewarp", "tlp", "tdiff")


@dataclass(frozen=True)
class EvalConfig:
    """One row of the table.

    Attributes:
        name: the row's name in the report.
        kind: ``model`` (run FlashVSR) or ``bicubic`` (the LR upsampled with bicubic, no model).
        checkpoint: a checkpoint folder (None: the shipped small model).
        recipe: a shipped recipe name or a YAML path, applied on the fly (None: the float model).
        tile: ``off`` | ``auto`` | ``SIZExOVERLAP`` (LR pixels).
        attention: an attention backend name (``flashvsr_q.attention``).
        dtype: ``fp32`` | ``bf16`` | ``fp16`` (None: bf16 on CUDA, fp32 on CPU).
        color_fix: ``adain`` | ``wavelet`` | ``none``.
        calibration: calibration statistics for recipes that need them.
    """

    name: str
    kind: str = "model"
    checkpoint: str | None = None
    recipe: str | None = None
    tile: str = "off"
    attention: str = "sparse"
    dtype: str | None = None
    color_fix: str = "adain"
    calibration: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("model", "bicubic"):
            raise FlashVSRError(f"configuration {self.name!r}: kind must be 'model' or 'bicubic', got {self.kind!r}")
        if not self.name or ":" in self.name:
            raise FlashVSRError(f"configuration name {self.name!r} must be non-empty and hold no ':'")

    def describe(self) -> str:
        if self.kind == "bicubic":
            return "bicubic upsampling of the LR input"
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                         if f.name not in ("name", "kind") and getattr(self, f.name) is not None)


BICUBIC = EvalConfig("bicubic", kind="bicubic")


def parse_config(text: str) -> EvalConfig:
    """``NAME:key=value,...`` (or ``bicubic``) -> :class:`EvalConfig`; unknown keys are an error."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if name == "bicubic" and not rest.strip():
        return BICUBIC
    values: dict[str, str | None] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in CONFIG_KEYS:
            raise FlashVSRError(f"--config {text!r}: expected NAME:key=value,... with keys {', '.join(CONFIG_KEYS)}")
        values[key] = None if value.strip().lower() in ("", "none") and key in ("recipe", "checkpoint") \
            else value.strip()
    return EvalConfig(name, **values)


def cross_product(checkpoints: Sequence[str | None] = (None,), recipes: Sequence[str | None] = (None,),
                  tiles: Sequence[str] = ("off",), attentions: Sequence[str] = ("sparse",),
                  dtype: str | None = None, bicubic: bool = True, **common) -> list[EvalConfig]:
    """Every checkpoint x recipe x tile x attention (plus ``bicubic`` first); names show what varies."""
    configs = [BICUBIC] if bicubic else []
    for ckpt, recipe, tile, attn in itertools.product(checkpoints or (None,), recipes or (None,), tiles or ("off",),
                                                      attentions or ("sparse",)):
        parts = [Path(ckpt).name if ckpt else "small"]
        parts.append(recipe if recipe else (dtype or "float"))
        if len(tiles) > 1 or tile != "off":
            parts.append(f"tile={tile}")
        if len(attentions) > 1 or attn != "sparse":
            parts.append(f"attn={attn}")
        name = " ".join(parts)
        configs.append(EvalConfig(name, checkpoint=ckpt, recipe=recipe, tile=tile, attention=attn, dtype=dtype,
                                  **common))
    return configs


# ---------------------------------------------------------------------------------------------------------------
# scoring, one frame at a time
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """Per-frame and temporal meters for one clip; ``update`` takes one (sr, gt) uint8 frame pair."""

    frame: list  # LoadedMetric
    temporal: list  # temporal meters (keep the previous frame only)
    values: dict[str, list[float]] = field(default_factory=dict)

    def update(self, sr: np.ndarray, gt: np.ndarray | None) -> None:
        from flashvsr_q.eval.metrics import to_tensor

        if gt is not None and sr.shape != gt.shape:
            raise FlashVSRError(f"SR frame is {sr.shape[1]}x{sr.shape[0]}, GT is {gt.shape[1]}x{gt.shape[0]}")
        a, b = to_tensor(sr), None if gt is None else to_tensor(gt)
        for metric in self.frame:
            self.values.setdefault(metric.result_name, []).append(metric(a, b))
        for meter in self.temporal:
            meter.update(a[0], None if b is None else b[0])

    def finish(self) -> dict[str, list[float]]:
        for meter in self.temporal:
            self.values[meter.name] = meter.values()
        return self.values


def _build_meters(metrics: Sequence[str], has_gt: bool, device) -> tuple[list, list, bool, dict[str, str]]:
    """Build every metric once; returns (frame, temporal, dover?, skipped {metric: reason})."""
    from flashvsr_q.eval.metrics import METRICS, build_metric
    from flashvsr_q.eval.temporal import build_temporal
    from flashvsr_q.eval.weights import MetricUnavailable

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise FlashVSRError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    frame, temporal, skipped, dover = [], [], {}, False
    for name in metrics:
        spec = METRICS[name]
        if spec.needs_reference and not has_gt:
            skipped[name] = f"skipped: {spec.label} needs GT frames and this dataset has none (LR only)"
            continue
        try:
            if spec.kind == "frame":
                frame.append(build_metric(name, device))
            elif spec.kind == "temporal":
                build_temporal(name, device)  # checks the weights now; a fresh meter per clip below
                temporal.append(name)
            else:  # DOVER: check its weights before any upscaling
                from flashvsr_q.eval.dover import Dover

                Dover(device)
                dover = True
        except MetricUnavailable as exc:
            skipped[name] = f"skipped: {exc}"
    return frame, temporal, dover, skipped


# ---------------------------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------------------------


def load_config_model(config: EvalConfig, device: str | torch.device | None = None):
    """The model of a configuration: checkpoint, recipe applied on the fly, attention backend set.

    Raises:
        FlashVSRError (incl. BackendUnavailable, RecipeError): the configuration cannot run here.
    """
    from flashvsr_q.checkpoints import load_checkpoint
    from flashvsr_q.infer.runner import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dtype = resolve_dtype(config.dtype, dev)
    model = load_checkpoint(config.checkpoint, dtype=dtype, device=dev).eval()
    if config.recipe is not None:
        from flashvsr_q.quant import load_recipe, quantize_model, resolve_plan

        plan = resolve_plan(load_recipe(config.recipe), model, dev)
        stats = None
        if config.calibration is not None:
            from flashvsr_q.quant.stats import CalibrationStats

            stats = CalibrationStats.load(config.calibration)
        quantize_model(model, plan, calibration=stats)
    model.set_attention(config.attention, dev)
    return model


def bicubic_frames(lr: Iterator[np.ndarray], scale: int = 4) -> Iterator[np.ndarray]:
    """The bicubic baseline: each LR frame upsampled x``scale`` (PyTorch bicubic, a=-0.75), rounded to uint8."""
    for frame in lr:
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
        y = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        yield y[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _sr_frames(config: EvalConfig, model, clip: Clip, scale: int, seed: int) -> Iterator[np.ndarray]:
    if config.kind == "bicubic":
        return bicubic_frames(clip.lr(), scale)
    from flashvsr_q.infer import upscale_frames

    return upscale_frames(model, clip.lr(), scale=scale, tile=config.tile, color_fix=config.color_fix, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvalResults:
    """What :func:`evaluate` returns: the tables' input, per-frame values, skips, timings and the files written."""

    results: dict[str, dict[str, dict[str, float | str]]]
    per_frame: dict[str, dict[str, dict[str, list[float]]]]
    skipped_metrics: dict[str, str]
    skipped_configs: dict[str, str]
    seconds: dict[str, float]
    configs: list[EvalConfig]
    reference: str | None
    files: dict[str, Path] = field(default_factory=dict)


def evaluate(dataset: Dataset, configs: Sequence[EvalConfig], metrics: Sequence[str] = ("psnr", "ssim", "tdiff"),
             out_dir: str | os.PathLike | None = None, *, reference: str | None = None, scale: int = 4,
             seed: int = 0, device: str | torch.device | None = None, title: str = "Evaluation report",
             say: Callable[[str], None] = log.info) -> EvalResults:
    """Run every configuration over every clip, score the frames as they stream, and write the report.

    Args:
        dataset: from :func:`flashvsr_q.eval.datasets.load_dataset`.
        configs: rows of the table (names unique); :data:`BICUBIC` for the baseline.
        metrics: registered metric names (``flashvsr_q.eval.METRICS``); full-reference ones are skipped with a note
            on LR-only datasets, and any whose weights are missing are skipped with the ``MetricUnavailable`` note.
        out_dir: report folder (``write_report`` files + ``configs`` section); None: nothing written.
        reference: the configuration deltas are taken against (default: the first non-bicubic one that ran).
        seed: the model's noise seed (the dataset has its own degradation seed).

    Returns:
        :class:`EvalResults`. Configurations that cannot run here are in ``skipped_configs`` with the reason.

    Raises:
        FlashVSRError: bad input (empty or repeated configurations, unknown metric or reference, every
            configuration failed); nothing is written then.
    """
    from flashvsr_q.eval.temporal import build_temporal

    if not configs:
        raise FlashVSRError("no configurations to evaluate")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise FlashVSRError(f"configuration names repeat: {', '.join(names)}")
    if reference is not None and reference not in names:
        raise FlashVSRError(f"reference {reference!r} is not among the configurations: {', '.join(names)}")
    if not metrics:
        raise FlashVSRError("no metrics asked for")
    frame, temporal, dover, skipped_metrics = _build_meters(metrics, dataset.has_gt, device)
    if not frame and not temporal and not dover:
        raise FlashVSRError("none of the asked metrics can be computed here: "
                            + "; ".join(skipped_metrics.values()))
    results: dict = {}
    per_frame: dict = {}
    skipped_configs: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for config in configs:
        model = None
        if config.kind == "model":
            try:
                model = load_config_model(config, device)
            except FlashVSRError as exc:
                skipped_configs[config.name] = str(exc)
                say(f"{config.name}: skipped ({exc})")
                continue
        start = time.perf_counter()
        for clip in dataset.clips:
            scorer = Scorer(frame, [build_temporal(n, device) for n in temporal])
            writer, tmp = None, None
            if dover:
                from flashvsr_q.eval.clipio import ClipWriter

                tmp = Path(tempfile.mkdtemp(prefix="flashvsr-q-eval-"))
                writer = ClipWriter(tmp / "sr.mkv")  # lossless, for DOVER only
            try:
                gt_iter = clip.hr() if clip.hr is not None else None
                for sr in _sr_frames(config, model, clip, scale, seed):
                    gt = None
                    if gt_iter is not None:
                        gt = next(gt_iter, None)
                        if gt is None:
                            raise FlashVSRError(f"{clip.name}: GT has fewer frames than the output")
                    scorer.update(sr, gt)
                    if writer is not None:
                        writer.write(sr)
                values = scorer.finish()
                if writer is not None:
                    from flashvsr_q.eval.dover import dover_score

                    score = dover_score(writer.close(), device, seed)
                    writer = None
                    values.update({k: [v] for k, v in score.as_results().items()})
            finally:
                if writer is not None:
                    writer.abort()
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
            means = {k: float(np.mean(v)) if len(v) else float("nan") for k, v in values.items()}
            results.setdefault(config.name, {})[clip.name] = means
            per_frame.setdefault(config.name, {})[clip.name] = values
            say(f"{config.name} on {clip.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()))
        seconds[config.name] = time.perf_counter() - start
        del model
    if not results:
        raise FlashVSRError("no configuration could run: " + "; ".join(f"{k}: {v}" for k, v in skipped_configs.items()))
    if reference is not None and reference not in results:
        raise FlashVSRError(f"reference {reference!r} did not run: {skipped_configs.get(reference)}")
    if reference is None and len(results) > 1:
        ran = [c.name for c in configs if c.name in results]
        reference = next((n for n in ran if n != BICUBIC.name), ran[0])
    out = EvalResults(results, per_frame, skipped_metrics, skipped_configs, seconds, list(configs),
                      reference if len(results) > 1 else None)
    if out_dir is not None:
        out.files = write_eval_report(out, out_dir, title)
    return out


def configs_markdown(res: EvalResults) -> str:
    """The configurations section: what each row ran, its time, and the rows that were skipped (with why)."""
    lines = ["## Configurations", "", "| Configuration | what it runs | seconds (all clips) |", "|---|---|---:|"]
    for c in res.configs:
        if c.name in res.results:
            lines.append(f"| {c.name} | {c.describe()} | {res.seconds.get(c.name, float('nan')):.1f} |")
    if res.skipped_configs:
        lines += ["", "Skipped configurations (cannot run here):", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in res.skipped_configs.items()]
    return "\n".join(lines) + "\n"


def write_eval_report(res: EvalResults, out_dir: str | os.PathLike, title: str = "Evaluation report") -> dict:
    """``write_report`` plus the configurations section (appended to ``report.md``, and ``configs.json``)."""
    import json

    from flashvsr_q.eval.report import write_report

    files = write_report(res.results, out_dir, reference=res.reference, per_frame=res.per_frame,
                         skipped=res.skipped_metrics, title=title)
    report = files["report"]
    report.write_text(report.read_text() + "\n" + configs_markdown(res))
    files["configs"] = Path(out_dir) / "configs.json"
    files["configs"].write_text(json.dumps({
        "configs": [{**{f.name: getattr(c, f.name) for f in fields(c)}, "ran": c.name in res.results,
                     "seconds": res.seconds.get(c.name)} for c in res.configs],
        "skipped_configs": res.skipped_configs, "skipped_metrics": res.skipped_metrics,
        "reference": res.reference}, indent=2))
    return files


__all__ = ["BICUBIC", "EvalConfig", "EvalResults", "bicubic_frames", "configs_markdown", "cross_product", "evaluate",
           "load_config_model", "parse_config", "write_eval_report"]
