"""Evaluation configurations: what one column of the comparison runs (checkpoint, recipe, tiling, attention, dtype).

    parse_config("int8:recipe=int8-weight-only,tile=64x32")      # -> EvalConfig("int8", recipe=..., tile=...)
    sweep(recipes=[None, "int8-weight-only"], attentions=["sparse", "dense"], mode="each")

Syntax of ``parse_config``: ``NAME:key=value,key=value`` with keys :data:`CONFIG_KEYS`; ``bicubic`` alone is the
bicubic baseline (no model). :func:`sweep` builds configurations from lists of values per axis, either the full
cross product or one axis at a time around a baseline (an ablation, as in the FlashVSR paper's tables).

Validation happens in two steps. :class:`EvalConfig` checks its own syntax (dtype, tile, colour fix);
:func:`check_config` checks what can be checked without loading a model (recipe file, attention name, checkpoint
folder) and raises for mistakes. What remains can only fail where it runs (a GPU-only scheme or backend on CPU, a
recipe that needs calibration statistics); :func:`~flashvsr_q.eval.runner.evaluate` reports those as skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from flashvsr_q.attention.registry import backend_names
from flashvsr_q.checkpoints import checkpoint_kind, load_checkpoint, resolve_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.checks import resolve_device, resolve_dtype
from flashvsr_q.infer.tiling import parse_tile
from flashvsr_q.quant import load_recipe
from flashvsr_q.quant.recipes import shipped_recipes

CONFIG_KEYS = ("checkpoint", "recipe", "tile", "attention", "dtype", "color_fix", "calibration", "pipeline", "kind")
DTYPES = ("fp32", "bf16", "fp16")
COLOR_FIXES = ("adain", "wavelet", "none")
PIPELINES = ("tiny", "full")
SWEEP_MODES = ("product", "each")
NO_RECIPE = ("", "none", "float")  # recipe values meaning "the model as stored"


@dataclass(frozen=True)
class EvalConfig:
    """One configuration of the comparison (a column of the thesis-style table, a row of the report's table).

    Attributes:
        name: the configuration's name in the report (no ``:``).
        kind: ``model`` (run FlashVSR) or ``bicubic`` (the LR upsampled with bicubic, no model).
        checkpoint: a checkpoint folder (None: the default, ``$FLASHVSR_Q_CHECKPOINT`` or the shipped small model).
        recipe: a shipped recipe name or a YAML path, applied on the fly (None: the model as stored).
        tile: ``off`` | ``auto`` | ``SIZExOVERLAP`` (LR pixels, see ``infer.parse_tile``).
        attention: an attention backend name (``flashvsr_q.attention``) or ``auto``.
        dtype: ``fp32`` | ``bf16`` | ``fp16`` (None: bf16 on CUDA, fp32 on CPU).
        color_fix: ``adain`` | ``wavelet`` | ``none``.
        calibration: calibration statistics (``flashvsr-q calibrate``) for recipes that need them.
        pipeline: ``tiny`` (TCDecoder) or ``full`` (the Wan2.1 VAE decoder from the checkpoint folder).
    """

    name: str
    kind: str = "model"
    checkpoint: str | None = None
    recipe: str | None = None
    tile: str = "off"
    attention: str = "sparse"
    dtype: str | None = None
    color_fix: str = "adain"
    calibration: str | None = None
    pipeline: str = "tiny"

    def __post_init__(self) -> None:

        if not self.name or ":" in self.name or self.name != self.name.strip():
            raise FlashVSRError(f"configuration name {self.name!r} must be non-empty, hold no ':' and no outer spaces")
        if self.kind not in ("model", "bicubic"):
            raise FlashVSRError(f"configuration {self.name!r}: kind must be 'model' or 'bicubic', got {self.kind!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise FlashVSRError(f"configuration {self.name!r}: dtype must be one of {', '.join(DTYPES)}, "
                                f"got {self.dtype!r}")
        if self.color_fix not in COLOR_FIXES:
            raise FlashVSRError(f"configuration {self.name!r}: color_fix must be one of {', '.join(COLOR_FIXES)}, "
                                f"got {self.color_fix!r}")
        if self.pipeline not in PIPELINES:
            raise FlashVSRError(f"configuration {self.name!r}: pipeline must be one of {', '.join(PIPELINES)}, "
                                f"got {self.pipeline!r}")
        try:
            parse_tile(self.tile)
        except ValueError as exc:
            raise FlashVSRError(f"configuration {self.name!r}: {exc}") from None

    def describe(self) -> str:
        """One line: what this configuration runs (the settings that are not defaults)."""
        if self.kind == "bicubic":
            return "bicubic upsampling of the LR input (no model)"
        parts = [f"checkpoint {self.checkpoint or 'default'}", f"recipe {self.recipe or 'none (float)'}"]
        parts += [f"tile {self.tile}", f"attention {self.attention}"]
        parts += [f"dtype {self.dtype}"] if self.dtype else []
        parts += [f"color_fix {self.color_fix}"] if self.color_fix != "adain" else []
        parts += [f"calibration {self.calibration}"] if self.calibration else []
        parts += [f"pipeline {self.pipeline}"] if self.pipeline != "tiny" else []
        return ", ".join(parts)

    def as_dict(self) -> dict[str, str | None]:
        """All fields by name (for JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


BICUBIC = EvalConfig("bicubic", kind="bicubic")


def parse_config(text: str) -> EvalConfig:
    """``NAME:key=value,...`` (or ``bicubic``) -> :class:`EvalConfig`.

    ``recipe=none`` (or ``float``) and ``checkpoint=none`` mean the defaults.

    Raises:
        FlashVSRError: one line, for an unknown key, a missing ``=``, a repeated key or an invalid value.
    """
    name, _, rest = text.partition(":")
    name = name.strip()
    if name == "bicubic" and not rest.strip():
        return BICUBIC
    values: dict[str, str | None] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not eq or key not in CONFIG_KEYS:
            raise FlashVSRError(f"--config {text!r}: expected NAME:key=value,... with keys {', '.join(CONFIG_KEYS)}")
        if key in values:
            raise FlashVSRError(f"--config {text!r}: {key} is given twice")
        values[key] = None if key in ("recipe", "checkpoint", "calibration", "dtype") and value.lower() in NO_RECIPE \
            else value
    return EvalConfig(name, **values)


def _label(value: str | None) -> str:
    return Path(value).stem if value and value.endswith((".yaml", ".yml")) else Path(value).name if value else ""


def sweep(checkpoints: Sequence[str | None] = (None,), recipes: Sequence[str | None] = (None,),
          tiles: Sequence[str] = ("off",), attentions: Sequence[str] = ("sparse",),
          dtypes: Sequence[str | None] = (None,), *, mode: str = "product", bicubic: bool = True,
          color_fix: str = "adain", calibration: str | None = None, pipeline: str = "tiny") -> list[EvalConfig]:
    """Configurations from lists of values per axis (checkpoint, recipe, tile, attention, dtype).

    Args:
        mode: ``product``: every combination; ``each``: the baseline (the first value of every axis), then each
            other value of one axis at a time with the others at the baseline (an ablation).
        bicubic: put the :data:`BICUBIC` baseline first.

    Names say what differs: the recipe's name (``float`` without one, or the dtype when one is given), then
    ``tile=...`` / ``attn=...`` / the checkpoint folder's name where those axes vary or are not the defaults.
    """
    if mode not in SWEEP_MODES:
        raise FlashVSRError(f"sweep mode must be one of {', '.join(SWEEP_MODES)}, got {mode!r}")
    axes = [list(dict.fromkeys(values)) or [default] for values, default in
            ((checkpoints, None), (recipes, None), (tiles, "off"), (attentions, "sparse"), (dtypes, None))]
    if mode == "product":
        combos = list(itertools.product(*axes))
    else:
        base = tuple(axis[0] for axis in axes)
        combos = [base] + [base[:i] + (value,) + base[i + 1:] for i, axis in enumerate(axes) for value in axis[1:]]
    configs = [BICUBIC] if bicubic else []
    names: set[str] = {c.name for c in configs}
    for ckpt, recipe, tile, attn, dtype in combos:
        parts = [_label(recipe) or dtype or "float"]
        if recipe and dtype:
            parts.append(dtype)
        if tile != "off":
            parts.append(f"tile={tile}")
        if attn != "sparse" or len(axes[3]) > 1 and attn != axes[3][0]:
            parts.append(f"attn={attn}")
        if len(axes[0]) > 1 or ckpt is not None:
            parts.insert(0, _label(ckpt) or "default")
        name = " ".join(parts)
        unique, n = name, 2
        while unique in names:
            unique, n = f"{name} ({n})", n + 1
        names.add(unique)
        configs.append(EvalConfig(unique, checkpoint=ckpt, recipe=recipe, tile=tile, attention=attn, dtype=dtype,
                                  color_fix=color_fix, calibration=calibration, pipeline=pipeline))
    return configs


def cross_product(checkpoints: Sequence[str | None] = (None,), recipes: Sequence[str | None] = (None,),
                  tiles: Sequence[str] = ("off",), attentions: Sequence[str] = ("sparse",),
                  dtype: str | None = None, bicubic: bool = True, **common: str | None) -> list[EvalConfig]:
    """Every checkpoint x recipe x tile x attention (plus ``bicubic`` first): :func:`sweep` in ``product`` mode."""
    return sweep(checkpoints, recipes, tiles, attentions, (dtype,), mode="product", bicubic=bicubic, **common)


def expand_all(values: Sequence[str], axis: str) -> list[str | None]:
    """Comma lists from the CLI: ``all`` -> every registered attention backend / shipped quantization recipe;
    ``none`` / ``float`` as a recipe -> None (the model as stored)."""
    out: list[str | None] = []
    for value in values:
        if value == "all" and axis == "attention":

            out += backend_names()
        elif value == "all" and axis == "recipe":

            out += list(shipped_recipes())
        elif axis == "recipe" and value.lower() in NO_RECIPE:
            out.append(None)
        else:
            out.append(value)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------------------------
# checking and loading
# ---------------------------------------------------------------------------------------------------------------


def check_config(config: EvalConfig) -> None:
    """What can be checked without a model: the checkpoint folder, the recipe file, the attention name, the
    calibration file. Whether it can run *here* (device, kernels, statistics) is found out when it loads.

    Raises:
        FlashVSRError: a mistake in the configuration (one line).
    """
    if config.kind == "bicubic":
        return

    where = f"configuration {config.name!r}"
    try:
        checkpoint_kind(resolve_checkpoint(config.checkpoint, full=config.pipeline == "full"))
        if config.recipe is not None:

            load_recipe(config.recipe)
    except FlashVSRError as exc:
        raise FlashVSRError(f"{where}: {exc}") from None
    if config.attention != "auto" and config.attention not in backend_names():
        raise FlashVSRError(f"{where}: unknown attention backend {config.attention!r}; choose from auto, "
                            f"{', '.join(backend_names())}")
    if config.calibration is not None and not Path(config.calibration).is_file():
        raise FlashVSRError(f"{where}: calibration statistics {config.calibration} do not exist")


def load_config_model(config: EvalConfig, device: str | torch.device | None = None) -> torch.nn.Module:
    """The model of a configuration: checkpoint (and its Wan VAE for the Full pipeline), recipe applied on the fly
    (``load_checkpoint``), attention backend set.

    Raises:
        FlashVSRError (incl. BackendUnavailable, RecipeError): the configuration cannot run here.
    """

    dev = resolve_device(device)
    dtype = resolve_dtype(config.dtype, dev) if config.dtype is not None else None  # None: its own
    model = load_checkpoint(config.checkpoint, dtype=dtype, device=dev, recipe=config.recipe,
                            calibration=config.calibration, pipeline=config.pipeline).eval()
    model.set_attention(config.attention, dev)
    return model


def checkpoint_fingerprint(path: str | os.PathLike | None, limit: int = 256 << 20) -> str:
    """``folder (sha256 abcdef012345)`` over the folder's files, or ``(not hashed: N MB)`` above ``limit`` bytes,
    so a report says which weights it measured."""

    folder = resolve_checkpoint(path)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if folder.resolve().is_relative_to(Path.cwd()):
        folder = folder.resolve().relative_to(Path.cwd())
    total = sum(p.stat().st_size for p in files)
    if total > limit:
        return f"{folder} (not hashed: {total / 1e6:.0f} MB)"
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return f"{folder} (sha256 {digest.hexdigest()[:12]})"


__all__ = ["BICUBIC", "CONFIG_KEYS", "EvalConfig", "check_config", "checkpoint_fingerprint", "cross_product",
           "expand_all", "load_config_model", "parse_config", "sweep"]
