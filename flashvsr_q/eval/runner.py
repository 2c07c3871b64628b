"""The evaluation runner: configurations (checkpoint x recipe x tiling x attention, plus bicubic) over a dataset.

    dataset = load_dataset("heldout", frames=21, crop=(384, 128))
    res = evaluate(dataset, [BICUBIC, EvalConfig("float"), EvalConfig("int8", recipe="int8-weight-only")],
                   metrics=["psnr", "ssim", "tdiff"], out_dir="report")
    res.results["int8"]["carphone"]["psnr"]          # clip mean over frames

Each configuration loads its model once (:func:`~flashvsr_q.eval.configs.load_config_model`: ``load_checkpoint``,
then the recipe applied on the fly), upscales every clip in memory with ``infer.upscale_frames`` (uint8 frames,
exact geometry, noise seeded by ``seed``) and scores the frames as they come: per-frame metrics keep one value per
frame, temporal meters keep the previous frame only. Nothing is encoded lossily; only DOVER, a whole-video metric,
needs a file, and gets a lossless one when its weights are present. Every metric is built once, before any
upscaling; one whose weights are missing is skipped with the ``MetricUnavailable`` note, never left blank.

Mistakes (an unknown recipe or backend, a missing checkpoint, a repeated name) are errors before anything runs. A
configuration that cannot run *here* (a GPU-only scheme or backend on CPU, a recipe that needs calibration
statistics) is reported as skipped, with the reason. The report folder is written under a temporary name and renamed
when complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.configs import (
    BICUBIC,
    EvalConfig,
    check_config,
    checkpoint_fingerprint,
    cross_product,
    expand_all,
    load_config_model,
    parse_config,
    sweep,
)
from flashvsr_q.eval.datasets import Clip, Dataset
from flashvsr_q.eval.dover import Dover
from flashvsr_q.eval.metrics import METRICS, build_metric, to_tensor
from flashvsr_q.eval.summary import (
    DOC_BEGIN,
    DOC_END,
    check_doc,
    configs_markdown,
    describe_results,
    run_markdown,
    splice_markdown,
    write_eval_report,
)
from flashvsr_q.eval.temporal import build_temporal
from flashvsr_q.eval.weights import MetricUnavailable
from flashvsr_q.files import staging_dir, swap_in
from flashvsr_q.infer import upscale_frames
from flashvsr_q.infer.pipeline import check_cancel
from flashvsr_q.video.clips import ClipWriter

log = logging.getLogger(__name__)

# the thesis' Table 1 columns (+ temporal); the CLI's default
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "niqe", "musiq", "clipiqa", "dover", "ewarp", "tlp", "tdiff")
ModelLoader = Callable[[EvalConfig, "str | torch.device | None"], torch.nn.Module]
Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------------------------
# metrics, built once per run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Meters:
    """Every metric of a run, built once: per-frame models, temporal meters (reset per clip), DOVER, and the
    metrics that were skipped ``{name: "skipped: reason"}``."""

    frame: list = field(default_factory=list)  # LoadedMetric
    temporal: list = field(default_factory=list)  # FrameDifferenceError | TLP | WarpingError
    dover: object | None = None  # eval.dover.Dover
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when nothing can be computed."""
        return not self.frame and not self.temporal and self.dover is None


def build_meters(metrics: Sequence[str], has_gt: bool, device: str | torch.device | None = None,
                 seed: int = 0) -> Meters:
    """Build the asked metrics; full-reference ones on a dataset without GT, and any whose weights or package are
    missing, go to ``skipped`` with the reason.

    Raises:
        FlashVSRError: an unknown metric name.
    """

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise FlashVSRError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    meters = Meters()
    for name in dict.fromkeys(metrics):
        spec = METRICS[name]
        if spec.needs_reference and not has_gt:
            meters.skipped[name] = f"skipped: {spec.label} needs GT frames and this dataset has none (LR only)"
            continue
        try:
            if spec.kind == "frame":
                meters.frame.append(build_metric(name, device))
            elif spec.kind == "temporal":
                meters.temporal.append(build_temporal(name, device))
            else:

                meters.dover = Dover(device, seed)
        except MetricUnavailable as exc:
            meters.skipped[name] = f"skipped: {exc}"
    return meters


class Scorer:
    """Scores one clip, one (sr, gt) uint8 frame pair at a time; :meth:`finish` returns the values per metric."""

    def __init__(self, meters: Meters) -> None:
        self.meters = meters
        self.values: dict[str, list[float]] = {}
        for meter in meters.temporal:
            meter.reset()

    def update(self, sr: np.ndarray, gt: np.ndarray | None) -> None:
        """Score one output frame against its GT frame (None without GT)."""
        if gt is not None and sr.shape != gt.shape:
            raise FlashVSRError(f"the output frame is {sr.shape[1]}x{sr.shape[0]} but GT is "
                                f"{gt.shape[1]}x{gt.shape[0]}: GT must be exactly scale x LR")
        a, b = to_tensor(sr), None if gt is None else to_tensor(gt)
        for metric in self.meters.frame:
            self.values.setdefault(metric.result_name, []).append(metric(a, b))
        for meter in self.meters.temporal:
            meter.update(a[0], None if b is None else b[0])

    def finish(self) -> dict[str, list[float]]:
        """``{metric: [values]}``: one per frame, one per consecutive pair for temporal metrics."""
        for meter in self.meters.temporal:
            self.values[meter.name] = meter.values()
        return self.values


# ---------------------------------------------------------------------------------------------------------------
# one clip
# ---------------------------------------------------------------------------------------------------------------


def bicubic_frames(lr: Iterable[np.ndarray], scale: int = 4) -> Iterator[np.ndarray]:
    """The bicubic baseline: each LR frame upsampled x``scale`` (PyTorch bicubic, a=-0.75), rounded to uint8."""
    for frame in lr:
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
        y = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        yield y[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _timed(frames: Iterable[np.ndarray], clock: list[float]) -> Iterator[np.ndarray]:
    # time spent producing frames (LR decoding, degradation and upscaling), not scoring them
    iterator = iter(frames)
    while True:
        start = time.perf_counter()
        frame = next(iterator, None)
        clock[0] += time.perf_counter() - start
        if frame is None:
            return
        yield frame


def _size(frame: np.ndarray | None) -> str:
    return "?" if frame is None else f"{frame.shape[1]}x{frame.shape[0]}"


def score_clip(config: EvalConfig, model: torch.nn.Module | None, clip: Clip, meters: Meters, *, scale: int = 4,
               seed: int = 0, clock: list[float] | None = None, frames_dir: Path | None = None,
               cancel: threading.Event | None = None) -> tuple[dict[str, list[float]], dict[str, str | int]]:
    """Upscale one clip with one configuration and score it as the frames come.

    Returns:
        (``{metric: [values]}``, ``{"frames", "lr", "sr", "tiles"}``: what ran).

    Raises:
        FlashVSRError: output and GT differ in size or frame count; ``infer.Cancelled`` when ``cancel`` is set.
    """

    check_cancel(cancel)
    clock = clock if clock is not None else [0.0]
    first_lr: list[np.ndarray] = []
    plans: list = []

    def lr_frames() -> Iterator[np.ndarray]:
        for frame in clip.lr():
            if not first_lr:
                first_lr.append(frame)
            yield frame

    if config.kind == "bicubic":
        produced = bicubic_frames(lr_frames(), scale)
    else:

        produced = upscale_frames(model, lr_frames(), scale=scale, tile=config.tile, color_fix=config.color_fix,
                                  seed=seed, cancel=cancel, on_plan=plans.append)
    scorer = Scorer(meters)
    gt_frames = clip.hr() if clip.hr is not None else None
    writer, tmp = None, None
    if meters.dover is not None:

        tmp = Path(tempfile.mkdtemp(prefix="flashvsr-q-eval-"))
        writer = ClipWriter(tmp / "sr.mkv", lossless=True)  # lossless (libx264rgb, CRF 0), for DOVER only
    count, last = 0, None
    try:
        for sr in _timed(produced, clock):
            gt = None
            if gt_frames is not None:
                gt = next(gt_frames, None)
                if gt is None:
                    raise FlashVSRError(f"{clip.name}: GT has fewer frames ({count}) than the output")
            scorer.update(sr, gt)
            if writer is not None:
                writer.write(sr)
            if frames_dir is not None:
                _save_png(frames_dir / f"{count:08d}.png", sr)
            count, last = count + 1, sr
        if gt_frames is not None and next(gt_frames, None) is not None:
            raise FlashVSRError(f"{clip.name}: GT has more frames than the output ({count})")
        values = scorer.finish()
        if writer is not None:
            score = meters.dover(writer.close())
            writer = None
            values.update({k: [v] for k, v in score.as_results().items()})
    finally:
        if writer is not None:
            writer.abort()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    plan = plans[-1].plan if plans else None
    tiles = "-" if plan is None else f"{len(plan.rows)}x{len(plan.cols)}"
    return values, {"frames": count, "lr": _size(first_lr[0] if first_lr else None), "sr": _size(last),
                    "tiles": tiles}


def _save_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path)


# ---------------------------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EvalResults:
    """What :func:`evaluate` returns.

    Attributes:
        results: ``{config: {clip: {metric: clip mean}}}`` (the report's input).
        per_frame: ``{config: {clip: {metric: [values]}}}``.
        skipped_metrics: ``{metric: "skipped: reason"}``.
        skipped_configs: ``{config: reason}`` for configurations that cannot run here.
        seconds: ``{config: wall seconds}`` (upscaling + scoring, all clips).
        configs: every configuration asked for, in order.
        reference: the configuration deltas are taken against (None with a single result).
        runs: ``{config: {"dtype", "device", "attention", "upscale_seconds", "tiles": {clip: "RxC"}}}``.
        clips: ``{clip: {"frames", "lr", "sr"}}``.
        info: how the run was made (dataset, seed, versions, checkpoints, command).
        files: report files by kind (``report``, ``json``, ``deltas_png``, ...), once written.
    """

    results: dict[str, dict[str, dict[str, float | str]]]
    per_frame: dict[str, dict[str, dict[str, list[float]]]]
    skipped_metrics: dict[str, str]
    skipped_configs: dict[str, str]
    seconds: dict[str, float]
    configs: list[EvalConfig]
    reference: str | None
    runs: dict[str, dict] = field(default_factory=dict)
    clips: dict[str, dict] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def _check_inputs(configs: Sequence[EvalConfig], reference: str | None, metrics: Sequence[str]) -> None:
    if not configs:
        raise FlashVSRError("no configurations to evaluate")
    names = [c.name for c in configs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FlashVSRError(f"configuration names repeat: {', '.join(repeated)}")
    if reference is not None and reference not in names:
        raise FlashVSRError(f"reference {reference!r} is not among the configurations: {', '.join(names)}")
    if not metrics:
        raise FlashVSRError("no metrics asked for")
    for config in configs:
        check_config(config)


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_file():
        raise FlashVSRError(f"{out_dir} is a file; the report is a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FlashVSRError(f"{out_dir} already exists and is not empty; choose another folder or pass --overwrite")


def _folder_name(name: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", name).strip("_") or "config"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in ("flashvsr-q", "torch", "pyiqa"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def evaluate(dataset: Dataset, configs: Sequence[EvalConfig], metrics: Sequence[str] = ("psnr", "ssim", "tdiff"),
             out_dir: str | os.PathLike | None = None, *, reference: str | None = None, scale: int = 4,
             seed: int = 0, device: str | torch.device | None = None, title: str = "Evaluation report",
             overwrite: bool = False, save_frames: bool = False, command: str | None = None,
             load_model: ModelLoader | None = None, progress: Progress | None = None,
             cancel: threading.Event | None = None, say: Callable[[str], None] = log.info) -> EvalResults:
    """Run every configuration over every clip, score the frames as they stream, and write the report.

    Args:
        dataset: from :func:`flashvsr_q.eval.datasets.load_dataset` (or ``video_dataset``).
        configs: the configurations (names unique); :data:`BICUBIC` for the baseline.
        metrics: registered metric names (``flashvsr_q.eval.METRICS``; :data:`DEFAULT_METRICS` is the paper's set).
            Full-reference ones are skipped with a note on LR-only datasets, and any whose weights are missing are
            skipped with the ``MetricUnavailable`` note.
        out_dir: report folder (see :func:`write_eval_report`), written under a temporary name and renamed when
            complete; None: nothing written.
        reference: the configuration deltas are taken against (default: the first non-bicubic one that ran).
        seed: the model's noise seed (the dataset has its own degradation seed).
        device: where models and metrics run (default: CUDA when available).
        overwrite: replace an existing, non-empty ``out_dir``.
        save_frames: also write every output frame as PNG under ``out_dir/frames/<config>/<clip>/``.
        command: the command line that made the report, recorded in it.
        load_model: ``(config, device) -> model`` instead of :func:`load_config_model` (e.g. a cache); its
            FlashVSRErrors mark the configuration skipped. The runner sets the attention backend either way.
        progress: called with (runs done, runs in all, "config on clip") after each clip.
        cancel: an Event; checked between clips and tiles, raises ``infer.Cancelled``.

    Returns:
        :class:`EvalResults`. Configurations that cannot run here are in ``skipped_configs`` with the reason.

    Raises:
        FlashVSRError: bad input (no or repeated configurations, a mistake in one, unknown metric or reference,
            an existing output folder, no computable metric, no configuration that can run); nothing is written.
    """
    configs = list(configs)
    _check_inputs(configs, reference, metrics)
    if save_frames and out_dir is None:
        raise FlashVSRError("save_frames needs an output folder")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_output(out, overwrite)
    meters = build_meters(metrics, dataset.has_gt, device, seed)
    if meters.empty:
        raise FlashVSRError("none of the asked metrics can be computed here: " + "; ".join(meters.skipped.values()))
    staging = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(out, prefix=f".{out.name}.partial-")
    try:
        res = _run(dataset, configs, meters, reference, scale, seed, device, staging if save_frames else None,
                   load_model or load_config_model, progress, cancel, say)
        res.info.update({"metrics asked": ", ".join(metrics), "seed": f"{seed} (model noise)", "scale": str(scale),
                         "versions": _versions()})
        if command:
            res.info["command"] = command
        if out is not None and staging is not None:
            files = write_eval_report(res, staging, title)
            swap_in(staging, out)
            res.files = {kind: out / path.relative_to(staging) for kind, path in files.items()}
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return res


def _run(dataset: Dataset, configs: list[EvalConfig], meters: Meters, reference: str | None, scale: int, seed: int,
         device: str | torch.device | None, frames_root: Path | None, load_model: ModelLoader,
         progress: Progress | None, cancel: threading.Event | None, say: Callable[[str], None]) -> EvalResults:
    results: dict = {}
    per_frame: dict = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    runs: dict[str, dict] = {}
    clips: dict[str, dict] = {}
    checkpoints: dict[str, str] = {}
    total, done = len(configs) * len(dataset.clips), 0
    for config in configs:
        model = None
        run: dict = {"tiles": {}}
        if config.kind == "model":
            try:
                model = load_model(config, device)
                backend = model.set_attention(config.attention, model.device)
            except FlashVSRError as exc:
                skipped[config.name] = str(exc).splitlines()[0]
                say(f"{config.name}: skipped ({skipped[config.name]})")
                done += len(dataset.clips)
                continue
            run.update(dtype=str(model.dtype).removeprefix("torch."), device=str(model.device),
                       attention=backend.name)
            key = str(config.checkpoint or "default")
            if key not in checkpoints:
                checkpoints[key] = checkpoint_fingerprint(config.checkpoint)
        clock = [0.0]
        start = time.perf_counter()
        for clip in dataset.clips:
            frames_dir = None if frames_root is None else \
                frames_root / "frames" / _folder_name(config.name) / _folder_name(clip.name)
            values, what = score_clip(config, model, clip, meters, scale=scale, seed=seed, clock=clock,
                                      frames_dir=frames_dir, cancel=cancel)
            means = {k: float(np.mean(v)) if len(v) else float("nan") for k, v in values.items()}
            results.setdefault(config.name, {})[clip.name] = means
            per_frame.setdefault(config.name, {})[clip.name] = values
            run["tiles"][clip.name] = what["tiles"]
            clips.setdefault(clip.name, {"frames": what["frames"], "lr": what["lr"], "sr": what["sr"]})
            done += 1
            if progress is not None:
                progress(done, total, f"{config.name} on {clip.name}")
            say(f"{config.name} on {clip.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()))
        seconds[config.name] = time.perf_counter() - start
        run["upscale_seconds"] = clock[0]
        runs[config.name] = run
        del model
    if not results:
        raise FlashVSRError("no configuration could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if reference is not None and reference not in results:
        raise FlashVSRError(f"reference {reference!r} did not run: {skipped.get(reference)}")
    ran = [c.name for c in configs if c.name in results]
    if reference is None and len(ran) > 1:
        reference = next((n for n in ran if n != BICUBIC.name), ran[0])
    info = {"dataset": f"{dataset.name} ({dataset.kind}, {len(dataset.clips)} clips)"}
    info.update({f"checkpoint {k}": v for k, v in checkpoints.items()})
    return EvalResults(results, per_frame, dict(meters.skipped), skipped, seconds, configs,
                       reference if len(ran) > 1 else None, runs, clips, info)


__all__ = ["BICUBIC", "DEFAULT_METRICS", "DOC_BEGIN", "DOC_END", "EvalConfig", "EvalResults", "Meters", "Scorer",
           "bicubic_frames", "build_meters", "check_config", "check_doc", "configs_markdown", "cross_product",
           "describe_results", "evaluate", "expand_all", "load_config_model", "parse_config", "run_markdown",
           "score_clip", "splice_markdown", "sweep", "write_eval_report"]
