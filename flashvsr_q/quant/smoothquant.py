"""SmoothQuant (Xiao et al., ICML 2023): move activation outliers into the weights with an exact rescaling.

For a linear ``y = x W^T + b`` with input channel j, pick ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)`` and run
``y = (x / s) (W diag(s))^T + b``: the product is unchanged, the activation's outlier channels shrink by ``s`` and
the weight columns grow by it. ``alpha`` trades one difficulty for the other (0.5 by default, as in the paper and
torchao's prototype; ModelOpt uses 0.8 for SDXL, ViDiT-Q 0.11 at W4A8).

Where ``1 / s`` goes at run time, in FlashVSR's DiT blocks:

- ``self_attn.o`` / ``cross_attn.o``: folded into the sibling ``v`` projection (rows and bias of ``v`` divided by
  ``s``). Exact, because attention output channel j is a convex combination of ``v``'s channel j (heads are
  concatenated in the same order); free at run time. :func:`apply_smoothing` does this with ``fold=True``.
- everything else (``q/k/v`` after adaLN ``modulate``, ``cross_attn.q`` after the affine ``norm3``, ``ffn.0``
  after ``modulate``, ``ffn.2`` after GELU): a pre-scale ``x * (1/s)`` on the linear's input. ``q/k/v`` could in
  principle share one ``s`` folded into the adaLN modulation (the timestep is fixed in one-step FlashVSR), but
  that couples three layers and the modulation parameters; GELU is not homogeneous, so ``ffn.2`` cannot fold.

Cost of the pre-scale: one elementwise multiply over the input, ``B*L*in`` multiplies and one extra read and
write of the activation (memory-bound, about ``1/out_features`` of the GEMM's FLOPs). In the int8 path it is
torchao's ``Int8Tensor.act_pre_scale`` (what ``quantize_model`` sets from the statistics); under ``torch.compile``
inductor fuses it with the activation quantization that follows, so it costs no extra pass. :class:`SmoothedLinear`
is the same thing for a float model (tests, sensitivity runs, schemes without ``act_pre_scale``).

torchao's ``prototype.smoothquant.SmoothQuantConfig`` computes the same factors (same epsilon) but swaps every
linear for an observed module that keeps all inputs in RAM (or a running abs-max) and converts in the same
process. flashvsr-q needs the factors in a statistics file, a per-layer alpha and the first/later-chunk streaming
driver, so only the formula and the ``act_pre_scale`` mechanism are shared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn as nn

EPS = torch.finfo(torch.float32).eps  # torchao SmoothQuantObserver's epsilon


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant factors ``s`` [in_features] for one linear.

    Args:
        act_absmax: [in_features] max |x_j| over the calibration set.
        weight: [out_features, in_features] (float).
        alpha: migration strength in [0, 1]; 0 leaves activations alone (s = 1/max|W_j|), 1 moves all to weights.
    Returns:
        s > 0, float32; channels that never fired or whose weight column is zero get s = 1.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    if act_absmax.shape != weight.shape[1:]:
        raise ValueError(f"act_absmax {tuple(act_absmax.shape)} does not match weight {tuple(weight.shape)}")
    x = act_absmax.detach().float().cpu()
    w = weight.detach().float().abs().amax(dim=0).cpu()
    s = (x + EPS).pow(alpha) / (w + EPS).pow(1.0 - alpha)
    dead = (x == 0) | (w == 0) | ~torch.isfinite(s) | (s <= 0)
    return torch.where(dead, torch.ones_like(s), s)


def alpha_for(fqn: str, default: float, overrides: Mapping[str, float] | None = None) -> float:
    """The alpha of layer ``fqn``: the first pattern in ``overrides`` that fully matches it, else ``default``.

    Patterns are regular expressions matched with ``re.fullmatch`` (the recipe convention: first match wins).
    """
    for pattern, alpha in (overrides or {}).items():
        if re.fullmatch(pattern, fqn):
            return float(alpha)
    return float(default)


class SmoothedLinear(nn.Module):
    """``linear(x * inv_scale)`` where ``linear``'s weight columns were already multiplied by ``s``.

    Exact in exact arithmetic; in fp32 the output matches the original layer to rounding (~1e-6 relative).
    """

    def __init__(self, linear: nn.Linear, smoothing: torch.Tensor):
        super().__init__()
        s = smoothing.detach().to(linear.weight.device, torch.float32)
        with torch.no_grad():
            linear.weight.mul_(s.to(linear.weight.dtype))
        self.linear = linear
        self.register_buffer("inv_scale", s.reciprocal().to(linear.weight.dtype))

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)

    def unsmoothed(self) -> nn.Linear:
        """The original layer back (weights divided by ``s`` again; exact up to rounding)."""
        with torch.no_grad():
            self.linear.weight.mul_(self.inv_scale)
        return self.linear


def _fold_target(model: nn.Module, fqn: str) -> nn.Linear | None:
    """The ``v`` projection whose output feeds ``fqn`` (an attention ``o``) channel for channel, or None."""
    parent_name, _, leaf = fqn.rpartition(".")
    if leaf != "o" or not parent_name:
        return None
    parent = model.get_submodule(parent_name)
    if type(parent).__name__ not in ("SelfAttention", "CrossAttention"):
        return None
    v = getattr(parent, "v", None)
    v = v.linear if isinstance(v, SmoothedLinear) else v  # row scaling commutes with v's own column smoothing
    if type(v) is not nn.Linear or v.out_features != parent.o.in_features:
        return None
    return v


@torch.no_grad()
def apply_smoothing(model: nn.Module, smoothing: Mapping[str, torch.Tensor], fold: bool = True) -> dict[str, str]:
    """Apply SmoothQuant factors to a float model in place; the model computes the same function afterwards.

    Args:
        smoothing: fqn of an ``nn.Linear`` -> s [in_features].
        fold: fold ``1/s`` of attention ``o`` layers into their ``v`` projection (free at run time); otherwise,
            and for every other layer, the layer becomes a :class:`SmoothedLinear` (a pre-scale).
    Returns:
        fqn -> ``"folded"`` or ``"prescale"``.
    """
    how = {}
    for fqn, s in smoothing.items():
        linear = model.get_submodule(fqn)
        if type(linear) is not nn.Linear:
            raise ValueError(f"{fqn} is a {type(linear).__name__}, SmoothQuant applies to nn.Linear")
        if s.shape != (linear.in_features,):
            raise ValueError(f"{fqn}: smoothing of shape {tuple(s.shape)} for {linear.in_features} input features")
        v = _fold_target(model, fqn) if fold else None
        if v is not None:
            s32 = s.to(linear.weight.device, torch.float32)
            v.weight.div_(s32[:, None].to(v.weight.dtype))
            if v.bias is not None:
                v.bias.div_(s32.to(v.bias.dtype))
            linear.weight.mul_(s32.to(linear.weight.dtype))
            how[fqn] = "folded"
        else:
            model.set_submodule(fqn, SmoothedLinear(linear, s))
            how[fqn] = "prescale"
    return how
