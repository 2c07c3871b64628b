"""The tiled streaming upscaler.

    from flashvsr_q.infer import upscale, upscale_frames
    summary = upscale("in.mp4", "out.mp4", tile="auto", vram="8GB")            # files and folders
    for frame in upscale_frames(model, frames, scale=4, tile="off"):           # uint8 [H, W, 3] in and out
        ...

Modules: ``pipeline`` (chunk loop, tiles, blending, colour fix), ``tiling`` (geometry, tile planner, weights),
``memory`` (peak device memory estimate, budget planner), ``resume`` (manifest, stream-state snapshots),
``runner`` (files, folders, batch, OOM fallback), ``progress`` (bar, summary), ``bench`` (speed/memory harness),
``video_io`` / ``segments`` (reading and writing footage).
"""

from flashvsr_q.infer.memory import MemoryEstimate, MemoryPlan, choose_plan, estimate, parse_bytes
from flashvsr_q.infer.pipeline import Cancelled, UpscaleSettings, upscale_frames
from flashvsr_q.infer.progress import Summary
from flashvsr_q.infer.runner import upscale
from flashvsr_q.infer.tiling import Geometry, TilePlan, parse_tile, plan_tiles

__all__ = [
    "Cancelled", "Geometry", "MemoryEstimate", "MemoryPlan", "Summary", "TilePlan", "UpscaleSettings",
    "choose_plan", "estimate", "parse_bytes", "parse_tile", "plan_tiles", "upscale", "upscale_frames",
]
