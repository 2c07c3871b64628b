"""Weight-only int8 / int4 for convolutions: the LQ projection's causal Conv3d and the TCDecoder's Conv2d.

torchao's and bitsandbytes' weight-only configs take ``nn.Linear`` only, and ComfyUI's format cannot carry a
quantized conv either, so the convolutions keep their float weights in every other scheme. Here a conv keeps its
class, its ``forward`` and its name; only its ``weight`` parameter is replaced by stored codes and scales that are
dequantized when the weight is read (one conv's weight in the compute dtype exists for the duration of the call):

    int8:  qweight  int8  [N, K]        K = in_channels * prod(kernel), symmetric
    int4:  qweight  uint8 [N, K / 2]    two signed 4-bit codes per byte, the even element in the low nibble
           weight_scale   [N, K / G]    one scale per group of G consecutive elements of a row (G = K: per output
                                        channel, int8 only), in the compute dtype (as torchao's weight-only does)
    bias                                unchanged

The weight is ``q * s`` reshaped to the conv's weight shape, so a conv subclass with its own ``forward`` (the LQ
projection's ``CausalConv3d``, which pads and concatenates its cache before calling ``nn.Conv3d.forward``) computes
exactly what it computed before, with the dequantized weight. Each group's scale is the one of :data:`CLIP_RATIOS`
times its abs-max with the lowest squared rounding error (``clip="mse"``), or the abs-max itself (``clip="absmax"``).
Groups matter for int8 too: the TCDecoder's first conv reads 16 latent channels and 768 LR-pixel channels whose
weights differ in scale, and one scale per output channel leaves it at 28 dB weight SNR on the small model.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

CLIP_RATIOS = tuple(round(0.60 + 0.02 * i, 2) for i in range(21))  # 0.60 .. 1.00 of the abs-max
QMAX = {8: 127, 4: 7}
QMIN = {8: -128, 4: -8}
_ROWS_PER_CHUNK = 64  # rows searched at once: bounds the temporaries on the 3072 x 73728 LQ conv


def group_for(k: int, group_size: int) -> int:
    """The group of a row of ``k`` elements: the largest of ``group_size``, ``group_size / 2``, ... (>= 8)
    that divides ``k``; 0 if none does."""
    group = group_size
    while group >= 8:
        if k % group == 0:
            return group
        group //= 2
    return 0


def _scales(rows: torch.Tensor, bits: int, clip: str) -> torch.Tensor:
    """Per-row scales of ``rows [R, G]`` (fp32): abs-max / qmax, or the MSE-best of :data:`CLIP_RATIOS` of it."""
    absmax = rows.abs().amax(dim=1, keepdim=True)
    best = (absmax / QMAX[bits]).clamp_min(1e-30)
    if clip == "absmax":
        return best
    best_err = torch.full_like(absmax, float("inf"))
    for r in CLIP_RATIOS:
        s = (r * absmax / QMAX[bits]).clamp_min(1e-30)
        err = (rows - s * rows.div(s).round().clamp(QMIN[bits], QMAX[bits])).square().sum(dim=1, keepdim=True)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, s, best)
    return best


def quantize_codes(weight: torch.Tensor, bits: int, group: int = 0, clip: str = "mse",
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [N, ...]`` -> (codes, fp32 scales ``[N, K / group]``): int8 ``[N, K]`` (``bits`` 8; ``group`` 0: one
    scale per row) or packed uint8 ``[N, K / 2]`` (``bits`` 4). Rows are processed in chunks (bounded memory)."""
    if bits not in QMAX or clip not in ("absmax", "mse"):
        raise ValueError(f"bits must be 8 or 4 and clip absmax or mse, got {bits}, {clip!r}")
    n = weight.shape[0]
    k = weight[0].numel()
    width = group or k
    if (bits == 4 and not group) or k % width or width % 2:
        raise ValueError(f"group {group} must be even and divide the row length {k} (int4 needs a group)")
    codes, scales = [], []
    for rows in weight.detach().reshape(n, k).split(_ROWS_PER_CHUNK):
        w = rows.float().reshape(-1, width)  # [R * K / width, width]
        s = _scales(w, bits, clip)
        q = w.div(s).round().clamp(QMIN[bits], QMAX[bits]).to(torch.int8).reshape(rows.shape[0], k)
        codes.append(q if bits == 8 else pack_int4(q))
        scales.append(s.reshape(rows.shape[0], -1))
    return torch.cat(codes), torch.cat(scales)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Signed codes in [-8, 7] ``[N, K]`` (K even) -> uint8 ``[N, K / 2]``, element 2j in the low nibble."""
    u = q.to(torch.uint8) & 0xF
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: int8 codes ``[N, 2 * K']``."""
    low = (packed & 0xF).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    out = torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)
    return (out ^ 8) - 8  # sign-extend the 4-bit two's complement


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """``[N, K]`` weight in ``dtype`` from :func:`quantize_codes`' codes and scales (scales already in any float)."""
    q = codes if bits == 8 else unpack_int4(codes)
    n, k = q.shape
    groups = scale.shape[1]
    return (q.to(dtype).reshape(n, groups, k // groups) * scale.to(dtype).reshape(n, groups, 1)).reshape(n, k)


# ---------------------------------------------------------------------------------------------------------------
# the module: the same conv, its weight stored quantized
# ---------------------------------------------------------------------------------------------------------------


class WeightOnlyMixin:
    """Placed in front of a conv class: ``weight`` becomes a read-only property that dequantizes the ``qweight``
    / ``weight_scale`` buffers into the scales' dtype (the compute dtype; ``model.to(dtype)`` casts them)."""

    bits: int
    weight_shape: tuple[int, ...]

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_codes(self.qweight, self.weight_scale, self.bits,
                                self.weight_scale.dtype).reshape(self.weight_shape)

    def extra_repr(self) -> str:
        group = self.weight_shape[1:].numel() // self.weight_scale.shape[1]
        return f"{super().extra_repr()}, int{self.bits} weight-only (group {group})"


@functools.cache
def quantized_class(base: type[nn.Module]) -> type[nn.Module]:
    """``WeightOnly<base>``: :class:`WeightOnlyMixin` in front of ``base`` (one class per base, cached)."""
    return type(f"WeightOnly{base.__name__}", (WeightOnlyMixin, base), {"__module__": __name__})


def is_weight_only(module: nn.Module) -> bool:
    return isinstance(module, WeightOnlyMixin)


def _convert(module: nn.Module, codes: torch.Tensor, scale: torch.Tensor, bits: int) -> nn.Module:
    shape = tuple(module.weight.shape)
    del module.weight  # the Parameter; from now on ``weight`` is the class's property
    module.__class__ = quantized_class(type(module))
    module.bits, module.weight_shape = bits, torch.Size(shape)
    module.register_buffer("qweight", codes)
    module.register_buffer("weight_scale", scale)
    return module


@torch.no_grad()
def to_weight_only(module: nn.Module, bits: int, group_size: int = 64, clip: str = "mse") -> nn.Module:
    """Quantize ``module``'s weight in place (its class gains :class:`WeightOnlyMixin`); returns it. The scales take
    the weight's dtype, the codes its device."""
    weight = module.weight
    group = group_for(weight[0].numel(), group_size) if group_size else 0
    if group_size and not group:
        raise ValueError(f"no group of 8 or more divides the row length {weight[0].numel()}")
    codes, scale = quantize_codes(weight, bits, group, clip)
    return _convert(module, codes.to(weight.device), scale.to(weight.device, weight.dtype), bits)


def empty_weight_only(module: nn.Module, bits: int, group_size: int, dtype: torch.dtype,
                      device: torch.device | str) -> nn.Module:
    """``module`` (a float conv, e.g. on ``meta``) converted to hold empty codes and scales of the right shapes, to
    be filled by ``load_state_dict(assign=True)``."""
    n, k = module.weight.shape[0], module.weight[0].numel()
    group = group_for(k, group_size) if group_size else k
    codes = torch.empty(n, k if bits == 8 else k // 2, dtype=torch.int8 if bits == 8 else torch.uint8, device=device)
    scale = torch.empty(n, k // group, dtype=dtype, device=device)
    return _convert(module, codes, scale, bits)


def stored_bytes(shape: tuple[int, ...], bits: int, group_size: int, scale_bytes: int = 2) -> int:
    """Bytes of the codes and scales of a weight of ``shape`` (for size estimates)."""
    n, k = shape[0], math.prod(shape[1:])
    groups = k // group_for(k, group_size) if group_size else 1
    return n * k * bits // 8 + n * groups * scale_bytes


def float_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with float weights under their original keys: weight-only convs dequantized
    (``qweight`` / ``weight_scale`` -> ``weight``) and torchao weights dequantized (for float file formats)."""
    state = {}
    for key, value in module.state_dict().items():
        owner_name, _, leaf = key.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if is_weight_only(owner) and leaf in ("qweight", "weight_scale"):
            if leaf == "qweight":
                state[f"{owner_name}.weight" if owner_name else "weight"] = owner.weight.detach()
            continue
        state[key] = value.dequantize() if type(value) is not torch.Tensor and hasattr(value, "dequantize") else value
    return state
