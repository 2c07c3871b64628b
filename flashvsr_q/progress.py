"""Progress of long work on stderr: a live bar with ETA on a terminal, plain lines when piped, nothing when quiet.

    bar = ProgressBar("calibrate", total=24, unit="clips")
    for i, clip in enumerate(clips):
        ...
        bar.update(i + 1)
    bar.close()

On a terminal it is a rich bar (done/total, rate, elapsed, ETA). Piped into a file or a log it prints one plain line
now and then (every 10 % or 30 s, and at the end), since a redrawn bar would fill the log with control codes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 30.0
PLAIN_EVERY_FRACTION = 0.1


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """Progress of ``total`` units (None: unknown) on ``stream`` (stderr); a no-op when ``enabled`` is False."""

    def __init__(self, description: str, total: int | None, enabled: bool = True, unit: str = "frames",
                 stream: TextIO | None = None):
        self.description, self.total, self.unit = description, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.start, self.done, self.since = enabled, time.perf_counter(), 0, 0
        self._live = None
        self._printed_at, self._printed_fraction = self.start, 0.0
        if enabled and self.stream.isatty():
            self._live = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False)
            self._task = self._live.add_task(description, total=total, rate="")
            self._live.start()

    def rate(self) -> str:
        elapsed = time.perf_counter() - self.start
        done = self.done - self.since
        return f"{done / elapsed:.2f} {self.unit}/s" if elapsed > 0 and done > 0 else ""

    def eta(self) -> float | None:
        elapsed, done = time.perf_counter() - self.start, self.done - self.since
        if not self.total or done <= 0:
            return None
        return elapsed / done * (self.total - self.done)

    def update(self, done: int, total: int | None = None, since: int | None = None) -> None:
        """``done`` units so far (of ``total``, if it changed); ``since``: units done before this run (a resume),
        left out of the rate and the ETA."""
        if not self.enabled:
            return
        self.done = done
        self.total = total if total is not None else self.total
        if since is not None:
            self.since = since
        if self._live is not None:
            self._live.update(self._task, completed=done, total=self.total, rate=self.rate())
            return
        now = time.perf_counter()
        fraction = done / self.total if self.total else 0.0
        if now - self._printed_at >= PLAIN_EVERY_S or fraction - self._printed_fraction >= PLAIN_EVERY_FRACTION:
            self._print_line()
            self._printed_at, self._printed_fraction = now, fraction

    def _print_line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = self.eta()
        parts = [f"{self.description}: {self.done}{of} {self.unit}{percent}", self.rate(),
                 f"elapsed {_clock(time.perf_counter() - self.start)}",
                 f"ETA {_clock(eta)}" if eta is not None and self.done < (self.total or 0) else ""]
        print(", ".join(p for p in parts if p), file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the bar (a plain line with the final count when piped)."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self.enabled and self.done:
            self._print_line()
        self.enabled = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
