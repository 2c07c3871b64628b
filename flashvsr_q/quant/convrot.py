"""ConvRot: group-wise regular-Hadamard rotation before int8 (W8A8) or int4 (W4A8) quantization of a Linear.

Each ``G``-wide group of input features (``G`` a power of 4, 256 by default) is multiplied by the normalized
*regular* Hadamard matrix ``H_G = kron(H4, ..., H4) / sqrt(G)`` with ``H4 = [[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],
[-1,1,1,1]]``. ``H_G`` is symmetric and orthogonal (``H @ H = I``), so ``x @ W.T = rot(x) @ rot(W).T``: the weight
is rotated offline, the activation at run time, and outliers of either are spread over their group before
rounding. This is exactly ComfyUI's ``int8_tensorwise`` + ``convrot`` layout (shared notes, interop-formats §1.6):

- weight: ``W_rot`` quantized symmetrically per output row, ``q = clamp(round(W_rot / s), -128, 127)`` int8
  ``[N, K]``, ``s = max|W_rot row| / 127`` fp32 ``[N, 1]`` (or a smaller, MSE-optimal clipped ``s``: any per-row
  scale is format-compatible);
- activation: ``x_rot`` (in the activation dtype) quantized per token, symmetric, dynamic (``absmax / 127``);
- ``y = (int32 GEMM) * s_x * s_w`` in fp32, cast once to the activation dtype, then ``+ bias``.

Implementations used:

- The pure PyTorch path here (rotation by a batched matmul, ``torch._int_mm`` int8 GEMM with int32 accumulation) is
  the CPU path and the reference. It reproduces comfy-kitchen's eager ``int8_linear`` operation for operation
  (rounding in the activation dtype, zero scales, the fp32 rescale), so its outputs are bit-identical to what
  ComfyUI computes on its portable path; ``tests/quant/test_convrot.py`` checks that against comfy-kitchen.
- On CUDA, :func:`convrot_linear` calls comfy-kitchen's ``int8_linear`` (``comfy_kitchen`` on PyPI, Apache-2.0,
  the library ComfyUI itself runs): its fused rotate+quantize kernel (G = 256, 256 <= K <= 16384) or Triton, and
  cuBLASLt int8 GEMM. Without comfy-kitchen it falls back to the same PyTorch path (``torch._int_mm`` on CUDA).
- W4A8: comfy-kitchen's ``asym_w4a8_int8`` layout (``quantize_w4a8_int8_weight`` / ``w4a8_int8_linear``: rotated
  weights in 4-bit groups with fp8 relative scales and a Lloyd-Max codebook, int8 activations); it has an eager
  (CPU) and a Triton/CUDA backend. No torchao kernel composes a rotation with W4A8, so without comfy-kitchen the
  scheme is refused.

Calibrated clipping: ``clip="mse"`` searches each row's scale over ``CLIP_RATIOS`` of its absmax for the lowest
weighted squared error ``sum_j c_j (W_rot - s q)_j^2``. Without statistics ``c = 1``; with the per-channel input
abs-max of ``flashvsr-q calibrate`` (``a_k``), ``c_j`` is the rotated activation energy ``sum_k H_kj^2 a_k^2 =
mean of a_k^2 over j's group`` (exact for uncorrelated channels), so rows are clipped where their error meets
large activations. GPTQ-style rounding would need the full input covariance, which the statistics file does not
hold.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

H4 = ((1, 1, 1, -1), (1, 1, -1, 1), (1, -1, 1, 1), (-1, 1, 1, 1))
DEFAULT_GROUP = 256
CLIP_RATIOS = tuple(round(0.60 + 0.01 * i, 2) for i in range(41))  # 0.60 .. 1.00 of each row's absmax
_ROWS_PER_CHUNK = 512  # rows searched at once: bounds the [rows, K] temporaries of the clip search


# ---------------------------------------------------------------------------------------------------------------
# the rotation
# ---------------------------------------------------------------------------------------------------------------


def is_power_of_4(n: int) -> bool:
    return n >= 4 and n & (n - 1) == 0 and (n.bit_length() - 1) % 2 == 0


@functools.lru_cache(maxsize=16)
def _hadamard_fp64(size: int) -> torch.Tensor:
    h4 = torch.tensor(H4, dtype=torch.float64)
    h = h4
    while h.shape[0] < size:
        h = torch.kron(h, h4)
    return h / size**0.5


def hadamard(size: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalized regular Hadamard matrix ``[size, size]`` (symmetric, orthogonal; ``size`` a power of 4)."""
    if not is_power_of_4(size):
        raise ValueError(f"ConvRot group size must be a power of 4 (4, 16, 64, 256, 1024), got {size}")
    return _hadamard_fp64(size).to(device=device, dtype=dtype)


def group_for(in_features: int, max_group: int = DEFAULT_GROUP) -> int:
    """The ConvRot group of a layer: the largest power of 4 <= ``max_group`` that divides ``in_features``
    (256 for every FlashVSR DiT Linear; 64 for the small and test models); 0 if none does (K not a multiple of 4)."""
    if not is_power_of_4(max_group):
        raise ValueError(f"ConvRot group size must be a power of 4, got {max_group}")
    group = max_group
    while group >= 4:
        if in_features % group == 0:
            return group
        group //= 4
    return 0


def rotate(x: torch.Tensor, group: int) -> torch.Tensor:
    """``x[..., K]`` with every ``group``-wide slice of the last axis multiplied by ``H_group``, in ``x``'s dtype.
    Its own inverse (``rotate(rotate(x)) == x`` up to rounding): it rotates activations, rotated weights back, and
    weights (``W @ H.T == W @ H``)."""
    k = x.shape[-1]
    if k % group:
        raise ValueError(f"ConvRot group {group} does not divide {k} features")
    h = hadamard(group, x.dtype, x.device)
    return torch.matmul(x.reshape(-1, k // group, group), h).reshape(x.shape)


# ---------------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------------


def _round_int8(scaled: torch.Tensor) -> torch.Tensor:
    return scaled.round().clamp(-128, 127).to(torch.int8)


def rotated_channel_weights(input_absmax: torch.Tensor, group: int) -> torch.Tensor:
    """Per-column weights ``c [K]`` of the clip search in the rotated basis: the mean of ``input_absmax**2`` over
    each group (a 0-d abs-max gives uniform weights)."""
    a2 = input_absmax.detach().double().pow(2)
    if a2.ndim == 0:
        raise ValueError("per-tensor statistics carry no per-channel weighting")
    k = a2.numel()
    return a2.reshape(k // group, group).mean(dim=1, keepdim=True).expand(k // group, group).reshape(k).float()


def mse_row_scales(w_rot: torch.Tensor, column_weights: torch.Tensor | None = None,
                   ratios: tuple[float, ...] = CLIP_RATIOS) -> torch.Tensor:
    """Per-row int8 scales ``[N, 1]`` (fp32) minimizing ``sum_j c_j (w - s * q(w / s))_j^2`` over ``s = r * absmax
    / 127`` for each ``r`` in ``ratios`` (1.0 included, so never worse than absmax on that objective)."""
    w = w_rot.detach().float()
    c = None if column_weights is None else column_weights.to(w.device, torch.float32).reshape(1, -1)
    scales = []
    for rows in w.split(_ROWS_PER_CHUNK):
        absmax = rows.abs().amax(dim=1, keepdim=True)
        best_err = torch.full_like(absmax, float("inf"))
        best = (absmax / 127).clamp_min(1e-30)
        for r in ratios:
            s = (r * absmax / 127).clamp_min(1e-30)
            err = rows - s * rows.div(s).round().clamp(-128, 127)
            err = (err.square() * c if c is not None else err.square()).sum(dim=1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, s, best)
        scales.append(best)
    return torch.cat(scales)


def quantize_weight(weight: torch.Tensor, group: int, clip: str = "absmax",
                    input_absmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``weight [N, K]`` (in fp32) and quantize it per output row.

    Args:
        clip: ``"absmax"`` (ComfyUI's own rule, ``s = max|row| / 127``) or ``"mse"`` (:func:`mse_row_scales`).
        input_absmax: ``[K]`` calibration abs-max of the layer input; with ``clip="mse"`` it weights the error.
    Returns:
        ``(q int8 [N, K], scale fp32 [N, 1])`` in the rotated basis.
    """
    if clip not in ("absmax", "mse"):
        raise ValueError(f"clip must be 'absmax' or 'mse', got {clip!r}")
    w_rot = rotate(weight.detach().float(), group)
    if clip == "absmax":
        scale = (w_rot.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-30)
    else:
        weights = None
        if input_absmax is not None and input_absmax.ndim == 1:
            weights = rotated_channel_weights(input_absmax, group)
        scale = mse_row_scales(w_rot, weights)
    return _round_int8(w_rot / scale), scale.float()


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """The fp32 weight ``[N, K]`` in the original basis: ``rotate(q * s)``."""
    return rotate(q.float() * scale.float().reshape(-1, 1), group)


# ---------------------------------------------------------------------------------------------------------------
# activations and the int8 linear
# ---------------------------------------------------------------------------------------------------------------


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (token) symmetric int8 of ``x [M, K]``: ``(q int8 [M, K], scale fp32 [M, 1])``. The division runs in
    ``x``'s dtype with the scale cast to it and zero scales replaced by the dtype's tiny, as comfy-kitchen does."""
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / 127.0).clamp(min=1e-30)
    divisor = scale.to(x.dtype)
    divisor = torch.where(divisor == 0, torch.full_like(divisor, torch.finfo(x.dtype).tiny), divisor)
    return _round_int8(x / divisor), scale


def _int8_gemm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a [M, K] @ b_t.T`` with int32 accumulation (``b_t`` is ``[N, K]``). ``torch._int_mm`` on CPU takes any
    shape; on CUDA it needs M > 16 and K, N multiples of 8, so other shapes are zero-padded."""
    b = b_t.t()
    if a.is_cuda:
        m, k = a.shape
        n = b.shape[1]
        pm, pk, pn = max(32, -(-m // 8) * 8) - m, -k % 8, -n % 8
        if pm or pk or pn:
            a = torch.nn.functional.pad(a, (0, pk, 0, pm))
            b = torch.nn.functional.pad(b, (0, pn, 0, pk))
            return torch._int_mm(a, b.contiguous())[:m, :n]
    return torch._int_mm(a, b.contiguous())


def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                          group: int) -> torch.Tensor:
    """``x [..., K] @ W.T + bias`` as ComfyUI computes an ``int8_tensorwise`` layer (``group`` 0: no rotation),
    in pure PyTorch; the result has ``x``'s dtype."""
    if group:
        x = rotate(x, group)
    shape = x.shape
    xq, xs = quantize_tokens(x.reshape(-1, shape[-1]))
    acc = _int8_gemm(xq, q.to(x.device))
    out = (acc.float() * (xs * scale.to(x.device, torch.float32).reshape(1, -1))).to(x.dtype)
    if bias is not None:
        out = out + bias.to(out.device, out.dtype).reshape(1, -1)
    return out.reshape(*shape[:-1], q.shape[0])


def _comfy_kitchen():
    """comfy-kitchen, or None. Imported on first use: it loads native CUDA extensions."""
    try:
        import comfy_kitchen
    except Exception:  # a broken native library raises more than ImportError
        return None
    return comfy_kitchen


def convrot_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                   group: int) -> torch.Tensor:
    """The run-time ConvRot int8 linear: comfy-kitchen's ``int8_linear`` on CUDA when installed (fused kernels),
    else :func:`int8_linear_reference`."""
    ck = _comfy_kitchen() if x.is_cuda else None
    if ck is not None:
        return ck.int8_linear(x.contiguous(), q, scale, bias, x.dtype, convrot=group > 0,
                              convrot_groupsize=group or DEFAULT_GROUP)
    return int8_linear_reference(x, q, scale, bias, group)


# ---------------------------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------------------------


class ConvRotLinear(nn.Module):
    """A Linear holding ComfyUI ``int8_tensorwise`` tensors: ``weight`` int8 ``[N, K]`` (rotated when ``group`` >
    0), ``weight_scale`` fp32 ``[N, 1]``, ``bias`` in the compute dtype. ``group`` 0 is plain per-row int8 W8A8."""

    def __init__(self, in_features: int, out_features: int, group: int, bias: bool = True,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None):
        super().__init__()
        if group and (not is_power_of_4(group) or in_features % group):
            raise ValueError(f"ConvRot group {group} must be a power of 4 dividing in_features {in_features}")
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int, clip: str = "absmax",
                    input_absmax: torch.Tensor | None = None) -> ConvRotLinear:
        """Quantize ``linear`` (see :func:`quantize_weight`); the bias keeps the Linear's dtype."""
        dtype, device = linear.weight.dtype, linear.weight.device
        module = cls(linear.in_features, linear.out_features, group, linear.bias is not None, dtype, device)
        if group:
            q, scale = quantize_weight(linear.weight, group, clip, input_absmax)
        else:
            w = linear.weight.detach().float()
            scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-30)
            q = _round_int8(w / scale)
        return module.load_quantized(q, scale, linear.bias)

    def load_quantized(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> ConvRotLinear:
        """Fill the module from stored tensors (a checkpoint or a ComfyUI file); shapes are checked."""
        if q.dtype != torch.int8 or tuple(q.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must be int8 {[self.out_features, self.in_features]}, "
                             f"got {q.dtype} {list(q.shape)}")
        if scale.numel() not in (1, self.out_features):
            raise ValueError(f"weight_scale must be scalar or [{self.out_features}, 1], got {list(scale.shape)}")
        device = self.weight.device
        self.weight = q.to(device)
        self.weight_scale = scale.to(device, torch.float32).reshape(-1, 1).expand(self.out_features, 1).contiguous()
        if self.bias is not None:
            if bias is None:
                raise ValueError("a bias is expected")
            self.bias = nn.Parameter(bias.detach().to(device, self.bias.dtype), requires_grad=False)
        return self

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 weight in the original basis (what the int8 tensors stand for)."""
        return dequantize_weight(self.weight, self.weight_scale, self.group) if self.group else (
            self.weight.float() * self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convrot_linear(x, self.weight, self.weight_scale, self.bias, self.group)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}"


class ConvRotW4A8Linear(nn.Module):
    """ConvRot W4A8 through comfy-kitchen's ``asym_w4a8_int8`` layout: 4-bit codes in ``group_size`` groups of the
    rotated weight (``qdata`` int8 ``[N, K/2]``, ``s_rel`` fp8 ``[N, K/group_size]``, ``s_channel`` fp32 ``[N]``,
    a 16-entry ``codebook``), int8 per-token activations."""

    def __init__(self, in_features: int, out_features: int, group: int, group_size: int = 16, bias: bool = True,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group, self.group_size = in_features, out_features, group, group_size
        self.register_buffer("qdata", torch.zeros(out_features, in_features // 2, dtype=torch.int8, device=device))
        self.register_buffer("s_rel", torch.zeros(out_features, in_features // group_size, dtype=torch.float8_e4m3fn,
                                                  device=device))
        self.register_buffer("s_channel", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("codebook", torch.zeros(16, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None

    TENSORS = ("qdata", "s_rel", "s_channel", "codebook")

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int, group_size: int = 16) -> ConvRotW4A8Linear:
        ck = _comfy_kitchen()
        if ck is None:
            raise RuntimeError("ConvRot W4A8 needs comfy-kitchen (pip install comfy-kitchen)")
        weight = linear.weight.detach()
        qdata, s_rel, s_channel, correction, codebook = ck.quantize_w4a8_int8_weight(
            weight.float(), group_size=group_size, convrot_groupsize=group)
        if correction is not None or codebook is None:  # the symmetric codebook layout has neither variant
            raise RuntimeError("comfy-kitchen returned an unexpected W4A8 layout (correction term or no codebook)")
        module = cls(linear.in_features, linear.out_features, group, group_size, linear.bias is not None,
                     weight.dtype, weight.device)
        return module.load_quantized({"qdata": qdata, "s_rel": s_rel, "s_channel": s_channel, "codebook": codebook},
                                     linear.bias)

    def load_quantized(self, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None) -> ConvRotW4A8Linear:
        for name in self.TENSORS:
            current, new = getattr(self, name), tensors[name]
            if new.dtype != current.dtype or new.shape != current.shape:
                raise ValueError(f"{name} must be {current.dtype} {list(current.shape)}, got {new.dtype} "
                                 f"{list(new.shape)}")
            setattr(self, name, new.to(current.device))
        if self.bias is not None:
            if bias is None:
                raise ValueError("a bias is expected")
            self.bias = nn.Parameter(bias.detach().to(self.qdata.device, self.bias.dtype), requires_grad=False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ck = _comfy_kitchen()
        if ck is None:
            raise RuntimeError("ConvRot W4A8 needs comfy-kitchen (pip install comfy-kitchen)")
        return ck.w4a8_int8_linear(x, self.qdata, self.s_rel, self.s_channel, self.codebook, None, self.bias,
                                   self.group_size, self.group, x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}, "
                f"group_size={self.group_size}")
