"""The tiled streaming upscaler.

    from flashvsr_q.infer import run_job, upscale_frames
    for frame in upscale_frames(model, frames, scale=4, tile="off"):           # uint8 [H, W, 3] in and out
        ...
    summary = run_job(model, job, settings, tile="auto")                       # one file, segments and resume

It runs whatever ``nn.Module`` it is given (quantized or not) and knows nothing of checkpoints or recipes: files,
folders, loading and options are the upscale task's (``flashvsr_q.tasks.upscale``).

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
    from flashvsr_q.infer.checks import Preflight, resolve_device, resolve_dtype
    from flashvsr_q.infer.memory import MemoryEstimate, MemoryPlan, choose_plan, estimate, parse_bytes
    from flashvsr_q.infer.pipeline import Cancelled, UpscaleSettings, upscale_frames
    from flashvsr_q.infer.progress import Summary
    from flashvsr_q.infer.runner import Job, run_job
    from flashvsr_q.infer.tiling import Geometry, TilePlan, parse_tile, plan_tiles

_LAZY = {
    "checks": ("Preflight", "resolve_device", "resolve_dtype"),
    "memory": ("MemoryEstimate", "MemoryPlan", "choose_plan", "estimate", "parse_bytes"),
    "pipeline": ("Cancelled", "UpscaleSettings", "upscale_frames"),
    "progress": ("Summary",),
    "runner": ("Job", "run_job"),
    "tiling": ("Geometry", "TilePlan", "parse_tile", "plan_tiles"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [  # the same names as _LAZY (a test checks it), spelled out for linters and IDEs
    "Cancelled", "Geometry", "Job", "MemoryEstimate", "MemoryPlan", "Preflight", "Summary", "TilePlan",
    "UpscaleSettings", "choose_plan", "estimate", "parse_bytes", "parse_tile", "plan_tiles", "resolve_device",
    "resolve_dtype", "run_job", "upscale_frames",
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
