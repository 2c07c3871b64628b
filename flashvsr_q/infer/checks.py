"""What is decided before the frames flow: device and dtype, and the pre-flight report of one job.

    from flashvsr_q.infer import resolve_device, resolve_dtype

    device = resolve_device(None)                  # cuda when available, else cpu (an absent cuda is an error)
    dtype = resolve_dtype(None, device)            # bf16 on CUDA, fp32 on CPU

:class:`Preflight` is what one job will run (geometry, model, tiling, estimated peak memory by term); the upscale
task prints it before it starts and ``flashvsr-q upscale --dry-run`` prints it instead of starting.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flashvsr_q.errors import BackendUnavailable, FlashVSRError
from flashvsr_q.infer.memory import MemoryPlan
from flashvsr_q.infer.tiling import Geometry
from flashvsr_q.model import FlashVSR
from flashvsr_q.video.sources import FrameSource

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    """The default ``log`` of the upscaler: one line on stderr, flushed."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# device and dtype
# ---------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; a requested device that is absent or unsupported is an error.

    Raises:
        BackendUnavailable: cuda asked for without a GPU (or with a CPU-only torch), or a device other than
            cpu / cuda[:N].
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists every device type it knows; ours says what works
        raise BackendUnavailable(f"device {device!r} is not supported; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("CUDA is not available here (no GPU or a CPU-only torch); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"device {device} is not supported; use cpu or cuda")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BackendUnavailable(f"device {device} does not exist: this machine has {torch.cuda.device_count()} "
                                 "CUDA device(s), cuda:0 ..")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> bf16 on CUDA, fp32 on CPU; ``"bf16"``, ``"fp16"``, ``"fp32"`` or a torch dtype as given."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise FlashVSRError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


# ---------------------------------------------------------------------------------------------------------------
# the pre-flight report
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preflight:
    """What one job will run, decided before any work: geometry, model, tiling and estimated peak memory.

    ``describe()`` is the report ``flashvsr-q upscale`` prints on stderr before it starts (and ``--dry-run``
    prints instead of starting); ``to_dict()`` is its JSON form.
    """

    source: FrameSource
    output: Path | None
    geometry: Geometry
    memory: MemoryPlan
    model: str
    dtype: str
    device: str
    backend: str
    pipeline: str = "tiny"

    @classmethod
    def of(cls, source: FrameSource, output: Path | None, geometry: Geometry, memory: MemoryPlan,
           model: FlashVSR) -> Preflight:
        """The report of running ``source`` through ``model`` with ``memory``'s tiling."""
        return cls(source, output, geometry, memory, model.config.name, str(model.dtype).removeprefix("torch."),
                   str(model.device), model.dit.backend.name, model.pipeline)

    def describe(self) -> str:
        s, g = self.source, self.geometry
        target = f"{self.output} " if self.output is not None else ""
        lines = [f"{s.path} ({s.kind}, {s.width}x{s.height}, {s.num_frames} frames, {float(s.fps):.3f} fps) -> "
                 f"{target}({g.out_width}x{g.out_height}; the model runs {g.padded_width}x{g.padded_height})",
                 f"model {self.model} {self.dtype} on {self.device}, attention {self.backend}, "
                 f"pipeline {self.pipeline}" + (" (Wan2.1 VAE decoder)" if self.pipeline == "full" else ""),
                 self.memory.describe()]
        if g.scale != 4:
            lines.append(f"note: FlashVSR is trained for x4; x{g.scale} only changes the bicubic target size")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        s, g, m = self.source, self.geometry, self.memory
        return {"input": str(s.path), "kind": s.kind, "input_size": [s.width, s.height], "frames": s.num_frames,
                "fps": float(s.fps), "output": None if self.output is None else str(self.output),
                "output_size": [g.out_width, g.out_height], "model_size": [g.padded_width, g.padded_height],
                "scale": g.scale, "model": self.model, "dtype": self.dtype, "device": self.device,
                "backend": self.backend, "pipeline": self.pipeline, "tiling": m.plan.describe(),
                "tiles": len(m.plan.tiles),
                "state_offload": m.offload, "canvas_on_device": m.canvas_on_device, "budget": m.budget,
                "estimate": m.estimate.to_dict()}


