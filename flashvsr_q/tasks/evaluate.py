"""The evaluate use case: configurations (bicubic, float, recipes, tilings, backends) compared on a dataset.

    from flashvsr_q.tasks.evaluate import EvaluateOptions, evaluate

    results = evaluate(EvaluateOptions(dataset="heldout", output="report/", recipe="none,int8-weight-only",
                                       metrics="psnr,ssim", frames=9))

Writes per-clip and mean tables, deltas against a reference configuration and plots (``report.md``, CSV, JSON,
PNG) into the report folder; ``update_doc`` also splices the report into a Markdown file between markers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flashvsr_q.eval.datasets import load_dataset, parse_crop
from flashvsr_q.eval.report import Report, is_number
from flashvsr_q.eval.runner import (
    BICUBIC,
    DEFAULT_METRICS,
    EvalResults,
    check_doc,
    describe_results,
    expand_all,
    parse_config,
    splice_markdown,
    sweep,
)
from flashvsr_q.eval.runner import (
    evaluate as run_evaluation,
)
from flashvsr_q.progress import ProgressBar

__all__ = ["EvaluateOptions", "describe_results", "evaluate", "means", "split_list"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


@dataclass(kw_only=True)
class EvaluateOptions:
    """What ``flashvsr-q eval`` takes (the CLI flags, same names and defaults). Axis options are comma-separated
    lists swept by ``sweep``; ``config`` holds explicit ``NAME:key=value,...`` configurations."""

    dataset: str
    output: str | Path
    dataset_kind: str = "auto"
    frames: int | None = None
    crop: str | None = None
    degradation: str = "bicubic"
    degradation_seed: int = 0
    config: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    recipe: str | None = None
    tile: str | None = None
    attention: str | None = None
    dtype: str | None = None
    sweep: str = "product"
    color_fix: str = "adain"
    pipeline: str = "tiny"
    calibration: str | None = None
    no_bicubic: bool = False
    metrics: str = "all"
    reference: str | None = None
    seed: int = 0
    device: str | None = None
    title: str = "Evaluation report"
    save_frames: bool = False
    update_doc: str | None = None
    overwrite: bool = False
    command: str | None = None  # the command line recorded in the report
    show_progress: bool = True  # a bar with ETA over configurations x clips (plain lines when piped)


def evaluate(options: EvaluateOptions, log: Callable[[str], None] = _stderr) -> EvalResults:
    """Run every configuration over the dataset and write the report folder (and ``update_doc``)."""
    o = options
    configs = [parse_config(text) for text in o.config]
    axes = {"checkpoints": split_list(o.checkpoint), "recipes": expand_all(split_list(o.recipe), "recipe"),
            "tiles": split_list(o.tile), "attentions": expand_all(split_list(o.attention), "attention"),
            "dtypes": split_list(o.dtype)}
    if any(axes.values()) or not configs:
        configs = sweep(axes["checkpoints"] or [None], axes["recipes"] or [None], axes["tiles"] or ["off"],
                        axes["attentions"] or ["sparse"], axes["dtypes"] or [None], mode=o.sweep, bicubic=False,
                        color_fix=o.color_fix, calibration=o.calibration, pipeline=o.pipeline) + configs
    if not o.no_bicubic and BICUBIC.name not in [c.name for c in configs]:
        configs.insert(0, BICUBIC)
    metrics = list(DEFAULT_METRICS) if o.metrics.strip() == "all" else split_list(o.metrics)
    if o.update_doc:
        check_doc(o.update_doc)  # before the run, not after it
    dataset = load_dataset(o.dataset, o.dataset_kind, frames=o.frames, degradation=o.degradation,
                           seed=o.degradation_seed, crop=parse_crop(o.crop))
    with ProgressBar("eval", None, enabled=o.show_progress, unit="runs") as bar:
        results = run_evaluation(dataset, configs, metrics, o.output, reference=o.reference, seed=o.seed,
                                 device=o.device, title=o.title, overwrite=o.overwrite, save_frames=o.save_frames,
                                 command=o.command, say=log, progress=lambda done, total, _: bar.update(done, total))
    if o.update_doc:
        splice_markdown(o.update_doc, results)
    return results


def means(results: EvalResults) -> dict[str, dict[str, float]]:
    """``{config: {metric: mean over clips}}`` of the numeric results (what ``flashvsr-q eval --json`` prints): the
    report's own means, without the notes it shows for skipped metrics."""
    report = Report(results.results, results.reference, results.skipped_metrics)
    return {config: {m: v for m, v in values.items() if is_number(v)} for config, values in report.means.items()}
