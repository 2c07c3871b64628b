"""Activation observers: what range a static int8 activation scale should cover, from a stream of tensors.

Every observer sees the input of one ``nn.Linear`` chunk by chunk and keeps O(channels + bins) memory, however
long the calibration runs. Two kinds of statistics are kept per layer (:class:`LayerObserver`):

- the per-channel max |x| ([in_features], always exact): SmoothQuant needs it;
- a per-tensor clipping range ``clip`` for the static scale ``clip / 127``, chosen by a :class:`RangeObserver`:

  ``minmax``      the exact max |x| (torchao ``AffineQuantizedMinMaxObserver``, ViDiT-Q, bnb absmax);
  ``percentile``  the p-th percentile of |x| (ModelOpt's percentile collection), from a histogram;
  ``mse``         the clip that minimises the expected squared error of symmetric int8 quantization of the
                  observed |x| distribution (torchao's ``AffineQuantizedMSEObserver`` searches shrink factors
                  linearly; here the candidate clips are log-spaced, to reach far below the max).

The histogram (:class:`AbsHistogram`) has logarithmic bins with fixed edges, ``bins_per_octave`` per power of two
from 2^-40 to 2^40 (64 per octave: every bin is 1.1 % wide relative to its values), plus a bin for exact zeros. It
never needs rebinning, keeps 5121 counts per layer, and resolves small values as well as large ones, which the MSE
search needs when heavy tails push the best clip orders of magnitude below the max.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

INT8_MAX = 127  # symmetric int8 grid: scale = clip / 127 (torchao's static int8 clamps to [-128, 127])
MIN_EXP, MAX_EXP = -40, 40  # histogram span: 2^-40 (about 1e-12; smaller counts as zero) to 2^40

# ---------------------------------------------------------------------------------------------------------------
# the histogram
# ---------------------------------------------------------------------------------------------------------------


class AbsHistogram:
    """Histogram of |x| with log-spaced bins: bin i covers ``[2^(MIN_EXP + i/k), 2^(MIN_EXP + (i+1)/k))``.

    Args:
        bins_per_octave: ``k``; 64 by default (bins 1.1 % wide).
    """

    def __init__(self, bins_per_octave: int = 64):
        if bins_per_octave < 1:
            raise ValueError(f"bins_per_octave must be >= 1, got {bins_per_octave}")
        self.bins_per_octave = bins_per_octave
        self.bins = (MAX_EXP - MIN_EXP) * bins_per_octave
        self.counts = torch.zeros(self.bins, dtype=torch.float64)
        self.zeros = 0  # values below 2^MIN_EXP
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
        tiny = a < 2.0 ** MIN_EXP
        self.zeros += int(tiny.sum())
        index = ((torch.log2(a[~tiny]) - MIN_EXP) * self.bins_per_octave).floor().long().clamp_(0, self.bins - 1)
        self.counts += torch.bincount(index, minlength=self.bins).to(torch.float64).cpu()

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) edges of every bin [bins] (float64); the bin holding the max ends at the max."""
        i = torch.arange(self.bins + 1, dtype=torch.float64)
        e = torch.pow(2.0, MIN_EXP + i / self.bins_per_octave)
        lo, hi = e[:-1], e[1:].clone()
        if self.max > 0:
            hi = torch.minimum(hi, torch.tensor(max(self.max, float(lo[0])), dtype=torch.float64))
        return lo, torch.maximum(hi, lo)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0 < q <= 100) of |x|, linear within the bin; exact max for q = 100."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {q}")
        if self.total == 0:
            raise ValueError("the observer has seen no values")
        target = q / 100 * self.total
        if q == 100 or self.max == 0.0:
            return self.max
        if target <= self.zeros:
            return 0.0
        cumulative = torch.cumsum(self.counts, 0) + self.zeros
        index = min(int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64))), self.bins - 1)
        before = float(cumulative[index - 1]) if index > 0 else float(self.zeros)
        inside = float(self.counts[index])
        fraction = (target - before) / inside if inside > 0 else 1.0
        lo, hi = self.edges()
        return min(float(lo[index] + fraction * (hi[index] - lo[index])), self.max)

    def quantization_mse(self, clips: torch.Tensor, levels: int = INT8_MAX) -> torch.Tensor:
        """Expected squared error per value of symmetric quantization with ``levels`` steps up to each clip.

        Values are taken as uniform within each bin (the histogram's own model of the data), and the error is
        integrated exactly: rounding error below the clip (a sawtooth, integrated in closed form), clipping error
        ``(x - clip)^2`` above it; values counted as zero quantize exactly. Args: clips [K]. Returns: [K] float64.
        """
        occupied = torch.nonzero(self.counts).flatten()
        lo_all, hi_all = self.edges()
        lo, hi = lo_all[occupied][None], hi_all[occupied][None]  # [1, B]
        counts = self.counts[occupied][None]
        width = (hi - lo).clamp_min(1e-300)
        clips = clips.to(torch.float64)[:, None]  # [K, 1]
        step = clips / levels
        top = torch.minimum(hi, clips)  # rounding part: [lo, min(hi, clip)]
        rounding = step ** 3 * (_sawtooth_integral(top / step + 0.5) - _sawtooth_integral(lo / step + 0.5))
        rounding = torch.where(top > lo, rounding, torch.zeros_like(rounding))
        start = torch.maximum(lo, clips)  # clipping part: [max(lo, clip), hi]
        clipping = torch.where(hi > start, ((hi - clips) ** 3 - (start - clips) ** 3) / 3, torch.zeros_like(hi))
        # a bin narrower than float64 can resolve holds one value: error of that value
        point = torch.where(hi > clips, (lo - clips) ** 2, (lo - torch.round(lo / step) * step) ** 2)
        per_bin = torch.where(hi - lo > 1e-12 * hi, (rounding + clipping) / width, point)
        return (per_bin * counts).sum(dim=1) / max(self.total, 1)

    def mse_clip(self, per_octave: int = 16, octaves: int = 16, levels: int = INT8_MAX) -> float:
        """The clip in ``{max * 2^(-i / per_octave), i = 0 .. per_octave * octaves}`` with the least expected error
        (ties: the larger clip). The default tries 257 clips from the max down to max / 65536, 4.4 % apart."""
        if self.total == 0:
            raise ValueError("the observer has seen no values")
        if self.max == 0.0:
            return 0.0
        i = torch.arange(per_octave * octaves + 1, dtype=torch.float64)
        clips = self.max * torch.pow(2.0, -i / per_octave)
        errors = self.quantization_mse(clips, levels)
        best = int(torch.nonzero(errors <= errors.min() * (1 + 1e-9)).min())  # clips descend: min index = largest
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

    def __init__(self, percentile: float = 99.99, bins_per_octave: int = 64):
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile, self.histogram = percentile, AbsHistogram(bins_per_octave)

    def update(self, x: torch.Tensor) -> None:
        self.histogram.update(x)

    def clip(self) -> float:
        return self.histogram.percentile(self.percentile)

    def settings(self) -> dict:
        return {"observer": self.name, "percentile": self.percentile,
                "bins_per_octave": self.histogram.bins_per_octave}


class MSEObserver(RangeObserver):
    """The clip (``max * 2^(-i / per_octave)``) minimising the expected int8 quantization error of |x|."""

    name = "mse"

    def __init__(self, per_octave: int = 16, bins_per_octave: int = 64):
        if per_octave < 1:
            raise ValueError(f"per_octave must be >= 1, got {per_octave}")
        self.per_octave, self.histogram = per_octave, AbsHistogram(bins_per_octave)

    def update(self, x: torch.Tensor) -> None:
        self.histogram.update(x)

    def clip(self) -> float:
        return self.histogram.mse_clip(self.per_octave)

    def settings(self) -> dict:
        return {"observer": self.name, "clips_per_octave": self.per_octave,
                "bins_per_octave": self.histogram.bins_per_octave}


OBSERVERS: dict[str, type[RangeObserver]] = {c.name: c for c in (MinMaxObserver, PercentileObserver, MSEObserver)}


def make_observer(name: str, percentile: float = 99.99, bins_per_octave: int = 64,
                  clips_per_octave: int = 16) -> RangeObserver:
    """A fresh observer called ``name`` (``minmax``, ``percentile``, ``mse``); unknown names list the valid ones."""
    if name == "minmax":
        return MinMaxObserver()
    if name == "percentile":
        return PercentileObserver(percentile, bins_per_octave)
    if name == "mse":
        return MSEObserver(clips_per_octave, bins_per_octave)
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
