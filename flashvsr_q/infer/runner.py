"""Upscaling files and folders: input checks, the pre-flight report, segments, resume, OOM fallback, summary.

    video file -> video file      (segments + remux; audio and subtitles copied; timestamps kept)
    image      -> image
    image folder -> image folder  (one PNG per input file, same names)
    folder of videos -> folder    (batch: one video each, same names)

Every output is written under a temporary name (``OUT.parts/`` work folder, ``.partial`` files) and renamed
when complete; an existing output is never replaced without ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.errors import BackendUnavailable, FlashVSRError
from flashvsr_q.infer.memory import (
    MemoryPlan,
    device_budget,
    estimate,
    is_oom,
    module_bytes,
    parse_bytes,
    peak_device_memory,
)
from flashvsr_q.infer.pipeline import (
    Cancelled,
    ChunkRunner,
    LRFrames,
    TiledStreams,
    UpscaleSettings,
    plan_memory,
    smaller_plan,
)
from flashvsr_q.infer.progress import ProgressBar, Summary, peak_rss, reset_device_peaks
from flashvsr_q.infer.resume import (
    STATE_NAME,
    Manifest,
    fingerprint,
    load_states,
    model_fingerprint,
    save_states,
    source_fingerprint,
)
from flashvsr_q.infer.segments import OUTPUT_FORMATS, EncoderSettings, SegmentedWriter
from flashvsr_q.infer.tiling import Geometry, TilePlan, parse_tile
from flashvsr_q.infer.video_io import (
    IMAGE_EXTENSIONS,
    FrameSource,
    ImageFolderWriter,
    list_images,
    list_videos,
    open_source,
    write_image,
)
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.streaming import CHUNK_FRAMES

DEFAULT_SEGMENT_FRAMES = 480  # output frames between resume snapshots (rounded to whole chunks of 8)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BATCH_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")  # other containers become .mp4 in batch mode


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Job:
    source: FrameSource
    output: Path
    kind: str  # "video" | "image" | "image_folder"

    @property
    def work_dir(self) -> Path | None:
        return None if self.kind == "image" else self.output.with_name(self.output.name + ".parts")


# ---------------------------------------------------------------------------------------------------------------
# checks before any work
# ---------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("CUDA is not available here (no GPU or a CPU-only torch); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"device {device} is not supported; use cpu or cuda")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise FlashVSRError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _check_output(path: Path, kind: str, input_path: Path, resume: bool, overwrite: bool) -> bool:
    """Validate an output path; returns False when ``resume`` finds it already complete (skip it)."""
    if path.resolve() == input_path.resolve():
        raise FlashVSRError(f"{path}: the output would replace the input")
    if kind == "video" and path.suffix.lower() not in OUTPUT_FORMATS:
        raise FlashVSRError(f"{path}: a video output needs one of {', '.join(OUTPUT_FORMATS)}")
    if kind == "image" and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise FlashVSRError(f"{path}: an image output needs one of {', '.join(IMAGE_EXTENSIONS)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FlashVSRError(f"{path}: the folder {parent} does not exist")
    if not _writable(parent):
        raise FlashVSRError(f"{path}: the folder {parent} is not writable")
    if path.exists():
        if kind != "image_folder" and path.is_dir():
            raise FlashVSRError(f"{path}: is a folder, expected a file name")
        if kind == "image_folder" and not path.is_dir():
            raise FlashVSRError(f"{path}: is a file, expected a folder for the upscaled images")
        if overwrite:
            return True
        work = path.with_name(path.name + ".parts")
        if resume and not work.exists():
            return False  # finished by an earlier run
        raise FlashVSRError(f"{path} already exists; use --overwrite to replace it")
    return True


def _writable(folder: Path) -> bool:
    try:
        probe = folder / f".flashvsr-q-write-test-{time.time_ns()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def plan_jobs(input_path: Path, output: Path, *, resume: bool = False, overwrite: bool = False) -> list[Job]:
    """Open every input and check every output before anything is written (errors are FlashVSRError)."""
    if not input_path.exists():
        raise FlashVSRError(f"{input_path}: no such file or folder")
    if input_path.is_dir() and not list_images(input_path):
        videos = list_videos(input_path)
        if not videos:
            raise FlashVSRError(f"{input_path}: the folder holds no images and no videos")
        if output.exists() and not output.is_dir():
            raise FlashVSRError(f"{output}: is a file; batch mode writes into a folder")
        if not output.parent.is_dir():
            raise FlashVSRError(f"{output}: the folder {output.parent} does not exist")
        jobs = []
        for video in videos:
            target = output / (video.name if video.suffix.lower() in BATCH_SUFFIXES else video.stem + ".mp4")
            source = open_source(video)
            if output.is_dir() and not _check_output(target, "video", video, resume, overwrite):
                continue
            jobs.append(Job(source, target, "video"))
        if not output.exists():
            if not _writable(output.parent):
                raise FlashVSRError(f"{output}: the folder {output.parent} is not writable")
        return jobs
    source = open_source(input_path)
    kind = source.kind
    if not _check_output(output, kind, input_path, resume, overwrite):
        return []
    return [Job(source, output, kind)]


# ---------------------------------------------------------------------------------------------------------------
# sinks: where a job's frames go
# ---------------------------------------------------------------------------------------------------------------


class _VideoSink:
    def __init__(self, job: Job, scale: int, encoder: EncoderSettings, audio: bool):
        self.writer = SegmentedWriter.for_source(job.output, job.source, scale, settings=encoder, copy_audio=audio)
        self.segment = None

    def write(self, segment: int, start: int, frames) -> None:
        if self.segment is None:
            self.segment = self.writer.open_segment(segment, start)
        for rgb in frames:
            self.segment.write(rgb)

    def close_segment(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    def finalize(self) -> None:
        self.close_segment()
        self.writer.finalize()

    def abort(self) -> None:
        if self.segment is not None:
            self.segment.abort()
            self.segment = None


class _ImageFolderSink:
    def __init__(self, job: Job):
        self.job = job
        self.writer = ImageFolderWriter(job.work_dir / "frames", [p.name for p in job.source.files], ".png")

    def write(self, segment: int, start: int, frames) -> None:
        for i, rgb in enumerate(frames):
            self.writer.write(start + i, rgb)

    def close_segment(self) -> None:
        pass

    def finalize(self) -> None:
        out = self.job.output
        if out.exists():
            shutil.rmtree(out)
        (self.job.work_dir / "frames").rename(out)
        shutil.rmtree(self.job.work_dir, ignore_errors=True)

    def abort(self) -> None:
        pass


class _ImageSink:
    def __init__(self, job: Job):
        self.job, self.frame = job, None

    def write(self, segment: int, start: int, frames) -> None:
        self.frame = frames[0]

    def close_segment(self) -> None:
        pass

    def finalize(self) -> None:
        write_image(self.job.output, self.frame)

    def abort(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# one job
# ---------------------------------------------------------------------------------------------------------------


def _options(settings: UpscaleSettings, model: FlashVSR, encoder: EncoderSettings, audio: bool, cps: int) -> dict:
    return {"settings": dataclasses.asdict(settings), "dtype": str(model.dtype), "device": model.device.type,
            "backend": model.dit.backend.name, "encoder": dataclasses.asdict(encoder), "audio": audio,
            "chunks_per_segment": cps}


def _memory_plan_from(data: dict, model: FlashVSR, geometry: Geometry, settings: UpscaleSettings) -> MemoryPlan:
    plan = TilePlan.from_dict(data["tiles"])
    est = estimate(model.config, module_bytes(model), model.dtype, geometry, plan, kv_len=settings.lcsa.kv_len,
                   backend=model.dit.backend.name, offload=data["offload"], canvas_on_device=data["canvas_on_device"],
                   color_fix=settings.color_fix, local_range=settings.lcsa.local_range)
    return MemoryPlan(plan, data["offload"], data["canvas_on_device"], est, data.get("budget"))


def _plan_dict(mp: MemoryPlan) -> dict:
    return {"tiles": mp.plan.to_dict(), "offload": mp.offload, "canvas_on_device": mp.canvas_on_device,
            "budget": mp.budget}


def _preflight(job: Job, model: FlashVSR, geometry: Geometry, mp: MemoryPlan, log) -> None:
    s = job.source
    log(f"{s.path} ({s.kind}, {s.width}x{s.height}, {s.num_frames} frames, {float(s.fps):.3f} fps) -> {job.output} "
        f"({geometry.out_width}x{geometry.out_height}; the model runs {geometry.padded_width}x"
        f"{geometry.padded_height})")
    log(f"model {model.config.name} {str(model.dtype).removeprefix('torch.')} on {model.device}, attention "
        f"{model.dit.backend.name}")
    log(mp.describe())
    if geometry.scale != 4:
        log(f"note: FlashVSR is trained for x4; x{geometry.scale} only changes the bicubic target size")


def run_job(model: FlashVSR, job: Job, settings: UpscaleSettings, *, tile: str = "auto", vram: int | None = None,
            encoder: EncoderSettings | None = None, audio: bool = True, resume: bool = False,
            overwrite: bool = False, segment_frames: int = DEFAULT_SEGMENT_FRAMES, show_progress: bool = True,
            progress: Callable[[int, int], None] | None = None, cancel=None, log=_log_stderr) -> Summary:
    """Upscale one job (a video, an image or an image folder) with ``model``; see :func:`upscale`."""
    encoder = encoder or EncoderSettings()
    source, device = job.source, model.device
    geometry = Geometry(source.width, source.height, settings.scale)
    cps = max(1, round(segment_frames / CHUNK_FRAMES))
    budget = vram if vram is not None else device_budget(device)
    fp = fingerprint(source_fingerprint(source), model_fingerprint(model),
                     _options(settings, model, encoder, audio, cps))
    work = job.work_dir
    manifest = Manifest.load(work) if work is not None and work.exists() and resume else None
    if work is not None and work.exists() and manifest is None:
        if not (overwrite or resume):
            raise FlashVSRError(f"an interrupted run left {work}; use --resume to continue it or --overwrite to "
                                "start over")
        shutil.rmtree(work)
    if manifest is not None:
        manifest.check(fp)
        mp = _memory_plan_from(manifest.plan, model, geometry, settings)
    else:
        mp = plan_memory(model, geometry, tile, budget, settings)
    summary = Summary(str(source.path), str(job.output), job.kind, source.num_frames, (source.width, source.height),
                      (geometry.out_width, geometry.out_height), float(source.fps), device=str(device),
                      dtype=str(model.dtype).removeprefix("torch."), backend=model.dit.backend.name,
                      model=model.config.name, scale=settings.scale, color_fix=settings.color_fix)
    reset_device_peaks(device)
    while True:
        _preflight(job, model, geometry, mp, log)
        try:
            _run(model, job, geometry, settings, mp, manifest, fp, encoder, audio, cps, summary, show_progress,
                 progress, cancel)
            break
        except Exception as exc:
            if not is_oom(exc):
                if isinstance(exc, FlashVSRError) and not isinstance(exc, Cancelled) and work is not None:
                    shutil.rmtree(work, ignore_errors=True)  # bad input mid-run: nothing to resume
                raise
            smaller = smaller_plan(model, geometry, mp, budget, settings)
            summary.oom_retries.append(f"{mp.plan.describe()} -> {smaller.plan.describe()}")
            log(f"out of device memory with {mp.plan.describe()}; retrying from the start with "
                f"{smaller.plan.describe()}")
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            mp, manifest = smaller, None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary.tiling, summary.state_offload = mp.plan.describe(), mp.offload
    summary.estimated_peak = mp.estimate.peak
    peaks = peak_device_memory(device)
    if peaks is not None:
        summary.peak_allocated, summary.peak_reserved = peaks["allocated"], peaks["reserved"]
    summary.peak_rss = peak_rss()
    return summary


def _run(model, job, geometry, settings, mp, manifest, fp, encoder, audio, cps, summary, show_progress, progress,
         cancel) -> None:
    source, work = job.source, job.work_dir
    sink = (_VideoSink(job, settings.scale, encoder, audio) if job.kind == "video"
            else _ImageFolderSink(job) if job.kind == "image_folder" else _ImageSink(job))
    states, chunk, lr_pos, lr_tail, start_frame = None, 0, 0, None, 0
    if manifest is not None and manifest.progress.get("state"):
        states, extra = load_states(work / STATE_NAME, model.device)
        chunk, lr_pos, start_frame = extra["chunks"], extra["lr_position"], extra["frames"]
    elif work is not None:
        manifest = Manifest.create(work, fp, _plan_dict(mp))
    engine = TiledStreams(model, geometry, mp, settings, states)
    n = source.num_frames
    if lr_pos:
        first = min(lr_pos - 4, n - 1)
        reader = LRFrames((f.rgb for f in source.frames(first)), geometry, model.dtype, first, n)
        if first < lr_pos - 4:
            reader.take(first, lr_pos - 4)
        lr_tail = reader.take(lr_pos - 4, lr_pos)
    else:
        reader = LRFrames((f.rgb for f in source.frames(0)), geometry, model.dtype, 0, n)
    summary.resumed_from_frame = start_frame
    runner = ChunkRunner(engine, reader, settings, start_chunk=chunk, lr_tail=lr_tail, cancel=cancel)
    bar = ProgressBar(source.path.name, n, enabled=show_progress)
    bar.update(start_frame, n, since=start_frame)
    t0 = time.perf_counter()
    try:
        for result in runner:
            segment = result.index // cps
            sink.write(segment, result.start, result.frames)
            done = result.start + len(result.frames)
            if (result.index + 1) % cps == 0 or result.last:
                sink.close_segment()
                if manifest is not None:
                    extra = {"chunks": result.index + 1, "lr_position": result.lr_position, "frames": done}
                    save_states(work / STATE_NAME, engine.states, extra)
                    manifest.progress = {**extra, "segments": segment + 1, "state": STATE_NAME}
                    manifest.write()
            bar.update(done, n, since=start_frame)
            if progress is not None:
                progress(done, n)
        sink.finalize()
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------------------------


def load_model(checkpoint: str | Path | None, dtype: torch.dtype, device: torch.device) -> FlashVSR:
    from flashvsr_q.checkpoints import load_checkpoint

    return load_checkpoint(checkpoint, dtype=dtype, device=device).eval()


def upscale(
    input: str | Path, output: str | Path, *, checkpoint: str | Path | None = None, model: FlashVSR | None = None,
    scale: int = 4, tile: str = "auto", vram: int | str | None = None, attention: str = "auto",
    color_fix: str = "adain", dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
    seed: int = 0, lcsa: LCSASettings | None = None, codec: str = "libx264", crf: float = 18,
    preset: str = "medium", pix_fmt: str = "yuv420p", audio: bool = True, resume: bool = False,
    overwrite: bool = False, segment_frames: int = DEFAULT_SEGMENT_FRAMES, show_progress: bool = True,
    progress: Callable[[int, int], None] | None = None, cancel=None, log: Callable[[str], None] = _log_stderr,
) -> Summary | list[Summary]:
    """Upscale a video, an image, an image folder or a folder of videos; returns the summary (a list in batch mode).

    Args:
        input, output: paths (see the module docstring for the kinds).
        checkpoint: checkpoint folder (None: ``$FLASHVSR_Q_CHECKPOINT`` or the shipped small model); or pass
            ``model`` (already on its device and dtype).
        scale: integer 1..8 (trained for 4). tile: ``auto`` | ``off`` | ``SIZExOVERLAP`` in LR px.
        vram: device memory budget (bytes or "8GB"); None: the free CUDA memory, no limit on CPU.
        attention: backend name or ``auto``. color_fix: ``adain`` | ``wavelet`` | ``none``.
        dtype: ``bf16`` | ``fp32`` (default bf16 on CUDA, fp32 on CPU). device: ``cpu`` | ``cuda`` (default cuda
            when available).
        codec, crf, preset, pix_fmt: video encoder settings. audio: copy audio and subtitle streams.
        resume: continue an interrupted run from its manifest (refused if input, model or options changed).
        overwrite: replace an existing output (or an interrupted run's work folder).
        segment_frames: output frames per segment / resume snapshot.
        progress: called with (frames done, total); cancel: Event or callable, checked between tiles.
    """
    settings = UpscaleSettings(scale, color_fix, seed, lcsa or LCSASettings())
    try:
        parse_tile(tile, scale)
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None
    encoder = EncoderSettings(codec, crf, preset, pix_fmt)
    encoder.check()
    try:
        budget = parse_bytes(vram) if vram is not None else None
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None
    jobs = plan_jobs(Path(input), Path(output), resume=resume, overwrite=overwrite)
    batch = Path(input).is_dir() and not list_images(Path(input))
    if model is None:
        dev = resolve_device(device)
        model = load_model(checkpoint, resolve_dtype(dtype, dev), dev)
    elif device is not None and torch.device(device) != model.device:
        raise FlashVSRError(f"the model is on {model.device} but device={device} was asked for")
    backend = model.set_attention(attention, model.device)
    if attention == "auto":
        log(f"attention 'auto' chose {backend.name!r} on {model.device}")
    if batch:
        Path(output).mkdir(exist_ok=True)
    summaries = []
    for job in jobs:
        summaries.append(run_job(model, job, settings, tile=tile, vram=budget, encoder=encoder, audio=audio,
                                 resume=resume, overwrite=overwrite, segment_frames=segment_frames,
                                 show_progress=show_progress, progress=progress, cancel=cancel, log=log))
    return summaries if batch else (summaries[0] if summaries else None)
