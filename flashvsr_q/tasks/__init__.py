"""The use cases: one module each, holding one options dataclass and one function, composing the layers below.

The CLI, the GUI, batch workers and library users all call these. The modules load on first use (the lazy
submodule pattern of scientific Python, SPEC 1), so ``flashvsr-q --help`` does not pay for torch, Lightning or the
metric stack::

    from flashvsr_q import tasks
    tasks.upscale.upscale(tasks.upscale.UpscaleOptions("in.mp4", "out.mp4"))
"""

from __future__ import annotations

import importlib
from types import ModuleType

USE_CASES = ("batch", "bench", "calibrate", "degrade", "demo", "evaluate", "export", "fetch", "inspect", "qat",
             "quantize", "train", "upscale")
__all__ = list(USE_CASES)


def __getattr__(name: str) -> ModuleType:
    if name not in USE_CASES:
        raise AttributeError(f"module 'flashvsr_q.tasks' has no attribute {name!r}")
    return importlib.import_module(f"flashvsr_q.tasks.{name}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
