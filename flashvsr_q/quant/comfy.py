"""ComfyUI's native quantized DiT file (``comfy_quant`` sidecars): write it from our models, read and run it.

A file is ordinary safetensors holding the FlashVSR DiT under its official (original Wan) key names, optionally
all prefixed ``model.diffusion_model.`` (shared notes, interop-formats §1.1-1.7). A quantized Linear ``L`` has:

    L.weight        I8 [N, K] (int8_tensorwise) or F8_E4M3 [N, K] (float8_e4m3fn)
    L.weight_scale  F32 [N, 1] (int8, per output row) or F32 [] (fp8, per tensor)
    L.input_scale   F32 []     fp8 only, optional: the static activation scale (absent means 1.0 in ComfyUI)
    L.comfy_quant   U8 [n]     UTF-8 JSON: {"format": "int8_tensorwise", "convrot": true, "convrot_groupsize": 256}
    L.bias          float

Formats written by :func:`to_comfy`:

- ``int8-convrot``: ``int8_tensorwise`` + ``convrot`` (weights rotated, per-row scale; activations rotated and
  quantized per token by ComfyUI), the de-facto community int8 file;
- ``int8``: ``int8_tensorwise`` per-row with ``full_precision_matrix_mult`` (weight-only: ComfyUI dequantizes and
  runs the matmul in its compute dtype);
- ``fp8``: ``float8_e4m3fn`` per-tensor, with a calibrated ``input_scale`` where activations exceed the e4m3 range;
- ``bf16``: the same key set in bf16, no sidecars (what the DiffSynth-based nodes accept).

Only the DiT block Linears (``blocks.N.{self,cross}_attn.{q,k,v,o}``, ``blocks.N.ffn.{0,2}``) are quantized;
``patch_embedding`` (Conv3d), the text/time embeddings, ``time_projection``, ``head.head``, every ``modulation`` and
the norms stay float (bf16: ComfyUI casts every unquantized tensor to its compute dtype anyway). No
``__metadata__`` is written. :func:`from_comfy` recognises these formats (and the older header-metadata spelling),
refuses foreign files with one line, and :func:`build_linear` turns a described layer into a module that computes
as ComfyUI does (:class:`~flashvsr_q.quant.convrot.ConvRotLinear` for int8, :class:`Fp8Linear` for fp8).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flashvsr_q.errors import CheckpointError
from flashvsr_q.files import atomic_write
from flashvsr_q.model import PRESETS, FlashVSR, FlashVSRConfig
from flashvsr_q.quant.convrot import (
    DEFAULT_GROUP,
    ConvRotLinear,
    dequantize_weight,
    group_for,
    is_power_of_4,
    quantize_weight,
)
from flashvsr_q.quant.export import E4M3_MAX, fp8_quantize
from flashvsr_q.quant.stats import CalibrationStats

FORMATS = ("int8-convrot", "int8", "fp8", "bf16")
PREFIX = "model.diffusion_model."
SIDECAR = "comfy_quant"
QUANTIZED = re.compile(r"blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)|blocks\.\d+\.ffn\.(0|2)")
FLOAT_DTYPE = torch.bfloat16
# ComfyUI formats (QUANT_ALGOS) that flashvsr-q recognises but does not run.
OTHER_COMFY_FORMATS = ("float8_e5m2", "mxfp8", "nvfp4", "convrot_w4a4", "asym_w4a8_int8", "awq_w4a16")
SUPPORTED = "ComfyUI-native FlashVSR DiTs: int8_tensorwise (convrot or not), float8_e4m3fn, or bf16/fp16/fp32"
_OFFICIAL = PRESETS["flashvsr-v1.1"]


class ComfyFormatError(CheckpointError):
    """A file that is not a ComfyUI-native FlashVSR DiT flashvsr-q can read, or a model that cannot be exported."""


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------


def sidecar(conf: dict) -> torch.Tensor:
    """The ``comfy_quant`` tensor of ``conf``: its JSON as a 1-D uint8 tensor."""
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def read_sidecar(tensor: torch.Tensor, layer: str = "") -> dict:
    """The JSON dict of a ``comfy_quant`` tensor (nested ``"params"`` merged in)."""
    try:
        conf = json.loads(tensor.to(torch.uint8).numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RuntimeError):
        raise ComfyFormatError(f"{layer}.{SIDECAR}: not a UTF-8 JSON sidecar") from None
    if not isinstance(conf, dict) or "format" not in conf:
        raise ComfyFormatError(f"{layer}.{SIDECAR}: a sidecar is a JSON object with a \"format\" (got {conf!r:.80})")
    return {**conf, **(conf.get("params") or {})}


def _dit(source: nn.Module | Mapping[str, torch.Tensor]) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    """(Linear-like modules by DiT-relative name, float tensors by key) of a FlashVSR model, a DiT or a state dict."""
    if isinstance(source, Mapping):
        return {}, dict(source)
    dit = source.dit if isinstance(source, FlashVSR) else source
    modules = {name: m for name, m in dit.named_modules() if QUANTIZED.fullmatch(name)}
    state = {k: v for k, v in dit.state_dict().items() if k.rpartition(".")[0] not in modules}
    return modules, state


def _float_linear(name: str, module: nn.Module | None, state: Mapping[str, torch.Tensor]):
    """(float weight, bias) of a layer given as a float module or as state-dict tensors; refuses quantized ones."""
    if module is None:
        return state[f"{name}.weight"].detach(), state.get(f"{name}.bias")
    if type(module) is nn.Linear and type(module.weight.data) is torch.Tensor:
        return module.weight.detach(), module.bias
    raise ComfyFormatError(f"{name} is already quantized ({type(module).__name__}); this format is written from a "
                           f"float model or from a checkpoint of its own scheme")


def _int8_layer(name, module, state, convrot: bool, group_size: int) -> dict[str, torch.Tensor]:
    if isinstance(module, ConvRotLinear):  # a w8a8_int8_convrot layer: its tensors are the file's, bit for bit
        if not convrot or not module.group:
            raise ComfyFormatError(f"{name} is a ConvRot layer; export it as int8-convrot")
        q, scale, bias, group = module.weight, module.weight_scale, module.bias, module.group
    elif convrot:
        weight, bias = _float_linear(name, module, state)
        group = group_for(weight.shape[1], group_size)
        if group < 4:
            raise ComfyFormatError(f"{name}: in_features {weight.shape[1]} has no power-of-4 ConvRot group")
        q, scale = quantize_weight(weight, group)
    elif module is not None and type(module.weight.data).__name__ == "Int8Tensor":
        # torchao int8 weight-only / w8a8: symmetric per row (scale amax/127.5, zero point 0): q * s is the same
        t = module.weight.data
        if tuple(t.scale.shape) != (t.shape[0], 1):
            raise ComfyFormatError(f"{name}: only per-row int8 maps onto int8_tensorwise (scale {list(t.scale.shape)})")
        q, scale, bias = t.qdata, t.scale.float(), module.bias
    else:
        weight, bias = _float_linear(name, module, state)
        w = weight.float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-30)
        q = (w / scale).round().clamp(-128, 127).to(torch.int8)
    conf = {"format": "int8_tensorwise"}
    conf.update({"convrot": True, "convrot_groupsize": group} if convrot else {"full_precision_matrix_mult": True})
    out = {"weight": q.contiguous(), "weight_scale": scale.float().reshape(-1, 1).contiguous(), SIDECAR: sidecar(conf)}
    if bias is not None:
        out["bias"] = bias.detach().to(FLOAT_DTYPE)
    return out


def _fp8_layer(name, module, state, input_absmax: torch.Tensor | None) -> dict[str, torch.Tensor]:
    weight, bias = _float_linear(name, module, state)
    q, scale = fp8_quantize(weight)
    out = {"weight": q, "weight_scale": scale.reshape(()).float()}
    if input_absmax is not None and float(input_absmax.max()) > E4M3_MAX:
        # without input_scale ComfyUI uses 1.0 and clamps activations to +-448
        out["input_scale"] = (input_absmax.max().float() / E4M3_MAX).reshape(())
    out[SIDECAR] = sidecar({"format": "float8_e4m3fn"})
    if bias is not None:
        out["bias"] = bias.detach().to(FLOAT_DTYPE)
    return out


@torch.no_grad()
def to_comfy(source: nn.Module | Mapping[str, torch.Tensor], format: str, prefix: bool = False, *,
             calibration: CalibrationStats | None = None, group_size: int = DEFAULT_GROUP) -> dict[str, torch.Tensor]:
    """The tensors of a ComfyUI-native DiT file, in official key order.

    Args:
        source: a :class:`FlashVSR` (its DiT is exported), a DiT module, or a float DiT state dict with official
            key names. Float block Linears are quantized here (absmax, as ComfyUI's own converter); layers already
            quantized by ``w8a8_int8_convrot`` (for int8-convrot) or torchao per-row int8 (for int8) are copied.
        format: one of :data:`FORMATS`.
        prefix: prefix every key with ``model.diffusion_model.``.
        calibration: activation statistics (``flashvsr-q calibrate``); required for ``fp8``, whose ``input_scale``
            is ``max|x| / 448`` on every layer whose calibrated activations exceed 448.
        group_size: the ConvRot group (a power of 4; smaller layers use the largest power of 4 dividing K).
    Raises:
        ComfyFormatError: an unknown format, a quantized layer this format cannot carry, fp8 without statistics.
    """
    if format not in FORMATS:
        raise ComfyFormatError(f"unknown ComfyUI export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "fp8" and calibration is None:
        raise ComfyFormatError("comfy fp8 needs calibration statistics (flashvsr-q calibrate): ComfyUI clamps "
                               "activations to +-448 unless the file carries an input_scale")
    modules, state = _dit(source)
    names = list(modules) or sorted({k.rpartition(".")[0] for k in state if QUANTIZED.fullmatch(k.rpartition(".")[0])},
                                    key=lambda n: list(state).index(f"{n}.weight"))
    if not names:
        raise ComfyFormatError("no DiT block Linears found (expected official key names such as blocks.0.ffn.0)")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        module = modules.get(name)
        if format == "bf16":
            weight, bias = _float_linear(name, module, state)
            layers[name] = {"weight": weight.to(FLOAT_DTYPE), **({"bias": bias.to(FLOAT_DTYPE)} if bias is not None
                                                                  else {})}
        elif format == "fp8":
            stats = calibration.layers.get(f"dit.{name}") or calibration.layers.get(name)
            if stats is None:
                raise ComfyFormatError(f"the calibration statistics have no entry for dit.{name}")
            layers[name] = _fp8_layer(name, module, state, stats.input_absmax)
        else:
            layers[name] = _int8_layer(name, module, state, format == "int8-convrot", group_size)

    out: dict[str, torch.Tensor] = {}
    key_order = list(state) if modules else [k for k in state if k.rpartition(".")[0] not in layers]
    done = set()
    for key in key_order + [f"{n}.weight" for n in names]:
        owner = key.rpartition(".")[0]
        if owner in layers:
            if owner not in done:
                out.update({f"{owner}.{leaf}": t for leaf, t in layers[owner].items()})
                done.add(owner)
            continue
        t = state[key]
        if type(t) is not torch.Tensor or not t.is_floating_point():
            raise ComfyFormatError(f"{key} is not a float tensor ({type(t).__name__} {t.dtype}); only the block "
                                   f"Linears may be quantized")
        out[key] = t.detach().to(FLOAT_DTYPE)
    if prefix:
        out = {PREFIX + k: v for k, v in out.items()}
    return {k: v.contiguous() for k, v in out.items()}


def write_comfy(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write :func:`to_comfy`'s tensors as safetensors (no ``__metadata__``), atomically."""
    return atomic_write(Path(path), lambda tmp: save_file(dict(tensors), str(tmp)))


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ComfyLayer:
    """One quantized Linear of a ComfyUI file (tensors as stored)."""

    name: str
    conf: dict
    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None

    @property
    def format(self) -> str:
        return self.conf["format"]

    @property
    def group(self) -> int:
        """The ConvRot group (0: not rotated)."""
        return int(self.conf.get("convrot_groupsize", DEFAULT_GROUP)) if self.conf.get("convrot") else 0

    @property
    def weight_only(self) -> bool:
        return bool(self.conf.get("full_precision_matrix_mult"))


@dataclass
class ComfyDiT:
    """What a ComfyUI-native FlashVSR DiT file holds: its format, the quantized layers, the float tensors."""

    format: str  # "int8-convrot" | "int8" | "fp8" | "bf16" | "fp16" | "fp32" | "mixed"
    prefixed: bool
    dim: int
    ffn_dim: int
    num_layers: int
    layers: dict[str, ComfyLayer] = field(default_factory=dict)
    floats: dict[str, torch.Tensor] = field(default_factory=dict)

    def describe(self) -> str:
        kinds = sorted({_layer_label(layer) for layer in self.layers.values()}) or ["float"]
        return (f"ComfyUI {self.format} FlashVSR DiT ({self.num_layers} blocks, dim {self.dim}; "
                f"{len(self.layers)} quantized Linears: {', '.join(kinds)}; prefix {'yes' if self.prefixed else 'no'})")


def _layer_label(layer: ComfyLayer) -> str:
    if layer.format == "int8_tensorwise":
        return f"int8 convrot {layer.group}" if layer.group else ("int8 weight-only" if layer.weight_only else "int8")
    return "fp8" + (" + input_scale" if layer.input_scale is not None else "")


def _foreign(keys: list[str], metadata: Mapping[str, str]) -> str | None:
    """What a file is, if it is recognisably not a ComfyUI-native FlashVSR DiT."""
    if any(k.endswith(".int8_convrot_groupsize") for k in keys) or "int8_convrot_format" in metadata:
        return "an INT8 ConvRot file in SECourses' own dialect (per-layer int8_convrot_groupsize), not ComfyUI-native"
    if "scaled_fp8" in keys or any(k.endswith(".scale_weight") for k in keys):
        return "a legacy scaled_fp8 file (flashvsr-q reads those as an official folder written by its fp8 export)"
    if any(k.startswith(("LQ_proj_in.", "lq_proj.")) for k in keys):
        return "a DiT with the LQ projection merged in (a FlashVSR+-style single file); save the DiT alone"
    if any(k.startswith(("img_emb.", "vace_")) or ".k_img." in k for k in keys):
        return "a Wan I2V/VACE DiT (image or VACE branch keys), not FlashVSR"
    if any(k.startswith(("decoder.", "encoder.", "conv1.", "conv2.")) for k in keys) and "head.head.weight" not in keys:
        return "not a DiT (VAE / decoder / LQ projection keys)"
    if "head.modulation" not in keys or "patch_embedding.weight" not in keys:
        return "not a Wan/FlashVSR DiT (no head.modulation / patch_embedding)"
    return None


def from_comfy(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None, *,
               config: FlashVSRConfig | None = None, source: str = "file") -> ComfyDiT:
    """Recognise a ComfyUI-native FlashVSR DiT from its tensors (and safetensors ``__metadata__``).

    Args:
        config: the architecture to expect (default: FlashVSR v1/v1.1, dim 1536, 30 blocks); flashvsr-q's own smaller
            models must pass theirs. The key set and every shape must be that DiT's, quantized Linears aside.
        source: a name for messages (the file path).
    Raises:
        ComfyFormatError: one line saying what the file is and what is supported.
    Note: a Wan2.1-T2V-1.3B DiT has exactly FlashVSR's keys and shapes and cannot be told apart structurally.
    """
    metadata = dict(metadata or {})
    keys = list(tensors)
    prefixed = sum(k.startswith(PREFIX) for k in keys) > 5
    if prefixed:
        if not all(k.startswith(PREFIX) for k in keys):
            raise ComfyFormatError(f"{source}: some keys carry {PREFIX} and some do not; {SUPPORTED}")
        tensors = {k[len(PREFIX):]: v for k, v in tensors.items()}
        keys = list(tensors)
    what = _foreign(keys, metadata)
    if what:
        raise ComfyFormatError(f"{source}: {what}; flashvsr-q imports {SUPPORTED}")

    confs = {k[: -len(SIDECAR) - 1]: read_sidecar(tensors[k], k[: -len(SIDECAR) - 1]) for k in keys
             if k.endswith("." + SIDECAR)}
    header = metadata.get("_quantization_metadata")
    if header and not confs:  # the older spelling: one JSON header instead of sidecars
        try:
            confs = {name: {**c, **(c.get("params") or {})} for name, c in json.loads(header)["layers"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ComfyFormatError(f"{source}: unreadable _quantization_metadata header") from None

    dim = tensors["head.modulation"].shape[-1]
    num_layers = 1 + max((int(k.split(".")[1]) for k in keys if k.startswith("blocks.")), default=-1)
    ffn_dim = tensors["blocks.0.ffn.0.weight"].shape[0] if "blocks.0.ffn.0.weight" in tensors else 0
    expected = _expected_shapes(config, dim, ffn_dim, num_layers, source)
    linears = {k.rpartition(".")[0] for k in expected if k.endswith(".weight") and len(expected[k]) == 2}

    layers: dict[str, ComfyLayer] = {}
    for name, conf in confs.items():
        fmt = conf["format"]
        if fmt in OTHER_COMFY_FORMATS:
            raise ComfyFormatError(f"{source}: {name} uses ComfyUI format {fmt}, which flashvsr-q does not run; "
                                   f"it imports int8_tensorwise (convrot or not) and float8_e4m3fn")
        if fmt not in ("int8_tensorwise", "float8_e4m3fn"):
            raise ComfyFormatError(f"{source}: {name}.{SIDECAR} names unknown format {fmt!r}; {SUPPORTED}")
        if name not in linears:
            raise ComfyFormatError(f"{source}: {name} carries a {SIDECAR} sidecar but is not a Linear of the DiT")
        layers[name] = _layer(name, conf, tensors, expected[f"{name}.weight"], source)

    floats = {}
    for key in expected:
        owner = key.rpartition(".")[0]
        if owner in layers:
            continue
        t = tensors.get(key)
        if t is None:
            raise ComfyFormatError(f"{source}: missing {key}; not a complete FlashVSR DiT")
        if tuple(t.shape) != expected[key] or not t.is_floating_point() or t.dtype.itemsize < 2:
            raise ComfyFormatError(f"{source}: {key} is {t.dtype} {list(t.shape)}, expected a float "
                                   f"{list(expected[key])} (a quantized tensor without its {SIDECAR} sidecar?)")
        floats[key] = t
    known = set(floats) | {f"{n}.{leaf}" for n in layers for leaf in ("weight", "weight_scale", "bias",
                                                                       "input_scale", SIDECAR)}
    unexpected = [k for k in keys if k not in known]
    if unexpected:
        raise ComfyFormatError(f"{source}: {len(unexpected)} unexpected tensors ({', '.join(unexpected[:3])}); "
                               f"not a FlashVSR DiT of this architecture")
    return ComfyDiT(_file_format(layers, floats), prefixed, dim, ffn_dim, num_layers, layers, floats)


def _expected_shapes(config, dim, ffn_dim, num_layers, source) -> dict[str, tuple[int, ...]]:
    if config is None:
        if (dim, ffn_dim, num_layers) != (_OFFICIAL.dim, _OFFICIAL.ffn_dim, _OFFICIAL.num_layers):
            raise ComfyFormatError(f"{source}: a Wan-style DiT with dim {dim}, ffn {ffn_dim}, {num_layers} blocks; "
                                   f"FlashVSR's DiT has dim 1536, ffn 8960, 30 blocks (pass the config of a "
                                   f"flashvsr-q model of another size)")
        config = _OFFICIAL
    elif (dim, ffn_dim, num_layers) != (config.dim, config.ffn_dim, config.num_layers):
        raise ComfyFormatError(f"{source}: a DiT with dim {dim}, ffn {ffn_dim}, {num_layers} blocks, not the "
                               f"{config.name} architecture (dim {config.dim}, {config.num_layers} blocks)")
    with torch.device("meta"):
        dit = FlashVSR(config).dit
    return {k: tuple(v.shape) for k, v in dit.state_dict().items()}


def _layer(name, conf, tensors, shape, source) -> ComfyLayer:
    get = lambda leaf: tensors.get(f"{name}.{leaf}")  # noqa: E731
    weight, scale = get("weight"), get("weight_scale")
    if weight is None or scale is None:
        raise ComfyFormatError(f"{source}: {name} has a sidecar but no weight / weight_scale")
    n, k = shape
    if conf["format"] == "int8_tensorwise":
        ok = weight.dtype == torch.int8 and scale.dtype == torch.float32 and scale.numel() in (1, n)
        group = int(conf.get("convrot_groupsize", DEFAULT_GROUP)) if conf.get("convrot") else 0
        if group and (not is_power_of_4(group) or k % group):
            raise ComfyFormatError(f"{source}: {name}: convrot_groupsize {group} must be a power of 4 dividing {k}")
    else:
        ok = weight.dtype in (torch.float8_e4m3fn, torch.uint8) and scale.numel() == 1
        weight = weight.view(torch.float8_e4m3fn)
    if not ok or tuple(weight.shape) != (n, k):
        raise ComfyFormatError(f"{source}: {name}: {conf['format']} expects weight [{n}, {k}] and its scale, got "
                               f"{weight.dtype} {list(weight.shape)} with scale {scale.dtype} {list(scale.shape)}")
    return ComfyLayer(name, conf, weight, scale, get("bias"), get("input_scale"))


def _file_format(layers: dict[str, ComfyLayer], floats: dict[str, torch.Tensor]) -> str:
    if not layers:
        dtypes = {t.dtype for t in floats.values()}
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(
            next(iter(dtypes)), "mixed") if len(dtypes) == 1 else "mixed"
    labels = {("int8-convrot" if layer.group else "int8") if layer.format == "int8_tensorwise" else "fp8"
              for layer in layers.values()}
    return labels.pop() if len(labels) == 1 else "mixed"


def read_comfy(path: str | os.PathLike, config: FlashVSRConfig | None = None) -> ComfyDiT:
    """:func:`from_comfy` of a safetensors file; unreadable or truncated files are refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise ComfyFormatError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ComfyFormatError(f"{path}: not a readable safetensors file ({reason}; truncated?); "
                               f"flashvsr-q imports {SUPPORTED}") from None
    return from_comfy(tensors, metadata, config=config, source=str(path))


# ---------------------------------------------------------------------------------------------------------------
# running a file's layers
# ---------------------------------------------------------------------------------------------------------------


class Fp8Linear(nn.Module):
    """A ComfyUI ``float8_e4m3fn`` layer on an fp8-capable GPU: the activation is divided by ``input_scale``
    (1.0 when absent), clamped to +-448 and rounded to e4m3, then multiplied by the e4m3 weight (emulated here in
    fp32: exact products of two e4m3 values) and rescaled by ``input_scale * weight_scale``."""

    def __init__(self, layer: ComfyLayer, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.out_features, self.in_features = layer.weight.shape
        self.register_buffer("weight", layer.weight.to(device))
        self.register_buffer("weight_scale", layer.weight_scale.to(device, torch.float32).reshape(()))
        scale = layer.input_scale if layer.input_scale is not None else torch.tensor(1.0)
        self.register_buffer("input_scale", scale.to(device, torch.float32).reshape(()))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.to(device, dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = (x.float() / self.input_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        y = torch.nn.functional.linear(xq.float(), self.weight.float()) * (self.input_scale * self.weight_scale)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def build_linear(layer: ComfyLayer, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str = "cpu") -> nn.Module:
    """A module computing ``layer`` as ComfyUI does: int8 W8A8 (rotated when convrot) as :class:`ConvRotLinear`;
    ``full_precision_matrix_mult`` int8 as an ``nn.Linear`` holding the dequantized weight in ``dtype``; fp8 as
    :class:`Fp8Linear`."""
    n, k = layer.weight.shape
    if layer.format == "float8_e4m3fn":
        return Fp8Linear(layer, dtype, device)
    if layer.weight_only:
        weight = dequantize_weight(layer.weight, layer.weight_scale.reshape(-1, 1).expand(n, 1), layer.group) \
            if layer.group else layer.weight.float() * layer.weight_scale.float().reshape(-1, 1)
        linear = nn.Linear(k, n, bias=layer.bias is not None, device="meta")
        linear.weight = nn.Parameter(weight.to(device, dtype), requires_grad=False)
        if layer.bias is not None:
            linear.bias = nn.Parameter(layer.bias.to(device, dtype), requires_grad=False)
        return linear
    module = ConvRotLinear(k, n, layer.group, layer.bias is not None, dtype, device)
    return module.load_quantized(layer.weight, layer.weight_scale, layer.bias)


def apply_comfy(dit: nn.Module, file: ComfyDiT, dtype: torch.dtype = torch.bfloat16,
                device: torch.device | str = "cpu") -> nn.Module:
    """Fill ``dit`` (a FlashVSR DiT of the file's architecture, e.g. built on ``meta``) from ``file``: float tensors
    cast to ``dtype``, quantized Linears replaced by :func:`build_linear` modules. Returns ``dit``."""
    for name, layer in file.layers.items():
        parent, _, child = name.rpartition(".")
        setattr(dit.get_submodule(parent) if parent else dit, child, build_linear(layer, dtype, device))
    state = {k: v.to(device, dtype) for k, v in file.floats.items()}
    result = dit.load_state_dict(state, strict=False, assign=True)
    quantized = tuple(f"{n}." for n in file.layers)
    missing = [k for k in result.missing_keys if not k.startswith(quantized)]
    if missing or result.unexpected_keys:
        raise ComfyFormatError(f"the file does not fit this DiT (missing {missing[:3]}, "
                               f"unexpected {result.unexpected_keys[:3]})")
    return dit
