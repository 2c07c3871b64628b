"""The one verb: apply a :class:`QuantPlan` to a model, layer by layer.

``quantize_model`` works on a model already in memory (tests, QAT export). ``quantize_official`` builds the model
on ``meta`` and fills it one layer at a time from the official files (the fp32 DiT safetensors is memory-mapped),
quantizing each planned layer as soon as it is loaded: peak RAM is the quantized model plus one float layer,
never a float copy of the whole DiT.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from flashvsr_q.errors import CheckpointError
from flashvsr_q.model import FlashVSR, infer_config
from flashvsr_q.model.loading import OFFICIAL_FILES
from flashvsr_q.quant.calibration import observer_absmax
from flashvsr_q.quant.recipes import QuantPlan, Recipe, RecipeError, model_layers, resolve_plan
from flashvsr_q.quant.stats import CalibrationStats, LayerCalibration
from flashvsr_q.quant.weight_only import is_weight_only

Progress = Callable[[str, int, int], None]  # (layer fqn, index, total)


def _libc_malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere.

    Quantizing layer by layer interleaves short-lived float copies with long-lived quantized tensors; glibc keeps
    the freed float blocks inside its heap (its mmap threshold grows to 32 MB), which doubled the heap of the
    official-size run. Trimming after each layer returns those pages to the OS.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0) and None


_release_freed_memory = _libc_malloc_trim()


# ---------------------------------------------------------------------------------------------------------------
# checks that run before any weight changes
# ---------------------------------------------------------------------------------------------------------------


def layer_calibration(plan: QuantPlan, calibration: CalibrationStats | None) -> dict[str, LayerCalibration]:
    """The statistics each planned layer will receive; raises RecipeError if the recipe needs what is missing.

    Smoothing factors are passed only when the recipe declares ``smoothquant:``; when the file records the alpha
    of each layer (``meta["alpha_per_layer"]``), it must be the recipe's (``smoothquant.alpha`` or the first
    matching ``smoothquant.overrides`` pattern), since the manifest records the recipe. The per-channel input abs-max
    handed on is clipped to the range the calibration's observer chose (:func:`~flashvsr_q.quant.calibration.
    observer_absmax`: of ``x / s`` when smoothing is applied, of ``x`` otherwise), so a static scheme's
    ``static_scale()`` is the percentile / MSE / min-max range of the statistics file, not always the max.
    Other schemes get nothing (dynamic or weight-only quantization needs no data).
    """
    recipe = plan.recipe
    if calibration is None:
        if recipe.needs_calibration:
            raise RecipeError(f"recipe {recipe.name} needs calibration statistics: run `flashvsr-q calibrate` "
                              f"and pass the result with --calibration (calibration=CalibrationStats)")
        return {}
    out, missing, bad, other_alpha = {}, [], [], []
    recorded_alpha = calibration.meta.get("alpha_per_layer") or {}
    for fqn, layer in plan.quantized.items():
        scheme = layer.scheme
        wants_smoothing = recipe.smoothquant is not None and scheme.supports_smoothing
        if not (scheme.needs_calibration or wants_smoothing):
            continue
        stats = calibration.layers.get(fqn)
        if stats is None or (wants_smoothing and stats.smoothing is None):
            missing.append(fqn)
            continue
        in_features = layer.shape[1]
        shapes_ok = stats.input_absmax.ndim == 0 or stats.input_absmax.shape == (in_features,)
        if wants_smoothing:
            shapes_ok = shapes_ok and stats.smoothing.shape == (in_features,) and stats.input_absmax.ndim == 1
        if not shapes_ok:
            bad.append(f"{fqn} (in_features {in_features})")
            continue
        wanted = recipe.smoothquant_alpha(fqn)
        if wants_smoothing and fqn in recorded_alpha and abs(float(recorded_alpha[fqn]) - wanted) > 1e-9:
            other_alpha.append(f"{fqn} (statistics {float(recorded_alpha[fqn]):g}, recipe {wanted:g})")
            continue
        out[fqn] = LayerCalibration(observer_absmax(calibration, fqn, wants_smoothing),
                                    stats.smoothing if wants_smoothing else None, stats.num_samples)
    what = "activation statistics" + (" with smoothing factors" if recipe.smoothquant is not None else "")
    for label, items in (("missing", missing), ("of the wrong shape", bad),
                         ("computed with another SmoothQuant alpha (calibrate with --recipe)", other_alpha)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            fix = (f"; make them with `flashvsr-q calibrate --recipe {recipe.name} --footage ... -o STATS` (the recipe "
                   "tells calibrate which layers to smooth and with which alpha)" if label != "of the wrong shape"
                   else "; the statistics are of another model: calibrate this one")
            raise RecipeError(f"recipe {recipe.name}: {what} {label} for {len(items)} layer(s): "
                              f"{', '.join(items[:3])}{more}{fix}")
    return out


def _check_plan_fits(model: nn.Module, plan: QuantPlan) -> None:
    layers = model_layers(model)
    absent = [fqn for fqn in plan.layers if fqn not in layers]
    if absent or len(layers) != len(plan.layers):
        extra = [fqn for fqn in layers if fqn not in plan.layers]
        raise RecipeError(f"the plan does not fit this model (plan-only: {absent[:3]}, model-only: {extra[:3]}); "
                          f"resolve the recipe against this model")
    for fqn, layer in plan.quantized.items():
        module = model.get_submodule(fqn)
        float_layer = type(module) is nn.Linear or (isinstance(module, nn.modules.conv._ConvNd)
                                                      and not is_weight_only(module))
        if not float_layer or type(module.weight.data) is not torch.Tensor:
            raise RecipeError(f"{fqn} is already quantized ({type(module).__name__}, "
                              f"{type(module.weight.data).__name__}); quantize a float model")
        if layer.scheme.device_bound and module.weight.device.type != torch.device(plan.device).type:
            raise RecipeError(f"{layer.scheme.name} packs weights for the device that runs them: quantize {fqn} "
                              f"on {plan.device}, not {module.weight.device.type}")


def _swap(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


# ---------------------------------------------------------------------------------------------------------------
# in memory
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def quantize_model(model: nn.Module, plan: QuantPlan, calibration: CalibrationStats | None = None,
                   progress: Progress | None = None) -> nn.Module:
    """Quantize exactly the planned layers of ``model`` in place (kept layers are not touched); returns it.

    Raises:
        RecipeError: missing calibration, a plan resolved for another model, an already-quantized layer.
    """
    per_layer = layer_calibration(plan, calibration)
    _check_plan_fits(model, plan)
    total = len(plan.quantized)
    for i, (fqn, layer) in enumerate(plan.quantized.items()):
        new = layer.scheme.quantize(model.get_submodule(fqn), per_layer.get(fqn))
        _swap(model, fqn, new)
        _release_freed_memory()
        if progress:
            progress(fqn, i, total)
    return model


# ---------------------------------------------------------------------------------------------------------------
# streamed from the official files
# ---------------------------------------------------------------------------------------------------------------


def _official_tensors(directory: Path) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """(part, {key: tensor}) for each official file; the DiT lazily (memory-mapped, read tensor by tensor)."""
    for part, name in OFFICIAL_FILES.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: missing {name}")
        if part == "dit":
            yield part, _LazySafetensors(path)
            continue
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # zip / unpickling errors come in many types
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0]})") from None
        if part == "prompt":
            if not isinstance(data, torch.Tensor):
                raise CheckpointError(f"{path}: expected a bare tensor, got {type(data).__name__}")
            data = {"prompt": data}
        elif not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise CheckpointError(f"{path}: expected a plain state dict of tensors")
        yield part, data


class _LazySafetensors(dict):
    """Keys of a safetensors file; values are memory-mapped on access, one tensor at a time.

    :meth:`release` closes the mapping: the pages already read stop counting towards this process's RSS (the
    handle is reopened on the next access), so reading the 5.7 GB fp32 DiT never keeps it all mapped.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = self._open()
        super().__init__((k, None) for k in self._file.keys())

    def _open(self):
        try:
            return safe_open(str(self.path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({exc})") from None

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._file is None:
            self._file = self._open()
        try:
            return self._file.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{self.path}: corrupt data for {key} ({exc})") from None

    def release(self) -> None:
        self._file = None


@torch.no_grad()
def quantize_official(
    directory: str | os.PathLike, plan: QuantPlan | Recipe, *, dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu", calibration: CalibrationStats | None = None, variant: str = "v1.1",
    progress: Progress | None = None,
) -> tuple[FlashVSR, QuantPlan]:
    """Load an official-layout folder layer by layer, quantizing each planned layer as it arrives.

    Args:
        plan: a resolved plan, or a recipe to resolve against the folder's architecture on ``device``.
        dtype: compute dtype (bf16); every float tensor is cast to it before quantization.
    Returns:
        (model on ``device``, the plan that was applied).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    with torch.device("meta"):  # infer_config builds a model to compare shapes: keep it off the heap
        model = FlashVSR(infer_config(directory, variant))
    if isinstance(plan, Recipe):
        plan = resolve_plan(plan, model, device)
    per_layer = layer_calibration(plan, calibration)
    _check_plan_fits_meta(model, plan)

    owners = _layer_of_key(model)
    done, total = 0, len(plan.layers)
    for part, tensors in _official_tensors(directory):
        prefix = "" if part == "prompt" else f"{part}."
        ours = (lambda k: k.startswith(prefix)) if prefix else (lambda k: k == part)  # noqa: E731
        expected = {k[len(prefix):]: fqn for k, fqn in owners.items() if ours(k)}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{OFFICIAL_FILES[part]} does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        by_layer: dict[str, list[str]] = {}
        for key in tensors:
            by_layer.setdefault(expected[key], []).append(key)
        for fqn, keys in by_layer.items():
            _load_layer(model, {prefix + k: tensors[k] for k in keys}, dtype, device)
            layer = plan.layers[fqn]
            if layer.scheme is not None:
                _swap(model, fqn, layer.scheme.quantize(model.get_submodule(fqn), per_layer.get(fqn)))
                _release_freed_memory()
            if isinstance(tensors, _LazySafetensors):
                tensors.release()
            done += 1
            if progress:
                progress(fqn, done, total)
        del tensors
    model.dit._rope_tables = None
    return model.eval(), plan


def _check_plan_fits_meta(model: nn.Module, plan: QuantPlan) -> None:
    layers = model_layers(model)
    if list(layers) != list(plan.layers):
        raise RecipeError("the plan was resolved for a different architecture than this checkpoint folder")


def _layer_of_key(model: nn.Module) -> dict[str, str]:
    """state-dict key -> layer fqn."""
    layers = model_layers(model)
    out = {}
    for key in model.state_dict(keep_vars=True):
        owner = key.rpartition(".")[0]
        out[key] = key if key in layers else owner
    return out


def _load_layer(model: nn.Module, tensors: dict[str, torch.Tensor], dtype, device) -> None:
    """Assign one layer's tensors (full state-dict keys) into the meta model, cast to dtype on device."""
    for key, tensor in tensors.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        current = owner._parameters.get(leaf, owner._buffers.get(leaf))
        if current is None or tuple(current.shape) != tuple(tensor.shape):
            got = tuple(tensor.shape)
            raise CheckpointError(f"{key}: shape {list(got)} does not match the model "
                                  f"({list(current.shape) if current is not None else 'no such tensor'})")
        value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[leaf] = value
