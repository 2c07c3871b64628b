"""What the GUI needs besides widgets: background jobs with progress and cancel, error lines, choice lists.

Nothing here imports gradio, so it is tested without a browser. Nothing here upscales, quantizes or measures either:
a job runs one library call in a worker thread and relays the library's own progress callback and cancel event.

    job = JOBS.start(session, lambda report, cancel: upscale(..., progress=report.frames, cancel=cancel))
    for update in job.updates():          # Progress(done, total, text) while the worker runs
        ...
    summary = job.result()                # the library's return value, or its exception re-raised
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashvsr_q.attention import available_backends
from flashvsr_q.checkpoints import checkpoint_kind, default_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.memory import parse_bytes
from flashvsr_q.quant.recipes import load_recipe, shipped_recipes
from flashvsr_q.shipped import small_model_dir
from flashvsr_q.video.sources import IMAGE_EXTENSIONS, open_source

log = logging.getLogger(__name__)

DEFAULT_CHOICE = "default"  # the checkpoint dropdown's value for load_checkpoint(None)
RECIPE_NONE = "none"  # the recipe dropdown's value for "as stored"


# ---------------------------------------------------------------------------------------------------------------
# background jobs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One progress report of a running job: ``done`` of ``total`` units (None: unknown) and a line of text."""

    done: float
    total: float | None
    text: str
    unit: str = "steps"

    @property
    def fraction(self) -> float | None:
        """0..1, or None when the total is unknown (Gradio then shows an indeterminate bar)."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


class Reporter:
    """The progress callback handed to the library; thread-safe, never blocks the worker."""

    def __init__(self, sink: queue.Queue) -> None:
        self._sink = sink

    def __call__(self, done: float, total: float | None = None, text: str = "", unit: str = "steps") -> None:
        self._sink.put(Progress(done, total, text, unit))

    def frames(self, done: int, total: int | None = None) -> None:
        """``flashvsr_q.infer`` callback shape: (frames done, total frames or None)."""
        self(done, total, "upscaling", "frames")


_DONE = object()


class Job:
    """``fn(report, cancel)`` running in a daemon thread.

    ``report`` is a :class:`Reporter`, ``cancel`` a ``threading.Event`` the library polls (it raises its own
    ``Cancelled`` error, a FlashVSRError, when set).
    """

    def __init__(self, fn: Callable[[Reporter, threading.Event], Any], name: str = "job") -> None:
        self.cancel_event = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=f"flashvsr-q-{name}", daemon=True)

    def _run(self, fn: Callable[[Reporter, threading.Event], Any]) -> None:
        try:
            self._result = fn(Reporter(self._queue), self.cancel_event)
        except BaseException as exc:  # noqa: BLE001 - handed to the page thread, which decides how to show it
            self._error = exc
        finally:
            self._queue.put(_DONE)

    def start(self) -> Job:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def updates(self, poll: float = 0.5) -> Iterator[Progress | None]:
        """Progress reports until the worker ends; ``None`` every ``poll`` s without one (a heartbeat)."""
        while True:
            try:
                item = self._queue.get(timeout=poll)
            except queue.Empty:
                yield None
                continue
            if item is _DONE:
                return
            # only the newest of a burst matters to a progress bar
            while True:
                try:
                    newer = self._queue.get_nowait()
                except queue.Empty:
                    break
                if newer is _DONE:
                    yield item
                    return
                item = newer
            yield item

    def result(self, timeout: float | None = None) -> Any:
        """The worker's return value; its exception re-raised. Waits for the worker to end."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the job is still running")
        if self._error is not None:
            raise self._error
        return self._result


class JobRegistry:
    """At most one running job per browser session, so that a session's Cancel button finds its job."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str, fn: Callable[[Reporter, threading.Event], Any], name: str = "job") -> Job:
        with self._lock:
            current = self._jobs.get(session)
            if current is not None and current.running:
                raise FlashVSRError("a job is already running in this window; wait for it or press Cancel")
            job = self._jobs[session] = Job(fn, name).start()
            return job

    def cancel(self, session: str) -> bool:
        """Ask the session's running job to stop; False when nothing is running."""
        with self._lock:
            job = self._jobs.get(session)
        if job is None or not job.running:
            return False
        job.cancel()
        return True


JOBS = JobRegistry()


def error_line(exc: BaseException) -> str:
    """What the page shows for a failure: the FlashVSRError's own first line, else the type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, FlashVSRError):
        return text or type(exc).__name__
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else f"unexpected {type(exc).__name__} (see the server log)"


def is_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a library's reaction to the cancel event (any error class named ``Cancelled``)."""
    return any(cls.__name__ == "Cancelled" for cls in type(exc).__mro__)


# ---------------------------------------------------------------------------------------------------------------
# choices shown in the widgets
# ---------------------------------------------------------------------------------------------------------------


def checkpoint_choices(extra_folders: list[Path] = ()) -> list[tuple[str, str]]:
    """(label, value) pairs: the default checkpoint, then every checkpoint folder under ``checkpoints/`` and
    ``extra_folders`` (e.g. the app's exports) that ``flashvsr_q.checkpoints.checkpoint_kind`` recognises."""
    choices = [(f"default ({default_checkpoint()})", DEFAULT_CHOICE)]
    seen = {default_checkpoint().resolve()}
    root = small_model_dir().parent
    candidates = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in [*candidates, *extra_folders]:
        folder = Path(folder)
        if folder.resolve() in seen:
            continue
        try:
            kind = checkpoint_kind(folder)
        except FlashVSRError:
            continue
        seen.add(folder.resolve())
        choices.append((f"{folder.name} ({kind}: {folder})", str(folder)))
    return choices


def resolve_checkpoint(value: str | None) -> str | None:
    """Dropdown value (a choice or a typed path) -> the path for ``load_checkpoint`` (None: the default)."""
    if value is None or not str(value).strip() or value == DEFAULT_CHOICE:
        return None
    return os.path.expanduser(str(value).strip())


def recipe_choices() -> list[tuple[str, str]]:
    """(label, value): "none (as stored)" then the shipped quantization recipes (``quant.recipes.shipped_recipes``),
    each labelled with the start of its description."""
    choices = [("none (as stored)", RECIPE_NONE)]
    for name, path in sorted(shipped_recipes().items()):
        description = load_recipe(path).description.strip()
        short = description if len(description) <= 60 else description[:57].rstrip() + "..."
        choices.append((f"{name}: {short}" if short else name, name))
    return choices


def resolve_recipe(value: str | None) -> str | None:
    """Dropdown value -> recipe name or path for ``load_recipe`` (None: use the checkpoint as stored)."""
    if value is None or not str(value).strip() or value == RECIPE_NONE:
        return None
    return str(value).strip()


def backend_choices(device: str) -> tuple[list[str], str]:
    """(names that can run on ``device``, preceded by ``auto``; a Markdown line listing the others and why)."""
    backends = available_backends(device)
    usable = ["auto"] + [name for name, reason in backends.items() if reason is None]
    others = [f"`{name}`: {reason}" for name, reason in backends.items() if reason is not None]
    return usable, ("Not available here: " + "; ".join(others)) if others else ""


def device_choices() -> list[str]:
    """``cuda`` (when present) and ``cpu``."""
    import torch

    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


def tile_arg(mode: str, size: int | float | None = None, overlap: int | float | None = None) -> str:
    """The ``--tile`` string for the tiling controls: ``auto``, ``off`` or ``SIZExOVERLAP`` (input pixels)."""
    mode = (mode or "auto").lower()
    if mode in ("auto", "off"):
        return mode
    if mode != "manual":
        raise FlashVSRError(f"tiling must be auto, off or manual, got {mode!r}")
    if not size or size <= 0 or overlap is None or overlap < 0:
        raise FlashVSRError("manual tiling needs a tile size > 0 and an overlap >= 0 (input pixels)")
    return f"{int(size)}x{int(overlap)}"


def vram_arg(text: str | None) -> int | None:
    """The VRAM budget box -> bytes (``8GB``, ``7.5GiB``); blank or ``auto`` -> None (free device memory)."""
    if text is None or not str(text).strip() or str(text).strip().lower() == "auto":
        return None

    try:
        return parse_bytes(str(text))
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None


def output_name(input_path: str | os.PathLike, scale: int = 4) -> str:
    """``clip.mov`` -> ``clip_x4.mp4``; ``photo.jpg`` -> ``photo_x4.png`` (videos as MP4, images as PNG)."""
    path = Path(input_path)
    ext = ".png" if path.suffix.lower() in IMAGE_EXTENSIONS else ".mp4"
    return f"{path.stem}_x{scale}{ext}"


def comparison_frames(input_path: str | os.PathLike, output_path: str | os.PathLike, index: int | None = None):
    """The same frame of input and output for the comparison slider: (input enlarged to the output size with
    nearest-neighbour so its pixels stay visible, output), both uint8 [H, W, 3]. ``index`` None: the middle frame."""
    import numpy as np
    from PIL import Image


    src, out = open_source(input_path), open_source(output_path)
    if index is None:
        index = min(src.num_frames, out.num_frames) // 2
    a = next(iter(src.frames(index))).rgb
    b = next(iter(out.frames(index))).rgb
    a = np.asarray(Image.fromarray(a).resize((b.shape[1], b.shape[0]), Image.NEAREST))
    return a, b


def describe_source(path: str | os.PathLike) -> str:
    """One line about an input: kind, size, frames, rate, audio."""
    src = open_source(path)
    parts = [src.kind.replace("_", " "), f"{src.width}x{src.height}"]
    if src.kind != "image":
        parts += [f"{src.num_frames} frames", f"{float(src.fps):.3g} fps"]
    if src.has_audio:
        parts.append("audio")
    return ", ".join(parts)
