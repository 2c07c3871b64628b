"""The end-of-run summary: frames, time, fps, peak memory, what was used."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

import torch

from flashvsr_q.infer.memory import format_bytes


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes."""
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib if sys.platform == "darwin" else kib * 1024
    except ImportError:  # Windows
        import psutil

        info = psutil.Process(os.getpid()).memory_info()
        return int(getattr(info, "peak_wset", info.rss))


@dataclass
class Summary:
    """What one upscale did. ``to_dict`` is what ``--json`` prints."""

    input: str
    output: str
    kind: str
    frames: int
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    fps_in: float
    seconds: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "sparse"
    tiling: str = "off"
    state_offload: bool = False
    estimated_peak: int = 0
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    peak_rss: int = 0
    model: str = ""
    pipeline: str = "tiny"
    scale: int = 4
    color_fix: str = "adain"
    resumed_from_frame: int = 0
    oom_retries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. a truncated input)

    @property
    def fps(self) -> float:
        done = self.frames - self.resumed_from_frame
        return done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": round(self.fps, 4), "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        dev = ""
        if self.peak_allocated is not None:
            dev = (f", peak device memory {format_bytes(self.peak_allocated)} allocated / "
                   f"{format_bytes(self.peak_reserved)} reserved (estimated {format_bytes(self.estimated_peak)})")
        resumed = f" (resumed at frame {self.resumed_from_frame})" if self.resumed_from_frame else ""
        retries = "".join(f"\n  out of memory: {r}" for r in self.oom_retries)
        retries += "".join(f"\n  note: {n}" for n in self.notes)
        return (f"{self.output}: {self.frames} frames {self.input_size[0]}x{self.input_size[1]} -> "
                f"{self.output_size[0]}x{self.output_size[1]} in {self.seconds:.1f} s ({self.fps:.2f} fps){resumed}\n"
                f"  model {self.model} {self.dtype} on {self.device}, attention {self.backend}, pipeline "
                f"{self.pipeline}, tiling {self.tiling}"
                f"{', states offloaded' if self.state_offload else ''}\n"
                f"  peak RSS {format_bytes(self.peak_rss)}{dev}{retries}")


def summaries_json(summaries: list[Summary]) -> str:
    data = [s.to_dict() for s in summaries]
    return json.dumps(data[0] if len(data) == 1 else data, indent=1)


def reset_device_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
