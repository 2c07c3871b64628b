"""One job through a given model: segments, resume snapshots, OOM fallback, summary.

    video file -> video file      (segments + remux; audio and subtitles copied; timestamps kept)
    image      -> image
    image folder -> image folder  (one PNG per input file, same names)

Which jobs run, where their outputs go and which model runs them is the upscale task's business
(``flashvsr_q.tasks.upscale``); :func:`run_job` runs one. Every output is written under a temporary name
(``OUT.parts/`` work folder, ``.partial`` files) and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import mark_owned, swap_in
from flashvsr_q.infer.checks import Log, Preflight, log_stderr
from flashvsr_q.infer.memory import (
    MemoryPlan,
    device_budget,
    estimate,
    is_oom,
    module_bytes,
    peak_device_memory,
)
from flashvsr_q.infer.pipeline import (
    ChunkRunner,
    LRFrames,
    TiledStreams,
    UpscaleSettings,
    plan_memory,
    smaller_plan,
)
from flashvsr_q.infer.progress import Summary, peak_rss, reset_device_peaks
from flashvsr_q.infer.resume import (
    STATE_NAME,
    Manifest,
    fingerprint,
    load_states,
    model_fingerprint,
    save_states,
    source_fingerprint,
)
from flashvsr_q.infer.tiling import Geometry, TilePlan
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.streaming import CHUNK_FRAMES
from flashvsr_q.progress import ProgressBar
from flashvsr_q.video.segments import EncoderSettings, SegmentedWriter
from flashvsr_q.video.sources import FrameSource, ImageFolderWriter, write_image

DEFAULT_SEGMENT_FRAMES = 480  # output frames between resume snapshots (rounded to whole chunks of 8)


@dataclass(frozen=True)
class Job:
    """One input and where its output goes. ``kind``: ``"video"``, ``"image"`` or ``"image_folder"``."""

    source: FrameSource
    output: Path
    kind: str

    @property
    def work_dir(self) -> Path | None:
        """``OUT.parts/`` (segments, manifest, state snapshot); None for a single image."""
        return None if self.kind == "image" else self.output.with_name(self.output.name + ".parts")


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
        frames = self.job.work_dir / "frames"
        mark_owned(frames, f"upscaled from {self.job.source.path.name}")  # so that --overwrite may replace it
        swap_in(frames, self.job.output)  # an older output is deleted only once the new one is in place
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
                   color_fix=settings.color_fix, local_range=settings.lcsa.local_range,
                   vae=None if model.vae is None else model.vae.config)
    return MemoryPlan(plan, data["offload"], data["canvas_on_device"], est, data.get("budget"))


def _plan_dict(mp: MemoryPlan) -> dict:
    # the CPU thread count shapes float reductions: a resumed run uses the interrupted run's (see run_job)
    return {"tiles": mp.plan.to_dict(), "offload": mp.offload, "canvas_on_device": mp.canvas_on_device,
            "budget": mp.budget, "threads": torch.get_num_threads()}


def run_job(model: FlashVSR, job: Job, settings: UpscaleSettings, *, tile: str = "auto", vram: int | None = None,
            encoder: EncoderSettings | None = None, audio: bool = True, resume: bool = False,
            overwrite: bool = False, segment_frames: int = DEFAULT_SEGMENT_FRAMES, show_progress: bool = True,
            progress: Callable[[int, int], None] | None = None, cancel=None, log: Log = log_stderr) -> Summary:
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
                      model=model.config.name, pipeline=model.pipeline, scale=settings.scale,
                      color_fix=settings.color_fix)
    reset_device_peaks(device)
    while True:
        log(Preflight.of(source, job.output, geometry, mp, model).describe())
        try:
            _run(model, job, geometry, settings, mp, manifest, fp, encoder, audio, cps, summary, show_progress,
                 progress, cancel)
            break
        except Exception as exc:
            if not is_oom(exc):
                raise  # the work folder stays: a full disk or a bad frame mid-run loses no committed segment
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
        if start_frame >= source.num_frames:  # killed after the last segment, while remuxing or renaming
            summary.resumed_from_frame = start_frame
            sink.finalize()
            return
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
    threads = torch.get_num_threads()
    if manifest is not None:  # the thread count changes CPU float reductions: continue with the recorded one
        torch.set_num_threads(manifest.plan.get("threads", threads))
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
        torch.set_num_threads(threads)
        bar.close()
    summary.seconds = time.perf_counter() - t0
