"""flashvsr-q: FlashVSR video super-resolution made practical on consumer GPUs.

The library API (``docs/api.md``)::

    import flashvsr_q as fq

    model = fq.load_checkpoint()                               # the shipped small model, or any checkpoint folder
    fq.upscale("in.mp4", "out.mp4", tile="auto", vram="8GB")   # file -> file (video, image, image folder)
    for frame in fq.upscale(frames, model=model):              # uint8 [H, W, 3] frames -> frames
        ...
    fq.quantize("int8/", recipe="int8-weight-only")            # a compressed checkpoint folder
    fq.quantize(model, recipe="int8-weight-only")              # or a loaded model, in place
    recipe = fq.load_recipe("w8a8-int8")
    model = fq.FlashVSR(fq.get_config("test"))                 # a random-weight model of a preset

Each of these is one use case in ``flashvsr_q.tasks`` (the CLI and the GUI call the same ones); the layers under
them (``model``, ``attention``, ``quant``, ``infer``, ``video``, ``eval``, ``train``) are described in
``docs/architecture.md``. Names load on first use (``upscale`` and ``quantize`` live in ``flashvsr_q.api``), so
``import flashvsr_q`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flashvsr_q import tasks
from flashvsr_q.errors import BackendUnavailable, CheckpointError, FlashVSRError
from flashvsr_q.logs import quiet_known_noise

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from flashvsr_q.api import quantize, upscale
    from flashvsr_q.checkpoints import load_checkpoint
    from flashvsr_q.model import FlashVSR, FlashVSRConfig, get_config
    from flashvsr_q.quant import Recipe, RecipeError, load_recipe

__version__ = "0.1.0"

quiet_known_noise()  # before any submodule imports torchao or bitsandbytes

_LAZY = {
    "FlashVSR": "flashvsr_q.model",
    "FlashVSRConfig": "flashvsr_q.model",
    "get_config": "flashvsr_q.model",
    "load_checkpoint": "flashvsr_q.checkpoints",
    "load_recipe": "flashvsr_q.quant",
    "Recipe": "flashvsr_q.quant",
    "RecipeError": "flashvsr_q.quant",
    "quantize": "flashvsr_q.api",
    "upscale": "flashvsr_q.api",
}

__all__ = ["BackendUnavailable", "CheckpointError", "FlashVSR", "FlashVSRConfig", "FlashVSRError", "Recipe",
           "RecipeError", "__version__", "get_config", "load_checkpoint", "load_recipe", "quantize", "tasks",
           "upscale"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flashvsr_q' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
