"""Quantization schemes: one frozen dataclass per scheme, in a registry, each quantizing one ``nn.Linear``.

A scheme wraps a torchao v2 config (weights become tensor subclasses inside the same ``nn.Linear``) or a
bitsandbytes module (the ``nn.Linear`` is replaced). It declares what it needs (``unavailable(device)``), which
layers it can take (``check_layer``), and the schemes to suggest instead (``nearest``). torchao configs get
``set_inductor_config=False`` where they accept it: the default changes process-wide inductor settings (and,
through torchao 0.17, switched fp32 matmuls to TF32), which other fp32 code (decoder, metrics) must not inherit.

Options are plain JSON values (``granularity: per_row``), so a scheme round-trips through the recipe YAML and
``manifest.json`` (``to_dict`` / ``scheme_from_dict``).
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from flashvsr_q.errors import BackendUnavailable
from flashvsr_q.quant.convrot import ConvRotLinear, ConvRotW4A8Linear, group_for, is_power_of_4
from flashvsr_q.quant.stats import LayerCalibration
from flashvsr_q.quant.weight_only import empty_weight_only, is_weight_only, to_weight_only
from flashvsr_q.quant.weight_only import group_for as conv_group_for

SCHEMES: dict[str, type[Scheme]] = {}


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: make ``cls`` available under ``cls.name`` in recipes and manifests."""
    if cls.name in SCHEMES:
        raise ValueError(f"scheme {cls.name!r} registered twice")
    SCHEMES[cls.name] = cls
    return cls


def get_scheme(name: str, **options) -> Scheme:
    """The scheme called exactly ``name`` with ``options``; unknown names and options list the valid ones."""
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; choose one of {', '.join(sorted(SCHEMES))}")
    cls = SCHEMES[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"scheme {name!r} has no option {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(valid)) or 'none'}")
    return cls(**options)


def scheme_from_dict(data: dict) -> Scheme:
    data = dict(data)
    return get_scheme(data.pop("name"), **data)


# ---------------------------------------------------------------------------------------------------------------
# device checks
# ---------------------------------------------------------------------------------------------------------------


def _capability(device: torch.device) -> tuple[int, int] | None:
    """CUDA compute capability of ``device``, or None for non-CUDA devices / no GPU."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _needs_cuda_sm(device: torch.device, sm: tuple[int, int], what: str) -> str | None:
    if device.type != "cuda":
        return f"{what} needs a CUDA GPU with compute capability {sm[0]}.{sm[1]}+ (device is {device.type})"
    cap = _capability(device)
    if cap is None:
        return f"{what} needs CUDA, but no CUDA device is available"
    if cap < sm:
        return f"{what} needs compute capability {sm[0]}.{sm[1]}+, this GPU is {cap[0]}.{cap[1]}"
    return None


def _import_error(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # a broken native library raises more than ImportError
        return f"{module} cannot be imported ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def _granularity(name: str):
    from torchao.quantization import PerRow, PerTensor

    table = {"per_row": PerRow, "per_tensor": PerTensor}
    if name not in table:
        raise ValueError(f"granularity must be one of {sorted(table)}, got {name!r}")
    return table[name]()


# ---------------------------------------------------------------------------------------------------------------
# the base class
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    """One way to quantize an ``nn.Linear``. Subclasses are frozen dataclasses whose fields are the options."""

    name: ClassVar[str]
    library: ClassVar[str]  # "torchao" or "bitsandbytes"
    summary: ClassVar[str]
    weight_bits: ClassVar[int]
    activations: ClassVar[str] = "bf16"  # "bf16" (weight-only), "dynamic", "static"
    nearest: ClassVar[tuple[str, ...]] = ()  # suggestions when unavailable, best first
    supports_smoothing: ClassVar[bool] = False
    device_bound: ClassVar[bool] = False  # packed for the device it was quantized on (cannot move)

    @property
    def needs_calibration(self) -> bool:
        return self.activations == "static"

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}

    def label(self) -> str:
        """``name`` plus non-default options, for plans and reports."""
        defaults = type(self)()
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != getattr(defaults, f.name)]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def unavailable(self, device: torch.device | str) -> str | None:
        """Why this scheme cannot run on ``device`` (None if it can)."""
        return _import_error(self.library)

    def nearest_available(self, device: torch.device | str) -> str | None:
        for name in self.nearest:
            if SCHEMES[name]().unavailable(device) is None:
                return name
        return None

    def require(self, device: torch.device | str) -> None:
        """Raise :class:`BackendUnavailable` with the reason and the nearest scheme that runs on ``device``."""
        reason = self.unavailable(torch.device(device))
        if reason:
            alt = self.nearest_available(torch.device(device))
            hint = f"; nearest scheme that runs here: {alt}" if alt else ""
            raise BackendUnavailable(f"scheme {self.name} cannot run on {device}: {reason}{hint}")

    def check_layer(self, module: nn.Module) -> str | None:
        """Why ``module`` cannot take this scheme (None if it can). Only ``nn.Linear`` is quantized."""
        if type(module) is not nn.Linear:
            return f"{self.name} applies to nn.Linear only, this is {type(module).__name__}"
        return None

    def quantize(self, linear: nn.Linear, calibration: LayerCalibration | None = None) -> nn.Module:
        """Quantize ``linear`` (weights already in the compute dtype, on the target device); returns the module
        that replaces it (the same object for torchao schemes)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# torchao schemes
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchAOScheme(Scheme):
    library: ClassVar[str] = "torchao"

    def config(self, calibration: LayerCalibration | None):
        raise NotImplementedError

    def quantize(self, linear: nn.Linear, calibration: LayerCalibration | None = None) -> nn.Module:
        from torchao.quantization import quantize_

        smoothing = calibration.smoothing if calibration is not None else None
        if smoothing is not None:
            if not self.supports_smoothing:
                raise ValueError(f"{self.name} does not support SmoothQuant factors")
            with torch.no_grad():  # W * s column-wise; x / s happens at run time (act_pre_scale)
                linear.weight.mul_(smoothing.to(linear.weight.device, linear.weight.dtype))
        before = type(linear.weight.data)
        quantize_(linear, self.config(calibration))
        if type(linear.weight.data) is before:  # torchao skips some shapes with only a log line: refuse instead
            raise RuntimeError(f"torchao left the weight of a {tuple(linear.weight.shape)} layer unquantized "
                               f"under {self.name}")
        if smoothing is not None:
            linear.weight.act_pre_scale = smoothing.reciprocal().to(linear.weight.device, linear.weight.dtype)
        return linear


@register_scheme
@dataclass(frozen=True)
class Int8WeightOnly(TorchAOScheme):
    """int8 per-channel weights, bf16 activations (torchao ``Int8WeightOnlyConfig``). Runs everywhere."""

    name: ClassVar[str] = "int8_weight_only"
    summary: ClassVar[str] = "int8 weights (per-row), bf16 compute; any GPU or CPU"
    weight_bits: ClassVar[int] = 8
    supports_smoothing: ClassVar[bool] = True
    granularity: str = "per_row"

    def config(self, calibration):
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig(granularity=_granularity(self.granularity), set_inductor_config=False)


@register_scheme
@dataclass(frozen=True)
class W8A8Int8(TorchAOScheme):
    """int8 weights, int8 per-token dynamic activations (``Int8DynamicActivationInt8WeightConfig``)."""

    name: ClassVar[str] = "w8a8_int8"
    summary: ClassVar[str] = "int8 weights + dynamic per-token int8 activations; CUDA SM80+ (fast under compile) or CPU"
    weight_bits: ClassVar[int] = 8
    activations: ClassVar[str] = "dynamic"
    nearest: ClassVar[tuple[str, ...]] = ("int8_weight_only",)
    supports_smoothing: ClassVar[bool] = True
    granularity: str = "per_row"

    def unavailable(self, device):
        device = torch.device(device)
        if device.type == "cuda":  # torch._int_mm / cuBLASLt int8 is reliable from Ampere on
            return _needs_cuda_sm(device, (8, 0), "int8 x int8 matmul") or super().unavailable(device)
        return super().unavailable(device)

    def check_layer(self, module):
        reason = super().check_layer(module)
        if reason is None and (module.in_features % 8 or module.out_features % 8):
            reason = f"int8 matmul needs in/out features divisible by 8, got {module.in_features}x{module.out_features}"
        return reason

    def config(self, calibration):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig(granularity=_granularity(self.granularity),
                                                     set_inductor_config=False)


@register_scheme
@dataclass(frozen=True)
class W8A8Int8Static(W8A8Int8):
    """int8 weights, int8 activations with a static per-tensor scale from calibration
    (``Int8StaticActivationInt8WeightConfig``). Inputs must be 3-D ``[B, L, C]`` (every DiT block linear)."""

    name: ClassVar[str] = "w8a8_int8_static"
    summary: ClassVar[str] = "int8 weights + static per-tensor int8 activations (needs calibration); SM80+ or CPU"
    activations: ClassVar[str] = "static"
    nearest: ClassVar[tuple[str, ...]] = ("w8a8_int8", "int8_weight_only")

    def config(self, calibration):
        from torchao.quantization import Int8StaticActivationInt8WeightConfig, PerTensor

        if calibration is None:
            raise ValueError(f"{self.name} needs activation statistics")
        # torchao matches the scale's rank to the activation's: [1, 1, 1] for the DiT's [B, L, C] inputs.
        scale = calibration.static_scale().reshape(1, 1, 1)
        return Int8StaticActivationInt8WeightConfig(act_quant_scale=scale,
                                                    granularity=[PerTensor(), _granularity(self.granularity)],
                                                    set_inductor_config=False)


@register_scheme
@dataclass(frozen=True)
class FP8WeightOnly(TorchAOScheme):
    """float8 e4m3 weights, bf16 compute (``Float8WeightOnlyConfig``): storage format, runs on any GPU or CPU."""

    name: ClassVar[str] = "fp8_weight_only"
    summary: ClassVar[str] = "fp8 e4m3 weights (storage), bf16 compute; any GPU or CPU"
    weight_bits: ClassVar[int] = 8
    granularity: str = "per_row"

    def check_layer(self, module):
        reason = super().check_layer(module)
        if reason is None and (module.in_features % 16 or module.out_features % 16):
            # torchao would silently leave such a layer in bf16
            reason = f"fp8 needs in/out features divisible by 16, got {module.in_features}x{module.out_features}"
        return reason

    def config(self, calibration):
        from torchao.quantization import Float8WeightOnlyConfig

        return Float8WeightOnlyConfig(granularity=_granularity(self.granularity), set_inductor_config=False)


@register_scheme
@dataclass(frozen=True)
class W8A8FP8(FP8WeightOnly):
    """fp8 e4m3 weights and dynamic fp8 activations (``Float8DynamicActivationFloat8WeightConfig``)."""

    name: ClassVar[str] = "w8a8_fp8"
    summary: ClassVar[str] = "fp8 weights + dynamic fp8 activations (torch._scaled_mm); CUDA SM89+ (RTX 40xx, H100)"
    activations: ClassVar[str] = "dynamic"
    nearest: ClassVar[tuple[str, ...]] = ("w8a8_int8", "fp8_weight_only")

    def unavailable(self, device):
        return _needs_cuda_sm(torch.device(device), (8, 9), "fp8 x fp8 matmul") or super().unavailable(device)

    def config(self, calibration):
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

        return Float8DynamicActivationFloat8WeightConfig(granularity=_granularity(self.granularity),
                                                         set_inductor_config=False)


@register_scheme
@dataclass(frozen=True)
class Int4WeightOnly(TorchAOScheme):
    """int4 group-wise weights, bf16 compute. CUDA SM80+: tinygemm tile-packed layout
    (``Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d")``); x86 CPU: the opaque prototype
    (``PrototypeInt4WeightOnlyConfig``). The packing belongs to the device it was made on."""

    name: ClassVar[str] = "int4_weight_only"
    summary: ClassVar[str] = "int4 weights (group-wise), bf16 compute; CUDA SM80+ or x86 CPU; device-specific packing"
    weight_bits: ClassVar[int] = 4
    nearest: ClassVar[tuple[str, ...]] = ("nf4", "int8_weight_only")
    device_bound: ClassVar[bool] = True
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.group_size not in (32, 64, 128):
            raise ValueError(f"int4 group_size must be 32, 64 or 128, got {self.group_size}")

    def unavailable(self, device):
        device = torch.device(device)
        if device.type == "cuda":
            return _needs_cuda_sm(device, (8, 0), "int4 tinygemm") or super().unavailable(device)
        if device.type == "cpu":
            if platform.machine().lower() not in ("x86_64", "amd64"):
                return f"the int4 CPU kernel is x86-only, this machine is {platform.machine()}"
            if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
                return "this torch build has no _weight_int4pack_mm_for_cpu kernel"
            return super().unavailable(device)
        return f"no int4 kernel for {device.type}"

    def check_layer(self, module):
        reason = super().check_layer(module)
        if reason is None and (module.in_features % self.group_size or module.out_features % 8):
            reason = (f"int4 needs in_features divisible by group_size {self.group_size} and out_features by 8, "
                      f"got {module.in_features}x{module.out_features}")
        return reason

    def config(self, calibration):
        raise NotImplementedError  # chosen per device in quantize

    def quantize(self, linear, calibration=None):
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        if calibration is not None and calibration.smoothing is not None:
            raise ValueError(f"{self.name} does not support SmoothQuant factors")
        if linear.weight.device.type == "cuda":
            config = Int4WeightOnlyConfig(group_size=self.group_size, int4_packing_format="tile_packed_to_4d",
                                          set_inductor_config=False)
        else:
            config = PrototypeInt4WeightOnlyConfig(group_size=self.group_size, set_inductor_config=False)
        before = type(linear.weight.data)
        quantize_(linear, config)
        if type(linear.weight.data) is before:
            raise RuntimeError(f"torchao left the weight of a {tuple(linear.weight.shape)} layer unquantized")
        return linear


@register_scheme
@dataclass(frozen=True)
class W4A8Int(TorchAOScheme):
    """int4 group-wise weights + int8 per-token asymmetric dynamic activations
    (``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4)``). Weights are stored one value per int8
    byte (no size gain over int8): a harsh target for QAT, runnable on CPU."""

    name: ClassVar[str] = "w4a8_int"
    summary: ClassVar[str] = "int4 weights (int8 storage) + dynamic int8 activations; QAT target; any device"
    weight_bits: ClassVar[int] = 4
    activations: ClassVar[str] = "dynamic"
    nearest: ClassVar[tuple[str, ...]] = ("w8a8_int8", "int8_weight_only")
    group_size: int = 32

    def check_layer(self, module):
        reason = super().check_layer(module)
        if reason is None and module.in_features % self.group_size:
            reason = f"in_features {module.in_features} is not divisible by group_size {self.group_size}"
        return reason

    def config(self, calibration):
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup

        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                     weight_granularity=PerGroup(self.group_size))


# ---------------------------------------------------------------------------------------------------------------
# ConvRot schemes (the module is replaced by a rotated one; convrot.py)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvRotScheme(Scheme):
    """Group-wise regular-Hadamard rotation before quantization. ``group_size`` is the largest group (a power of 4);
    a layer whose in_features it does not divide takes the largest power of 4 that does (``convrot.group_for``)."""

    activations: ClassVar[str] = "dynamic"
    group_size: int = 256

    def __post_init__(self) -> None:
        if not is_power_of_4(self.group_size):
            raise ValueError(f"convrot group_size must be a power of 4 (16, 64, 256, 1024), got {self.group_size}")

    def group(self, in_features: int) -> int:
        return group_for(in_features, self.group_size)

    def check_layer(self, module):
        reason = super().check_layer(module)
        if reason is None and self.group(module.in_features) < 16:
            reason = f"in_features {module.in_features} is not a multiple of 16 (no ConvRot group of 16 or more)"
        return reason

    def restore(self, meta_linear: nn.Linear, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                device: torch.device | str) -> nn.Module:
        """The module of a saved layer, rebuilt from its state-dict tensors (scales keep their stored dtype)."""
        raise NotImplementedError


@register_scheme
@dataclass(frozen=True)
class W8A8Int8ConvRot(ConvRotScheme):
    """ComfyUI's INT8 ConvRot: rotated int8 weights per output row (fp32 ``[N, 1]`` scales), activations rotated and
    quantized per token at run time. ``clip``: ``absmax`` (ComfyUI's rule), ``mse`` (per-row MSE-optimal scale of
    the rotated weight) or ``mse_calibrated`` (the same, weighted by the calibration's per-channel input abs-max)."""

    name: ClassVar[str] = "w8a8_int8_convrot"
    library: ClassVar[str] = "torch"
    summary: ClassVar[str] = ("ConvRot (Hadamard-rotated) int8 weights + dynamic per-token int8 activations, ComfyUI's "
                              "int8_tensorwise+convrot; CUDA SM75+ (comfy-kitchen kernels) or CPU")
    weight_bits: ClassVar[int] = 8
    nearest: ClassVar[tuple[str, ...]] = ("int8_weight_only",)
    clip: str = "absmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip not in ("absmax", "mse", "mse_calibrated"):
            raise ValueError(f"convrot clip must be absmax, mse or mse_calibrated, got {self.clip!r}")

    @property
    def needs_calibration(self) -> bool:
        return self.clip == "mse_calibrated"

    def unavailable(self, device):
        device = torch.device(device)
        if device.type == "cuda":
            return _needs_cuda_sm(device, (7, 5), "int8 x int8 matmul")
        if device.type != "cpu":
            return f"no int8 matmul for {device.type}"
        return None

    def quantize(self, linear, calibration=None):
        if calibration is not None and calibration.smoothing is not None:
            raise ValueError(f"{self.name} does not support SmoothQuant factors (the rotation replaces them)")
        absmax = None
        if self.clip == "mse_calibrated":
            if calibration is None:
                raise ValueError(f"{self.name} with clip=mse_calibrated needs activation statistics")
            absmax = calibration.input_absmax
        clip = "absmax" if self.clip == "absmax" else "mse"
        return ConvRotLinear.from_linear(linear, self.group(linear.in_features), clip, absmax)

    def restore(self, meta_linear, tensors, dtype, device):
        module = ConvRotLinear(meta_linear.in_features, meta_linear.out_features, self.group(meta_linear.in_features),
                               "bias" in tensors, dtype, device)
        return module.load_quantized(tensors["weight"], tensors["weight_scale"], tensors.get("bias"))


@register_scheme
@dataclass(frozen=True)
class W4A8Int8ConvRot(ConvRotScheme):
    """ConvRot W4A8 on comfy-kitchen's ``asym_w4a8_int8`` kernels (eager on CPU, Triton/CUDA on GPU): rotated weights
    as 4-bit codebook values in groups of ``w4_group_size`` with fp8 relative scales, int8 per-token activations."""

    name: ClassVar[str] = "w4a8_int8_convrot"
    library: ClassVar[str] = "comfy_kitchen"
    summary: ClassVar[str] = ("ConvRot 4-bit weights + dynamic int8 activations (comfy-kitchen asym_w4a8_int8); "
                              "CUDA or CPU")
    weight_bits: ClassVar[int] = 4
    nearest: ClassVar[tuple[str, ...]] = ("w8a8_int8_convrot", "int8_weight_only")
    w4_group_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.w4_group_size < 4 or (16 % self.w4_group_size and self.w4_group_size % 16):
            raise ValueError(f"w4_group_size must be 4, 8, 16 or a multiple of 16, got {self.w4_group_size}")

    def unavailable(self, device):
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            return f"comfy-kitchen has no W4A8 kernel for {device.type}"
        return super().unavailable(device)

    def check_layer(self, module):
        reason = super().check_layer(module)
        if reason is None and module.in_features % max(16, self.w4_group_size):
            reason = f"in_features {module.in_features} is not a multiple of {max(16, self.w4_group_size)}"
        return reason

    def quantize(self, linear, calibration=None):
        if calibration is not None and calibration.smoothing is not None:
            raise ValueError(f"{self.name} does not support SmoothQuant factors")
        return ConvRotW4A8Linear.from_linear(linear, self.group(linear.in_features), self.w4_group_size)

    def restore(self, meta_linear, tensors, dtype, device):
        module = ConvRotW4A8Linear(meta_linear.in_features, meta_linear.out_features,
                                   self.group(meta_linear.in_features), self.w4_group_size, "bias" in tensors,
                                   dtype, device)
        return module.load_quantized(tensors, tensors.get("bias"))


# ---------------------------------------------------------------------------------------------------------------
# convolutions (the conv keeps its class and forward; its weight is stored quantized; weight_only.py)
# ---------------------------------------------------------------------------------------------------------------


@register_scheme
@dataclass(frozen=True)
class ConvWeightOnly(Scheme):
    """Weight-only int8 or int4 in groups of ``group_size`` along the flattened input (0: one scale per output
    channel, int8 only) for the Conv2d / Conv3d layers of the LQ projection and the TCDecoder; dequantized to the
    compute dtype when the conv runs. ``clip``: ``mse`` (MSE-optimal scale per group) or ``absmax``."""

    name: ClassVar[str] = "conv_weight_only"
    library: ClassVar[str] = "torch"
    summary: ClassVar[str] = "int8 or int4 group-wise conv weights, dequantized per call; any device"
    weight_bits: ClassVar[int] = 8
    bits: int = 8
    group_size: int = 64
    clip: str = "mse"

    def __post_init__(self) -> None:
        if self.bits not in (8, 4) or self.clip not in ("absmax", "mse"):
            raise ValueError(f"conv_weight_only takes bits 8 or 4 and clip absmax or mse, got {self.bits}, "
                             f"{self.clip!r}")
        if (self.group_size or self.bits == 4) and (self.group_size < 8 or self.group_size & (self.group_size - 1)):
            raise ValueError(f"conv_weight_only group_size must be a power of 2 >= 8 (or 0 with bits 8: per output "
                             f"channel), got {self.group_size}")

    def unavailable(self, device):
        return None

    def check_layer(self, module):
        if not isinstance(module, nn.modules.conv._ConvNd) or module.transposed:
            return f"{self.name} applies to Conv1d/2d/3d only, this is {type(module).__name__}"
        if is_weight_only(module):
            return "already quantized"
        if self.group_size and not conv_group_for(module.weight[0].numel(), self.group_size):
            return f"no group of 8 or more divides the row length {module.weight[0].numel()}"
        return None

    def quantize(self, linear, calibration=None):
        if calibration is not None and calibration.smoothing is not None:
            raise ValueError(f"{self.name} does not support SmoothQuant factors")
        return to_weight_only(linear, self.bits, self.group_size, self.clip)

    def restore(self, meta_module: nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                device: torch.device | str) -> nn.Module:
        """The module of a saved layer: ``meta_module`` converted, then filled from ``tensors``."""
        module = empty_weight_only(meta_module, self.bits, self.group_size, dtype, device)
        expected = dict(module.state_dict())
        if set(tensors) != set(expected):
            raise KeyError(f"tensors {sorted(tensors)}, expected {sorted(expected)}")
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise ValueError(f"{key} {list(value.shape)}, expected {list(expected[key].shape)}")
            value = value.to(device, dtype if value.is_floating_point() else value.dtype)
            if key == "bias":
                module.bias = nn.Parameter(value, requires_grad=False)
            else:
                module.register_buffer(key, value)
        return module


# ---------------------------------------------------------------------------------------------------------------
# bitsandbytes schemes (the module is replaced)
# ---------------------------------------------------------------------------------------------------------------


@register_scheme
@dataclass(frozen=True)
class BnbInt8(Scheme):
    """LLM.int8: bitsandbytes ``Linear8bitLt(has_fp16_weights=False)``; row-wise absmax int8 weights (``CB``) with
    per-row scales (``SCB``). ``threshold`` > 0 enables the fp16 outlier decomposition (6.0 in transformers)."""

    name: ClassVar[str] = "bnb_int8"
    library: ClassVar[str] = "bitsandbytes"
    summary: ClassVar[str] = "bitsandbytes LLM.int8 (row-wise int8); CUDA or CPU"
    weight_bits: ClassVar[int] = 8
    nearest: ClassVar[tuple[str, ...]] = ("int8_weight_only",)
    threshold: float = 0.0

    def quantize(self, linear, calibration=None):
        import bitsandbytes as bnb

        weight = linear.weight.detach()
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.contiguous().to(torch.float16))
        module = self.empty_module(linear)
        return self.fill(module, cb, scb, linear.bias)

    def empty_module(self, linear: nn.Linear) -> nn.Module:
        import bitsandbytes as bnb

        return bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                   has_fp16_weights=False, threshold=self.threshold, device="meta")

    @staticmethod
    def fill(module, cb: torch.Tensor, scb: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        import bitsandbytes as bnb

        module.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
        module.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        return module


@register_scheme
@dataclass(frozen=True)
class NF4(Scheme):
    """QLoRA NF4: bitsandbytes ``Linear4bit(quant_type="nf4")`` with double quantization of the absmax values."""

    name: ClassVar[str] = "nf4"
    library: ClassVar[str] = "bitsandbytes"
    summary: ClassVar[str] = "bitsandbytes NF4 4-bit (blocks of 64, double quant), bf16 compute; CUDA or CPU"
    weight_bits: ClassVar[int] = 4
    nearest: ClassVar[tuple[str, ...]] = ("int4_weight_only", "int8_weight_only")
    blocksize: int = 64
    double_quant: bool = True

    def quantize(self, linear, calibration=None):
        import bitsandbytes as bnb

        weight = linear.weight.detach().contiguous()
        packed, state = bnb.functional.quantize_4bit(weight, blocksize=self.blocksize,
                                                     compress_statistics=self.double_quant, quant_type="nf4",
                                                     quant_storage=torch.uint8)
        module = self.empty_module(linear, weight.dtype)
        module.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, blocksize=self.blocksize,
                                          compress_statistics=self.double_quant, quant_type="nf4", module=module,
                                          bnb_quantized=True)
        module.quant_state = state
        module.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        return module

    def empty_module(self, linear: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
        import bitsandbytes as bnb

        module = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                   compute_dtype=compute_dtype, compress_statistics=self.double_quant,
                                   quant_type="nf4", quant_storage=torch.uint8, device="meta")
        # On AVX512-BF16 CPUs the first forward would repack the weight in place and round the absmax to bf16;
        # saving afterwards re-quantizes it, so a saved model would no longer equal the one in memory. Keep the
        # portable layout (dequantize + matmul): CPU is a correctness target, not a speed target.
        module.support_avx512bf16_for_cpu = False
        return module
