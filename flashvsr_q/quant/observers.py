"""Activation observers: what range a static int8 activation scale should cover, from a stream of tensors.

Every observer sees the input of one ``nn.Linear`` chunk by chunk and keeps O(channels + bins) memory, however
long the calibration runs. Two kinds of statistics are kept per layer (:class:`LayerObserver`):

- the per-channel max |x| ([in_features], always exact): SmoothQuant needs it;
- a per-tensor clipping range ``clip`` for the static scale ``clip / 127``, chosen by a :class:`RangeObserver`:

  ``minmax``      the exact max |x| (torchao ``AffineQuantizedMinMaxObserver``, ViDiT-Q, bnb absmax);
  ``percentile``  the p-th percentile of |x| (ModelOpt's percentile collection), from a histogram;
  ``mse``         the clip that minimises the expected squared error of symmetric int8 quantization of the
                  observed |x| distribution (torchao ``AffineQuantizedMSEObserver`` searches the same way).

The histogram (:class:`AbsHistogram`) has a fixed number of bins over ``[0, R]``; when a larger value arrives,
``R`` doubles (as often as needed) and pairs of bins merge, which is exact because the bin edges stay aligned.
Its resolution is therefore always better than ``max|x| / (bins / 2)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

INT8_MAX = 127  # symmetric int8 grid: scale = clip / 127 (torchao's static int8 clamps to [-128, 127])

# ---------------------------------------------------------------------------------------------------------------
# the histogram
# ---------------------------------------------------------------------------------------------------------------


class AbsHistogram:
    """Histogram of |x| over ``[0, R]`` with ``bins`` equal bins; ``R`` grows by powers of two (exact merges).

    Args:
        bins: number of bins, a power of two (2048 by default: 8 KiB of counts per layer).
    """

    def __init__(self, bins: int = 2048):
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.range = 0.0  # R; 0 until the first non-zero value
        self.max = 0.0  # exact max |x| seen
        self.total = 0  # values seen (zeros included)

    def update(self, x: torch.Tensor) -> None:
        a = x.detach().float().abs().flatten()
        if a.numel() == 0:
            return
        peak = float(a.max())
        if not math.isfinite(peak):
            raise ValueError("non-finite activation values reached an observer")
        self.total += a.numel()
        self.max = max(self.max, peak)
        if peak == 0.0:
            self.counts[0] += a.numel()
            return
        if self.range == 0.0:
            self.range = 2.0 ** math.ceil(math.log2(peak))
        elif peak > self.range:
            self._grow(math.ceil(math.log2(peak / self.range)))
        # histc puts values == range into the last bin and ignores nothing here (all values are in [0, R])
        self.counts += torch.histc(a, bins=self.bins, min=0.0, max=self.range).to(torch.float64).cpu()

    def _grow(self, doublings: int) -> None:
        """R *= 2**doublings; groups of 2**doublings adjacent bins merge into one (edges stay aligned)."""
        group = 2 ** doublings
        if group >= self.bins:
            merged = self.counts.sum().reshape(1)
        else:
            merged = self.counts.view(-1, group).sum(dim=1)
        self.counts = torch.cat([merged, torch.zeros(self.bins - merged.numel(), dtype=torch.float64)])
        self.range *= group

    @property
    def bin_width(self) -> float:
        return self.range / self.bins

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0 < q <= 100) of |x|, linear within the bin; exact max for q = 100."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {q}")
        if self.total == 0:
            raise ValueError("the observer has seen no values")
        if q == 100 or self.range == 0.0:
            return self.max
        target = q / 100 * self.total
        cumulative = torch.cumsum(self.counts, 0)
        index = min(int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64))), self.bins - 1)
        before = float(cumulative[index - 1]) if index > 0 else 0.0
        inside = float(self.counts[index])
        fraction = (target - before) / inside if inside > 0 else 1.0
        return min((index + fraction) * self.bin_width, self.max)

    def quantization_mse(self, clips: torch.Tensor, levels: int = INT8_MAX) -> torch.Tensor:
        """Expected squared error per value of symmetric quantization with ``levels`` steps up to each clip.

        Values are taken as uniform within each bin (the histogram's own model of the data), and the error is
        integrated exactly: rounding error below the clip (a sawtooth, integrated in closed form), clipping error
        ``(x - clip)^2`` above it. Args: clips [K]. Returns: [K] (float64).
        """
        occupied = torch.nonzero(self.counts).flatten()
        lo = (occupied.to(torch.float64) * self.bin_width)[None]  # [1, B] bin edges
        hi = lo + self.bin_width
        counts = self.counts[occupied][None]
        clips = clips.to(torch.float64)[:, None]  # [K, 1]
        step = clips / levels
        top = torch.minimum(hi, clips)  # rounding part: [lo, min(hi, clip)]
        rounding = step ** 3 * (_sawtooth_integral(top / step + 0.5) - _sawtooth_integral(lo / step + 0.5))
        rounding = torch.where(top > lo, rounding, torch.zeros_like(rounding))
        start = torch.maximum(lo, clips)  # clipping part: [max(lo, clip), hi]
        clipping = torch.where(hi > start, ((hi - clips) ** 3 - (start - clips) ** 3) / 3, torch.zeros_like(hi))
        per_bin = (rounding + clipping) / self.bin_width  # mean squared error of a value in the bin
        return (per_bin * counts).sum(dim=1) / max(self.total, 1)

    def mse_clip(self, steps: int = 100, levels: int = INT8_MAX) -> float:
        """The clip in ``{max * i / steps, i = 1..steps}`` with the least expected int8 error (ties: larger clip)."""
        if self.total == 0:
            raise ValueError("the observer has seen no values")
        if self.max == 0.0:
            return 0.0
        clips = self.max * torch.arange(1, steps + 1, dtype=torch.float64) / steps
        errors = self.quantization_mse(clips, levels)
        best = int(torch.nonzero(errors <= errors.min() * (1 + 1e-9)).max())
        return float(clips[best])


def _sawtooth_integral(z: torch.Tensor) -> torch.Tensor:
    """P(z) = integral from 0 to z of (frac(w) - 1/2)^2 dw: 1/12 per whole period plus the partial one."""
    whole = torch.floor(z)
    f = z - whole
    return whole / 12 + ((f - 0.5) ** 3 + 0.125) / 3


# ---------------------------------------------------------------------------------------------------------------
# range observers (per tensor)
# ---------------------------------------------------------------------------------------------------------------


class RangeObserver:
    """Per-tensor clipping range of a stream of tensors. ``update(x)`` then ``clip() -> float``."""

    name: ClassVar[str]

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def clip(self) -> float:
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON-able settings, recorded in the statistics file."""
        return {"observer": self.name}


class MinMaxObserver(RangeObserver):
    """The exact max |x|: no clipping, every observed value is representable."""

    name = "minmax"

    def __init__(self) -> None:
        self.max = 0.0
        self.seen = False

    def update(self, x: torch.Tensor) -> None:
        if x.numel():
            self.max = max(self.max, float(x.detach().abs().max()))
            self.seen = True

    def clip(self) -> float:
        if not self.seen:
            raise ValueError("the observer has seen no values")
        return self.max


class PercentileObserver(RangeObserver):
    """The ``percentile``-th percentile of |x| over everything seen (from an :class:`AbsHistogram`)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = 2048):
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile, self.histogram = percentile, AbsHistogram(bins)

    def update(self, x: torch.Tensor) -> None:
        self.histogram.update(x)

    def clip(self) -> float:
        return self.histogram.percentile(self.percentile)

    def settings(self) -> dict:
        return {"observer": self.name, "percentile": self.percentile, "bins": self.histogram.bins}


class MSEObserver(RangeObserver):
    """The clip (a fraction ``i / steps`` of max |x|) minimising the expected int8 quantization error."""

    name = "mse"

    def __init__(self, steps: int = 100, bins: int = 2048):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps, self.histogram = steps, AbsHistogram(bins)

    def update(self, x: torch.Tensor) -> None:
        self.histogram.update(x)

    def clip(self) -> float:
        return self.histogram.mse_clip(self.steps)

    def settings(self) -> dict:
        return {"observer": self.name, "steps": self.steps, "bins": self.histogram.bins}


OBSERVERS: dict[str, type[RangeObserver]] = {c.name: c for c in (MinMaxObserver, PercentileObserver, MSEObserver)}


def make_observer(name: str, percentile: float = 99.99, bins: int = 2048, steps: int = 100) -> RangeObserver:
    """A fresh observer called ``name`` (``minmax``, ``percentile``, ``mse``); unknown names list the valid ones."""
    if name == "minmax":
        return MinMaxObserver()
    if name == "percentile":
        return PercentileObserver(percentile, bins)
    if name == "mse":
        return MSEObserver(steps, bins)
    raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(OBSERVERS)}")


# ---------------------------------------------------------------------------------------------------------------
# everything kept for one layer
# ---------------------------------------------------------------------------------------------------------------


class LayerObserver:
    """Statistics of one linear layer's input ``x [..., in_features]``.

    ``channel_absmax`` [in_features] (exact), ``tokens`` (rows seen), ``calls`` per phase (``"first"``,
    ``"later"``, ``"conditioning"``; see :class:`~flashvsr_q.quant.calibration.ActivationRecorder`), and, when
    ``range_observer`` is set, a per-tensor range of ``x / divisor`` (``divisor`` = SmoothQuant factors or None).
    """

    def __init__(self, in_features: int, range_observer: RangeObserver | None = None,
                 divisor: torch.Tensor | None = None):
        self.channel_absmax = torch.zeros(in_features, dtype=torch.float32)
        self.range_observer, self.divisor = range_observer, divisor
        self.tokens = 0
        self.calls: dict[str, int] = {}
        self.phase_tokens: dict[str, int] = {}

    @torch.no_grad()
    def update(self, x: torch.Tensor, phase: str) -> None:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[-1] != self.channel_absmax.numel():
            raise ValueError(f"expected {self.channel_absmax.numel()} input features, got {rows.shape[-1]}")
        self.channel_absmax = torch.maximum(self.channel_absmax, rows.abs().amax(dim=0).float().cpu())
        self.tokens += rows.shape[0]
        self.calls[phase] = self.calls.get(phase, 0) + 1
        self.phase_tokens[phase] = self.phase_tokens.get(phase, 0) + rows.shape[0]
        if self.range_observer is not None:
            if self.divisor is not None:
                rows = rows.float() / self.divisor.to(rows.device)
            self.range_observer.update(rows)
