"""The batch use case: a video library upscaled on Ray, one video per task, one FlashVSR actor per GPU.

    from flashvsr_q.tasks.batch import BatchOptions, batch
    from flashvsr_q.tasks.upscale import UpscaleOptions

    result = batch(BatchOptions(["films/", "more.txt"], "out/", upscale=UpscaleOptions("", tile="auto")))
    result = batch(BatchOptions(["a.mp4", "b.mkv"], "out/", workers=2, address="ray://head:10001"))
    print(result.markdown(), result.ok)

There is no scheduler here: Ray Data maps the list of videos through a fixed pool of actors
(``ActorPoolStrategy``). Each actor loads the model once and runs :func:`flashvsr_q.tasks.upscale.upscale` on one
video per call, with the same options, output and ``OUT.parts`` resume work folder as ``flashvsr-q upscale
--resume``. A video is one unit of work because its segments depend on each other through the streaming state. When
a worker process dies, Ray restarts the actor and retries the video, which continues from its last committed
segment; a video whose worker dies ``retries + 1`` times fails its row. A video that raises fails its row with its
one-line error; the others go on.

OUT_DIR holds the outputs (one video per input, same name; containers other than .mp4/.mkv/.mov/.m4v become .mp4),
``batch-summary.json`` and ``batch-summary.md`` (one row per video: status, frames, seconds, node, worker, error),
rewritten whole after every video. A rerun skips a video whose row says it finished with the same upscale options and
whose output still has the size and modification time the row recorded; it resumes the others.

Ray is the optional ``[batch]`` extra; importing this module without it raises a one-line ``FlashVSRError``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flashvsr_q.checkpoints import read_recipe_and_calibration
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import write_json, write_text
from flashvsr_q.infer.checks import Log, log_stderr
from flashvsr_q.infer.memory import parse_bytes
from flashvsr_q.infer.resume import ResumeError
from flashvsr_q.infer.tiling import parse_tile
from flashvsr_q.logs import DropMessages
from flashvsr_q.tasks.upscale import BATCH_SUFFIXES, UpscaleOptions, load_model, upscale
from flashvsr_q.video.segments import EncoderSettings
from flashvsr_q.video.sources import VIDEO_EXTENSIONS, list_videos, open_source

try:
    import ray
    import ray.data
except ImportError as exc:  # Ray is the optional [batch] extra
    raise FlashVSRError(f"flashvsr-q batch needs Ray Data ({exc}): pip install 'flashvsr-q[batch]'") from None

__all__ = ["BatchOptions", "BatchResult", "VideoProgress", "VideoRow", "batch", "collect_inputs"]

SUMMARY_NAME = "batch-summary.json"
TABLE_NAME = "batch-summary.md"
LOCK_NAME = ".flashvsr-q-batch.lock"
LIST_SUFFIXES = (".txt", ".csv")
LIST_COLUMNS = ("path", "input", "video", "file")  # a CSV header naming the column of paths
FINISHED = ("done", "skipped")
# the upscale options that do not change an output: they are set per video or by the batch
PER_RUN_FIELDS = ("input", "output", "resume", "overwrite", "show_progress")


@dataclass
class BatchOptions:
    """What ``flashvsr-q batch`` takes.

    Attributes:
        inputs: video files, folders of videos (not recursive) and ``.txt`` / ``.csv`` lists of paths (one per line;
            a CSV's column named path/input/video/file, else its first; relative paths are relative to the list).
        output: OUT_DIR (created if its parent exists).
        upscale: every ``flashvsr-q upscale`` option, applied to each video; its input, output, resume, overwrite and
            show_progress are set by the batch. Paths in it (checkpoint, recipe, calibration) must be readable at
            the same path on every node.
        workers: actors in the pool. Default: one per GPU of the Ray cluster, or 1 CPU worker without GPUs (a CPU
            worker gets the cluster's CPUs divided by ``workers``, at most one node's).
        address: None starts a local Ray for this run; ``auto`` or ``ray://HOST:PORT`` joins a running cluster.
            An already initialised Ray (``ray.init`` in this process) is used as it is.
        retries: how many times a video is retried after its worker process died (it resumes each time).
        overwrite: replace outputs that are in the way but not recorded as finished by this batch's summary.
        show_progress: a progress bar over videos and frames on stderr.
    """

    inputs: Sequence[str | Path]
    output: str | Path
    upscale: UpscaleOptions = field(default_factory=lambda: UpscaleOptions(""))
    workers: int | None = None
    address: str | None = None
    retries: int = 2
    overwrite: bool = False
    show_progress: bool = True


@dataclass
class VideoRow:
    """One video of the batch, as the summary records it. ``status``: done (upscaled in this run), skipped (finished
    by an earlier run), failed, pending (not finished: the run was interrupted)."""

    input: str
    output: str  # file name inside OUT_DIR
    status: str = "pending"
    frames: int = 0
    seconds: float = 0.0
    node: str = ""
    worker: str = ""
    error: str = ""
    resumed_from: int = 0  # the frame the finishing attempt started from (> 0: it continued a work folder)
    output_bytes: int = 0  # the output's size and modification time when it finished, checked by a rerun
    output_mtime_ns: int = 0


@dataclass(frozen=True)
class VideoProgress:
    """A worker's report on one video: it started (``done`` None) or committed frames."""

    index: int
    input: str
    done: int | None
    total: int | None
    node: str
    worker: str
    pid: int


@dataclass
class BatchResult:
    """The rows of this run (in input order), where the summary went, and the wall time."""

    rows: list[VideoRow]
    summary: Path
    table: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return all(row.status in FINISHED for row in self.rows)

    def counts(self) -> dict[str, int]:
        return {s: n for s in ("done", "skipped", "failed", "pending")
                if (n := sum(row.status == s for row in self.rows))}

    def markdown(self) -> str:
        return to_markdown(self.rows)


# ---------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The videos named by ``inputs`` (files, folders, lists), in order, each once.

    A missing folder or list is an error; a missing or unreadable video is not (its row fails).
    """
    videos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() in LIST_SUFFIXES:
            if not path.is_file():
                raise FlashVSRError(f"{path}: no such list of videos")
            for entry in read_list(path):
                videos.extend(_expand(entry))
        elif path.is_dir() or not path.suffix:
            if not path.is_dir():
                raise FlashVSRError(f"{path}: no such folder")
            found = list_videos(path)
            if not found:
                raise FlashVSRError(f"{path}: the folder holds no videos ({', '.join(VIDEO_EXTENSIONS)})")
            videos.extend(found)
        else:
            videos.append(path)
    seen, unique = set(), []
    for video in videos:
        key = video.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(key)
    if not unique:
        raise FlashVSRError("no videos to upscale")
    return unique


def read_list(path: Path) -> list[Path]:
    """The paths in a ``.txt`` (one per line; blank lines and ``#`` comments skipped) or ``.csv`` list."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlashVSRError(f"{path}: cannot read the list ({exc})") from None
    if path.suffix.lower() == ".csv":
        rows = [row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)]
        header = [cell.strip().lower() for cell in rows[0]] if rows else []
        column = next((header.index(name) for name in LIST_COLUMNS if name in header), None)
        cells = [row[column or 0].strip() for row in (rows[1:] if column is not None else rows)
                 if len(row) > (column or 0)]
    else:
        cells = [line.strip() for line in text.splitlines()]
    entries = [cell for cell in cells if cell and not cell.startswith("#")]
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def _expand(entry: Path) -> list[Path]:
    return list_videos(entry) if entry.is_dir() else [entry]


def output_name(video: Path) -> str:
    """The output's file name in OUT_DIR: the input's name, as .mp4 unless its container is one we write."""
    return video.name if video.suffix.lower() in BATCH_SUFFIXES else video.stem + ".mp4"


# ---------------------------------------------------------------------------------------------------------------
# the summary
# ---------------------------------------------------------------------------------------------------------------


def settings_of(options: UpscaleOptions) -> dict[str, Any]:
    """The upscale options that decide what an output holds, as JSON values (compared between runs).

    An object passed in memory (a ``Recipe``, ``CalibrationStats``) is recorded by its type and name only.
    """
    def value(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (Path, torch.dtype, torch.device)):
            return str(v)
        if dataclasses.is_dataclass(v) and not hasattr(v, "name"):
            return {k: value(x) for k, x in dataclasses.asdict(v).items()}
        return f"<{type(v).__name__} {getattr(v, 'name', '')}>".replace(" >", ">")

    return {f.name: value(getattr(options, f.name)) for f in dataclasses.fields(options)
            if f.name not in PER_RUN_FIELDS}


def read_summary(out_dir: Path) -> tuple[dict[str, Any] | None, dict[str, VideoRow]]:
    """The settings and rows (by output name) of an earlier run's summary; a damaged one is an error."""
    path = out_dir / SUMMARY_NAME
    if not path.exists():
        return None, {}
    try:
        data = json.loads(path.read_text())
        rows = [VideoRow(**row) for row in data["videos"]]
        return data["settings"], {row.output: row for row in rows}
    except (ValueError, KeyError, TypeError) as exc:
        raise FlashVSRError(f"{path}: damaged batch summary ({exc}); move it away to start the batch afresh") from None


def to_markdown(rows: Sequence[VideoRow]) -> str:
    """The summary as a Markdown table."""
    lines = ["| video | status | frames | seconds | node | worker | error |", "|---|---|---:|---:|---|---|---|"]
    for row in rows:
        cells = [row.output, row.status, str(row.frames), f"{row.seconds:.1f}", row.node, row.worker,
                 row.error.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_summary(out_dir: Path, settings: dict[str, Any], rows: list[VideoRow], others: list[VideoRow]) -> None:
    everything = rows + others
    write_json(out_dir / SUMMARY_NAME, {"format": "flashvsr-q batch summary", "version": 1, "settings": settings,
                                        "videos": [dataclasses.asdict(row) for row in everything]})
    write_text(out_dir / TABLE_NAME, to_markdown(everything))


def _finished(row: VideoRow | None, output: Path, same_settings: bool) -> bool:
    """Whether an earlier run finished ``output`` with these settings and nobody changed it since."""
    if row is None or row.status not in FINISHED or not same_settings or not output.is_file():
        return False
    stat = output.stat()
    return stat.st_size == row.output_bytes and stat.st_mtime_ns == row.output_mtime_ns


def _record_output(row: VideoRow, output: Path) -> None:
    stat = output.stat()
    row.output_bytes, row.output_mtime_ns = stat.st_size, stat.st_mtime_ns


# ---------------------------------------------------------------------------------------------------------------
# the workers
# ---------------------------------------------------------------------------------------------------------------


def _quiet(message: str) -> None:
    pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, FlashVSRError) else f"{type(exc).__name__}: {text}"


class UpscaleWorker:
    """One actor of the pool (a Ray Data callable class): loads the model once, then upscales one video per row.

    A row in: ``index``, ``input``, ``output`` (absolute paths as the driver sees them), ``overwrite``. A row out: the
    same plus the :class:`VideoRow` fields. A model that cannot load fails every row with its error.
    """

    def __init__(self, template: UpscaleOptions, ledger: ray.actor.ActorHandle, retries: int, threads: int):
        if threads:
            torch.set_num_threads(threads)  # the CPUs Ray gave this actor, not the machine's
        self.ledger, self.retries = ledger, retries
        self.node = ray.util.get_node_ip_address()
        self.pid = os.getpid()
        self.worker = f"{socket.gethostname()}:{self.pid}"
        # the model is loaded here, once; each video then runs with the model's device and dtype
        self.options = dataclasses.replace(template, checkpoint=None, recipe=None, variant=None, calibration=None,
                                           dtype=None, device=None, resume=True, show_progress=False)
        self.model, self.error = None, ""
        try:
            self.model = load_model(template, log=_quiet)
        except Exception as exc:  # every row then fails with this line, rather than the pool with a traceback
            self.error = _one_line(exc)

    def _report(self, row: dict, done: int | None, total: int | None) -> None:
        # waited for: a report sent without waiting can sit in this process until the video is done
        ray.get(self.ledger.report.remote(VideoProgress(row["index"], row["input"], done, total, self.node,
                                                        self.worker, self.pid)))

    def __call__(self, row: dict) -> dict:
        attempt = ray.get(self.ledger.start.remote(row["index"]))
        self._report(row, None, None)
        out = {**row, "status": "failed", "frames": 0, "seconds": 0.0, "resumed_from": 0, "node": self.node,
               "worker": self.worker, "error": self.error}
        if attempt > self.retries + 1:  # Ray retries a dead worker's task without end; the budget is kept here
            return {**out, "error": f"its worker died {attempt - 1} times while upscaling it"}
        if self.model is None:
            return out
        try:
            summary = self._upscale(row)
        except Exception as exc:  # one video's failure, whatever it is, is its row's and not the batch's
            return {**out, "error": _one_line(exc)}
        if summary is None:  # a retry after the output was renamed into place: the work is done
            frames, seconds, resumed = open_source(row["output"]).num_frames, 0.0, 0
        else:
            frames, seconds, resumed = summary.frames, summary.seconds, summary.resumed_from_frame
        return {**out, "status": "done", "frames": frames, "seconds": round(seconds, 3), "resumed_from": resumed,
                "error": ""}

    def _upscale(self, row: dict):
        options = dataclasses.replace(self.options, input=row["input"], output=row["output"],
                                      overwrite=row["overwrite"])
        progress = functools.partial(self._report, row)
        try:
            return upscale(options, self.model, progress=progress, log=_quiet)
        except ResumeError:
            if not row["overwrite"]:
                raise
            # a work folder of other options or another model is in the way, and the user asked to replace it
            return upscale(dataclasses.replace(options, resume=False), self.model, progress=progress, log=_quiet)


# ---------------------------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------------------------


@contextmanager
def ray_session(address: str | None, log: Log) -> Iterator[None]:
    """Ray for this run: the one already initialised in this process, the cluster at ``address``, or a local one
    (shut down afterwards)."""
    if ray.is_initialized():
        yield
        return
    try:
        # the workers' stdout/stderr stay in Ray's session logs: they would tear through the progress bar
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise FlashVSRError(f"cannot {'start' if address is None else 'join'} Ray"
                            f"{'' if address is None else ' at ' + address}: {_one_line(exc)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def plan_workers(template: UpscaleOptions, workers: int | None, videos: int) -> tuple[int, int, int, str]:
    """(actors, CPUs each, GPUs each, device) for ``videos`` videos on the cluster Ray is connected to."""
    if workers is not None and workers < 1:
        raise FlashVSRError(f"--workers {workers}: needs at least 1")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    asked = None if template.device is None else str(template.device)
    if asked is not None and asked.startswith("cuda"):
        if not gpus:
            raise FlashVSRError(f"--device {asked}: the Ray cluster has no GPU (use --device cpu)")
    if gpus and (asked is None or asked.startswith("cuda")):
        n = workers or gpus
        if n > gpus:
            raise FlashVSRError(f"{n} workers need {n} GPUs (one each); the Ray cluster has {gpus}")
        return min(n, videos), 1, 1, "cuda"  # Ray shows each actor its own GPU as cuda:0
    n = workers or 1
    if n > cpus:
        raise FlashVSRError(f"{n} CPU workers need {n} CPUs; the Ray cluster has {cpus}")
    n = min(n, videos)
    node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]), default=cpus)
    return n, max(1, min(node_cpus, cpus // n)), 0, "cpu"


@ray.remote(num_cpus=0)
class Ledger:
    """The workers' reports, collected for the driver, and how many times each video was started (a worker that
    died mid-video leaves its count behind)."""

    def __init__(self):
        self.events: list[VideoProgress] = []
        self.attempts: Counter[int] = Counter()

    def start(self, index: int) -> int:
        self.attempts[index] += 1
        return self.attempts[index]

    def report(self, event: VideoProgress) -> None:
        self.events.append(event)

    def drain(self) -> list[VideoProgress]:
        events, self.events = self.events, []
        return events


@contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's console says what our bars say (each execution's plan at INFO, that its own bars are off); its log
    file in the Ray session folder keeps everything, and its warnings and errors still show."""
    consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in consoles]
    progress_logger = logging.getLogger("ray.data._internal.progress")
    drop = DropMessages(("Progress bars disabled",))
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
    progress_logger.addFilter(drop)
    try:
        yield
    finally:
        progress_logger.removeFilter(drop)
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)


def _run_pool(rows: list[dict], template: UpscaleOptions, n: int, cpus: int, gpus: int, retries: int,
              on_row: Callable[[dict], None], on_event: Callable[[VideoProgress], None]) -> None:
    """Map ``rows`` through a pool of ``n`` :class:`UpscaleWorker` actors; ``on_row`` gets each finished row."""
    ledger = Ledger.remote()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one video per block: per-video retries
    ds.context.enable_progress_bars = False  # ours counts videos and frames
    ds.context.max_errored_blocks = -1  # a video that Ray gives up on fails its row; the others go on
    ds = ds.map(UpscaleWorker, fn_constructor_kwargs={"template": template, "ledger": ledger, "retries": retries,
                                                      "threads": 0 if gpus else cpus},
                compute=ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1), num_cpus=cpus,
                num_gpus=gpus)
    finished: queue.Queue = queue.Queue()

    def consume() -> None:  # Ray Data's iterator blocks; the workers' reports are read meanwhile
        try:
            for row in ds.iter_rows():
                finished.put(("row", row))
            finished.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread)
            finished.put(("error", exc))

    threading.Thread(target=consume, name="flashvsr-q-batch", daemon=True).start()
    try:
        while True:
            for event in ray.get(ledger.drain.remote()):
                on_event(event)
            try:
                kind, value = finished.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "row":
                on_row(value)
            elif kind == "error":
                raise FlashVSRError(f"Ray Data stopped: {_one_line(value)}")
            else:
                break
        for event in ray.get(ledger.drain.remote()):
            on_event(event)
    finally:
        ray.kill(ledger)


class _Bars:
    """Two rich bars on stderr: videos finished, frames committed (the total grows as workers open videos)."""

    def __init__(self, videos: int, enabled: bool):
        self.frames: dict[int, tuple[int, int]] = {}
        self.progress = None
        if not enabled:
            return
        self.progress = Progress(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True))
        self.videos = self.progress.add_task("videos", total=videos, note="")
        self.frame_task = self.progress.add_task("frames", total=None, note="")
        self.progress.start()

    def video_done(self, note: str) -> None:
        if self.progress is not None:
            self.progress.update(self.videos, advance=1, note=note)

    def frames_of(self, index: int, done: int, total: int) -> None:
        self.frames[index] = (done, total)
        if self.progress is not None:
            done_all = sum(d for d, _ in self.frames.values())
            total_all = sum(t for _, t in self.frames.values())
            self.progress.update(self.frame_task, completed=done_all, total=total_all)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# ---------------------------------------------------------------------------------------------------------------
# the use case
# ---------------------------------------------------------------------------------------------------------------


def _check_settings(o: UpscaleOptions) -> None:
    """The upscale options' own checks, before Ray starts (the workers would fail every video on them)."""
    try:
        parse_tile(o.tile, o.scale)
        if o.vram is not None:
            parse_bytes(o.vram)
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None
    EncoderSettings(o.codec, o.crf, o.preset, o.pix_fmt).check()
    read_recipe_and_calibration(o.recipe, None)


def batch(options: BatchOptions, *, progress: Callable[[VideoProgress], None] | None = None,
          log: Log = log_stderr) -> BatchResult:
    """Upscale every video of ``options.inputs`` into ``options.output`` on Ray; see the module docstring.

    ``progress`` receives every worker report (which video, frames committed, node, worker, pid) on this thread.
    Returns the rows of this run; ``result.ok`` is False when a video failed.

    Raises:
        FlashVSRError: bad inputs (a missing folder or list, two videos with one output name), options, output
        folder, a batch already running on it, or a Ray that cannot start or be joined. A bad video is not an error
        here: its row fails.
    """
    started = time.perf_counter()
    out_dir = Path(options.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise FlashVSRError(f"{out_dir}: is a file; batch writes into a folder")
    if not out_dir.parent.is_dir():
        raise FlashVSRError(f"{out_dir}: the folder {out_dir.parent} does not exist")
    if options.retries < 0:
        raise FlashVSRError(f"--retries {options.retries}: needs 0 or more")
    template = options.upscale
    _check_settings(template)
    videos = collect_inputs(options.inputs)
    names: dict[str, Path] = {}
    for video in videos:
        name = output_name(video)
        if name in names:
            raise FlashVSRError(f"{names[name]} and {video} would both be written to {out_dir / name}")
        names[name] = video
    out_dir.mkdir(exist_ok=True)
    lock = filelock.FileLock(out_dir / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise FlashVSRError(f"{out_dir}: another batch is writing into this folder") from None
    try:
        return _batch(options, template, out_dir, videos, progress, log, started)
    finally:
        lock.release()


def _batch(options: BatchOptions, template: UpscaleOptions, out_dir: Path, videos: list[Path],
           progress: Callable[[VideoProgress], None] | None, log: Log, started: float) -> BatchResult:
    settings = settings_of(template)
    earlier_settings, earlier = read_summary(out_dir)
    # a setting the earlier summary lacks (added to flashvsr-q since) counts as its default
    same = earlier_settings is not None and all(earlier_settings.get(k, v) == v for k, v in settings.items())
    rows: list[VideoRow] = []
    todo: list[dict] = []
    for video in videos:
        name = output_name(video)
        output = out_dir / name
        before = earlier.pop(name, None)
        row = VideoRow(str(video), name)
        if _finished(before, output, same):
            row = dataclasses.replace(before, input=str(video), status="skipped")
        elif output.resolve() == video:
            row.status, row.error = "failed", "the output would replace the input"
        elif output.exists() and not options.overwrite:
            row.status, row.error = "failed", (f"{output} exists and this batch's summary does not record it as "
                                               "finished with these options; use --overwrite to replace it")
        elif not video.is_file():
            row.status, row.error = "failed", f"{video}: no such file"
        else:
            todo.append({"index": len(rows), "input": str(video), "output": str(output),
                         "overwrite": options.overwrite})
        rows.append(row)
    others = list(earlier.values())  # rows of videos not in this run stay in the summary
    _write_summary(out_dir, settings, rows, others)
    skipped = sum(row.status == "skipped" for row in rows)
    if todo:
        bars, completed = _Bars(0, False), False
        try:
            with ray_session(options.address, log), _quiet_ray_data():
                n, cpus, gpus, device = plan_workers(template, options.workers, len(todo))
                where = "a local Ray" if options.address is None else f"Ray at {options.address}"
                each = "" if gpus else f" ({cpus} CPU{'s' * (cpus > 1)} each)"
                log(f"batch: {len(todo)} of {len(rows)} videos to upscale ({skipped} finished earlier) on {n} "
                    f"{'GPU' if gpus else 'CPU'} worker{'s' * (n > 1)}{each}, {where}")
                bars = _Bars(len(todo), options.show_progress)

                def on_event(event: VideoProgress) -> None:
                    row = rows[event.index]
                    if row.status != "pending":  # a late report of a video already finished
                        return
                    row.node, row.worker = event.node, event.worker
                    if event.done is not None:
                        bars.frames_of(event.index, event.done, event.total)
                    if progress is not None:
                        progress(event)

                def on_row(result: dict) -> None:
                    row = rows[result["index"]]
                    for name in ("status", "frames", "seconds", "node", "worker", "error", "resumed_from"):
                        setattr(row, name, result[name])
                    if row.status == "done":
                        _record_output(row, out_dir / row.output)
                        bars.frames_of(result["index"], row.frames, row.frames)
                    bars.video_done(f"{row.output} {row.status}")
                    _write_summary(out_dir, settings, rows, others)

                _run_pool(todo, dataclasses.replace(template, device=device), n, cpus, gpus, options.retries,
                          on_row, on_event)
                completed = True
        finally:
            bars.close()
            if completed:  # what Ray gave up on (its worker kept dying) fails its row; after Ctrl-C it stays pending
                for job in todo:
                    row = rows[job["index"]]
                    if row.status == "pending":
                        row.status = "failed"
                        row.error = f"its worker died {options.retries + 1} times while upscaling it"
            _write_summary(out_dir, settings, rows, others)
    return BatchResult(rows, out_dir / SUMMARY_NAME, out_dir / TABLE_NAME, time.perf_counter() - started)

