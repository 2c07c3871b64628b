"""The tiled streaming upscaler.

    from flashvsr_q.infer import preflight, upscale, upscale_frames
    summary = upscale("in.mp4", "out.mp4", tile="auto", vram="8GB")            # files and folders
    summary = upscale("in.mp4", "out.mp4", recipe="int8-weight-only")          # quantized while loading
    for report in preflight("in.mp4", "out.mp4", vram="8GB"):                  # the plan, without running it
        print(report.describe())
    for frame in upscale_frames(model, frames, scale=4, tile="off"):           # uint8 [H, W, 3] in and out
        ...

Modules: ``checks`` (device and dtype, inputs and outputs, model loading, the pre-flight report), ``pipeline``
(chunk loop, tiles, blending, colour fix), ``tiling`` (geometry, tile planner, weights), ``memory`` (peak device
memory estimate, budget planner), ``resume`` (manifest, stream-state snapshots), ``runner`` (files, folders,
batch, OOM fallback), ``progress`` (bar, summary), ``bench`` (speed/memory harness), ``video_io`` / ``segments``
(reading and writing footage).

The names below are imported on first use, so ``import flashvsr_q.video.sources`` (PyAV, numpy, PIL) does not
import torch or the model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flashvsr_q.infer.checks import Preflight, preflight, resolve_device, resolve_dtype
    from flashvsr_q.infer.memory import MemoryEstimate, MemoryPlan, choose_plan, estimate, parse_bytes
    from flashvsr_q.infer.pipeline import Cancelled, UpscaleSettings, upscale_frames
    from flashvsr_q.infer.progress import Summary
    from flashvsr_q.infer.runner import upscale
    from flashvsr_q.infer.tiling import Geometry, TilePlan, parse_tile, plan_tiles

_LAZY = {
    "checks": ("Preflight", "preflight", "resolve_device", "resolve_dtype"),
    "memory": ("MemoryEstimate", "MemoryPlan", "choose_plan", "estimate", "parse_bytes"),
    "pipeline": ("Cancelled", "UpscaleSettings", "upscale_frames"),
    "progress": ("Summary",),
    "runner": ("upscale",),
    "tiling": ("Geometry", "TilePlan", "parse_tile", "plan_tiles"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [  # the same names as _LAZY (a test checks it), spelled out for linters and IDEs
    "Cancelled", "Geometry", "MemoryEstimate", "MemoryPlan", "Preflight", "Summary", "TilePlan", "UpscaleSettings",
    "choose_plan", "estimate", "parse_bytes", "parse_tile", "plan_tiles", "preflight", "resolve_device",
    "resolve_dtype", "upscale", "upscale_frames",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
