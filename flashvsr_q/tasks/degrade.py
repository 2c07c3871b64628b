"""The degrade use case: LR footage from HR (MATLAB bicubic, or the seeded RealBasicVSR degradation).

    from flashvsr_q.tasks.degrade import DegradeOptions, degrade

    result = degrade(DegradeOptions("hr.mp4", "lr.mp4", preset="realbasicvsr", seed=0))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flashvsr_q.eval.degrade import DegradeResult, degrade_video


@dataclass
class DegradeOptions:
    """What ``flashvsr-q degrade`` takes: HR in, LR out (a video file by extension, else a folder of PNGs)."""

    hr: str | Path
    output: str | Path
    preset: str = "bicubic"
    seed: int = 0
    scale: int = 4
    overwrite: bool = False
    lossless: bool = False


def degrade(options: DegradeOptions) -> DegradeResult:
    """Write the LR footage, streaming frame by frame; returns sizes, frame count, preset and seed."""
    return degrade_video(options.hr, options.output, preset=options.preset, seed=options.seed, scale=options.scale,
                         overwrite=options.overwrite, lossless=options.lossless)


def describe(result: DegradeResult) -> str:
    """The line ``flashvsr-q degrade`` prints."""
    (hr_w, hr_h), (lr_w, lr_h) = result.hr_size, result.lr_size
    seed = f", seed {result.seed}" if result.preset == "realbasicvsr" else ""
    return (f"{result.frames} frames {hr_w}x{hr_h} -> {lr_w}x{lr_h} ({result.preset}{seed}) written to {result.path}: "
            f"{result.written}")
