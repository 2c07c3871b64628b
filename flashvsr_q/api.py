"""The functions of the public API that are more than a re-export: ``upscale`` and ``quantize``.

``import flashvsr_q as fq`` exposes them as ``fq.upscale`` and ``fq.quantize`` (see ``flashvsr_q/__init__.py``);
each is a thin front over the use cases in ``flashvsr_q.tasks`` that also accepts objects in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch.nn as nn

from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer import Summary, parse_bytes, resolve_dtype, upscale_frames
from flashvsr_q.infer.checks import log_stderr
from flashvsr_q.model import FlashVSR
from flashvsr_q.quant import CalibrationStats, Recipe, load_recipe, quantize_model, resolve_plan
from flashvsr_q.tasks import quantize as quantize_task
from flashvsr_q.tasks import upscale as upscale_task

__all__ = ["quantize", "upscale"]


def upscale(input: str | os.PathLike | Iterable[np.ndarray], output: str | os.PathLike | None = None, *,
            model: FlashVSR | None = None, progress: Callable[[int, int], None] | None = None, cancel=None,
            log: Callable[[str], None] | None = None, **options: Any) -> Summary | list[Summary] | None | Iterator:
    """Upscale a file or folder into ``output``, or a sequence of frames in memory.

    File -> file: ``input`` and ``output`` are paths (video, image, image folder, folder of videos); ``options`` are
    the fields of :class:`flashvsr_q.tasks.upscale.UpscaleOptions` (the ``flashvsr-q upscale`` flags: ``checkpoint``,
    ``recipe``, ``tile``, ``vram``, ``attention``, ``dtype``, ``device``, ``resume``, ...). Returns the summary
    (a list for a folder of videos; None when ``resume`` finds the output already complete).

    Frames -> frames: ``input`` is any iterable of uint8 ``[H, W, 3]`` RGB frames and ``output`` is None; yields
    one uint8 ``[sH, sW, 3]`` frame per input frame, streaming. ``model`` (default: :func:`load_checkpoint` of the
    default checkpoint in fp32 on the CPU) runs with ``options`` ``scale``, ``tile``, ``vram``, ``color_fix``,
    ``seed``, ``attention`` and ``pipeline``.

    ``pipeline="full"`` decodes with the Wan2.1 VAE (``Wan2.1_VAE.pth`` in the checkpoint folder) instead of the
    TCDecoder; a ``model`` passed in runs its own pipeline (``load_checkpoint(..., pipeline="full")``).

    Example:
        >>> import numpy as np, flashvsr_q as fq
        >>> frames = [np.zeros((16, 16, 3), np.uint8)] * 9
        >>> [f.shape for f in fq.upscale(frames, tile="off")][:1]
        [(64, 64, 3)]

    Raises:
        FlashVSRError: bad options, inputs, outputs, checkpoint, recipe or device, before any frame is decoded.
    """
    say = log if log is not None else (lambda message: None)
    if isinstance(input, (str, os.PathLike)):
        if output is None:
            raise FlashVSRError("upscaling a file needs an output path")
        task = upscale_task.UpscaleOptions(input, output, **options)
        return upscale_task.upscale(task, model, progress=progress, cancel=cancel,
                                    log=log if log is not None else log_stderr)
    if output is not None:
        raise FlashVSRError("frames in memory are returned, not written: leave output out, or pass a file path")
    return _upscale_frames(input, model, progress, cancel, say, **options)


def _upscale_frames(frames: Iterable[np.ndarray], model: FlashVSR | None, progress, cancel,
                    log: Callable[[str], None], attention: str = "auto", scale: int = 4, tile: str = "auto",
                    vram: int | str | None = None, color_fix: str = "adain", seed: int = 0,
                    pipeline: str | None = None) -> Iterator[np.ndarray]:
    if model is None:
        model = load_checkpoint(dtype=resolve_dtype("fp32", "cpu"), pipeline=pipeline or "tiny")
    elif pipeline is not None and pipeline != model.pipeline:
        raise FlashVSRError(f"the model passed in runs the {model.pipeline} pipeline, not {pipeline}; load it with "
                            f"load_checkpoint(..., pipeline={pipeline!r})")
    backend = model.set_attention(attention, model.device)
    log(f"attention {attention!r}: {backend.name} on {model.device}")
    budget = parse_bytes(vram) if isinstance(vram, str) else vram
    yield from upscale_frames(model, frames, scale=scale, tile=tile, vram=budget, color_fix=color_fix,
                                    seed=seed, progress=progress, cancel=cancel)


def quantize(target: str | os.PathLike | nn.Module, recipe: str | os.PathLike | Recipe | None = None,
             **options: Any) -> quantize_task.QuantizeResult | nn.Module | None:
    """Quantize a checkpoint into a compressed folder, or a loaded model in place.

    Folder: ``target`` is the output folder and ``options`` are the fields of
    :class:`flashvsr_q.tasks.quantize.QuantizeOptions` (``checkpoint``, ``calibration``, ``device``, ``dtype``,
    ``overwrite``, ...); returns what was written (None for ``dry_run``). Model: ``target`` is a loaded FlashVSR (or
    any module with the recipe's layers); it is quantized in place by ``recipe`` on its own device and returned
    (``calibration`` may be given for static and SmoothQuant recipes).

    Example:
        >>> import flashvsr_q as fq
        >>> model = fq.quantize(fq.load_checkpoint(), "int8-weight-only")
        >>> type(model.dit.blocks[0].self_attn.q.weight).__name__   # a torchao quantized tensor, not a Parameter
        '...Tensor'
    """
    if isinstance(target, (str, os.PathLike)):
        return quantize_task.quantize(quantize_task.QuantizeOptions(target, recipe=recipe, **options))
    calibration = options.pop("calibration", None)
    if options:
        raise FlashVSRError(f"quantizing a loaded model takes recipe and calibration only, not {sorted(options)}")
    if recipe is None:
        raise FlashVSRError("quantizing a loaded model needs a recipe")
    plan = resolve_plan(recipe if isinstance(recipe, Recipe) else load_recipe(recipe), target,
                        next(target.parameters()).device)
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = CalibrationStats.load(calibration)
    return quantize_model(target, plan, calibration)
