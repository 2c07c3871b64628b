"""Per-layer sensitivity: quantize one layer (or group) at a time, score the decoded video, plan mixed precision.

    from flashvsr_q.quant.sensitivity import analyze_sensitivity, write_report, generate_recipe
    report = analyze_sensitivity(model, get_scheme("int4_weight_only"), clips, grouping="layer")
    write_report(report, "report/")                            # sensitivity.json / .md / .png
    text, mix = generate_recipe(report, model, fallback="bf16", budget=parse_size("1.2GB"))

Method (ViDiT-Q's ``get_sensitivity``, with a temporal term as QuantVSR recommends for VSR): the float model
streams each clip once (the reference); then, for each group, only that group's linears are swapped for a
quantized copy, the same clips stream again with the same noise, and the decoded frames (before colour fix, in
[-1, 1]) are compared with the reference:

- ``sqnr_db``: 10 log10(sum ref^2 / sum (q - ref)^2) over all frames of all clips;
- ``psnr_db``: PSNR of the frames mapped to [0, 1] (pooled MSE);
- ``temporal_db``: the SQNR of consecutive-frame differences ``f[t+1] - f[t]``: flicker that a per-frame metric
  can miss;
- ``latent_sqnr_db``: the SQNR of the DiT's output latents (x0), before the (unquantized) decoder. With random
  weights the decoder saturates and hides most of the DiT's effect on the frames; rank by ``latent`` there.

Lower is more sensitive. Groups: ``layer`` (each linear), ``block`` (all linears of ``dit.blocks.N``), ``kind``
(``self_attn.q`` ... ``ffn.2`` across all blocks). Sizes are measured on quantized bf16 copies of each layer.

The recipe generator starts from every candidate layer under the scheme and moves groups, most sensitive first,
to the fallback (``bf16`` = kept, or a scheme) while the estimated checkpoint size stays within the budget
(a group that no longer fits is skipped and the next, smaller one is tried).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import atomic_write, write_json, write_text
from flashvsr_q.model import FlashVSR, SeededNoise, run_clip
from flashvsr_q.quant.calibration import DIT_BLOCK_LINEARS, CalibrationClip, with_static_ranges
from flashvsr_q.quant.recipes import model_layers, parse_recipe, resolve_plan
from flashvsr_q.quant.schemes import Scheme, get_scheme
from flashvsr_q.quant.stats import CalibrationStats

GROUPINGS = ("layer", "block", "kind")
RANK_BY = ("sqnr", "psnr", "temporal", "latent")
KEEP = "bf16"  # fallback meaning "keep in the compute dtype"
MAX_DB = 300.0  # a bit-exact result is reported as 300 dB (JSON has no infinity)
_BLOCK = re.compile(r"(dit\.blocks\.\d+)\.(.+)")

# ---------------------------------------------------------------------------------------------------------------
# sizes and groups
# ---------------------------------------------------------------------------------------------------------------


def parse_size(text: str | int | float) -> int:
    """``"1.2GB"`` -> 1_200_000_000 bytes (KB/MB/GB: powers of 1000, KiB/MiB/GiB: of 1024; a bare number: bytes)."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise FlashVSRError(f"cannot read size {text!r}; write e.g. 1.2GB, 800MiB or 123456")
    unit = (match.group(2) or "B").upper()
    powers = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    return int(float(match.group(1)) * powers[unit])


def format_size(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage of a tensor; torchao tensor subclasses are summed over their inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of everything in ``module.state_dict()`` (what a checkpoint stores for it)."""
    return sum(tensor_bytes(v) for v in module.state_dict().values() if isinstance(v, torch.Tensor))


def quantized_bytes(linear: nn.Linear, scheme: Scheme | None, calibration=None) -> int:
    """Bytes of ``linear`` under ``scheme`` (None = kept in bf16), measured on a bf16 copy."""
    layer = copy.deepcopy(linear).to(torch.bfloat16)
    if scheme is None:
        return module_bytes(layer)
    return module_bytes(scheme.quantize(layer, calibration))


def candidate_layers(model: nn.Module, scheme: Scheme, pattern: str = DIT_BLOCK_LINEARS) -> list[str]:
    """The linears matching ``pattern`` that ``scheme`` can take, in model order."""
    regex = re.compile(pattern)
    return [n for n, m in model.named_modules()
            if type(m) is nn.Linear and regex.fullmatch(n) and scheme.check_layer(m) is None]


def group_layers(fqns: Sequence[str], grouping: str) -> dict[str, list[str]]:
    """Group names -> member fqns: ``layer`` (one each), ``block`` (``dit.blocks.N``), ``kind`` (``ffn.0`` ...)."""
    if grouping not in GROUPINGS:
        raise FlashVSRError(f"unknown grouping {grouping!r}; choose one of {', '.join(GROUPINGS)}")
    groups: dict[str, list[str]] = {}
    for fqn in fqns:
        match = _BLOCK.fullmatch(fqn)
        if grouping == "layer" or match is None:
            key = fqn
        else:
            key = match.group(1) if grouping == "block" else match.group(2)
        groups.setdefault(key, []).append(fqn)
    return groups


# ---------------------------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ErrorSums:
    """Pooled sums over clips, turned into dB at the end."""

    signal: float = 0.0
    error: float = 0.0
    mse01_sum: float = 0.0
    values: int = 0
    diff_signal: float = 0.0
    diff_error: float = 0.0
    latent_signal: float = 0.0
    latent_error: float = 0.0

    def add(self, ref: torch.Tensor, out: torch.Tensor, ref_latents: torch.Tensor, latents: torch.Tensor) -> None:
        self.latent_signal += float(ref_latents.double().pow(2).sum())
        self.latent_error += float((latents.double() - ref_latents.double()).pow(2).sum())
        ref, out = ref.double(), out.double()
        self.signal += float(ref.pow(2).sum())
        self.error += float((out - ref).pow(2).sum())
        ref01, out01 = ((ref + 1) / 2).clamp(0, 1), ((out + 1) / 2).clamp(0, 1)
        self.mse01_sum += float((out01 - ref01).pow(2).sum())
        self.values += ref.numel()
        d_ref, d_out = ref.diff(dim=2), out.diff(dim=2)  # [B, 3, T-1, H, W]
        self.diff_signal += float(d_ref.pow(2).sum())
        self.diff_error += float((d_out - d_ref).pow(2).sum())

    @staticmethod
    def _db(signal: float, error: float) -> float:
        if error <= 0:
            return MAX_DB
        return min(MAX_DB, 10 * math.log10(max(signal, 1e-30) / error))

    def scores(self) -> dict[str, float]:
        return {"sqnr_db": self._db(self.signal, self.error),
                "psnr_db": self._db(self.values, self.mse01_sum),
                "temporal_db": self._db(self.diff_signal, self.diff_error),
                "latent_sqnr_db": self._db(self.latent_signal, self.latent_error)}


@dataclass
class GroupResult:
    name: str
    layers: list[str]
    params: int
    bytes_quantized: int
    sqnr_db: float
    psnr_db: float
    temporal_db: float
    latent_sqnr_db: float

    def score(self, rank_by: str) -> float:
        return {"sqnr": self.sqnr_db, "psnr": self.psnr_db, "temporal": self.temporal_db,
                "latent": self.latent_sqnr_db}[rank_by]


@dataclass
class SensitivityReport:
    """Results per group plus how they were obtained; ``ranked()`` is most sensitive first."""

    scheme: dict
    grouping: str
    rank_by: str
    model: str
    clips: list[dict]
    results: list[GroupResult]
    all_quantized: dict[str, float]  # scores with every candidate layer quantized at once
    other_bytes: int  # bf16 bytes of everything that is not a candidate layer
    meta: dict = field(default_factory=dict)

    def ranked(self) -> list[GroupResult]:
        return sorted(self.results, key=lambda r: (r.score(self.rank_by), r.name))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["results"] = [asdict(r) | {"rank": i + 1} for i, r in enumerate(self.ranked())]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SensitivityReport:
        data = dict(data)
        results = [GroupResult(**{k: v for k, v in r.items() if k != "rank"}) for r in data.pop("results")]
        return cls(results=results, **data)

    def to_markdown(self, top: int | None = None) -> str:
        scheme = self.scheme.get("name", "?")
        lines = [f"# Sensitivity: {scheme} on {self.model}", "",
                 f"- grouping: {self.grouping}; ranked by {self.rank_by} (lowest = most sensitive)",
                 f"- clips: {len(self.clips)}; scheme options: {json.dumps(self.scheme)}",
                 "- all candidate layers quantized at once: " + ", ".join(
                     f"{k} {v:.2f}" for k, v in self.all_quantized.items()),
                 f"- everything else (bf16): {format_size(self.other_bytes)}", "",
                 "| rank | group | layers | params | size | SQNR dB | PSNR dB | temporal dB | latent SQNR dB |",
                 "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for i, r in enumerate(self.ranked()[:top]):
            lines.append(f"| {i + 1} | `{r.name}` | {len(r.layers)} | {r.params:,} | {format_size(r.bytes_quantized)} "
                         f"| {r.sqnr_db:.2f} | {r.psnr_db:.2f} | {r.temporal_db:.2f} | {r.latent_sqnr_db:.2f} |")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# the analysis
# ---------------------------------------------------------------------------------------------------------------


def _swap(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _run(model: FlashVSR, clips: Sequence[CalibrationClip], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(frames, latents) per clip, on the CPU in fp32."""
    out = []
    for clip in clips:
        h, w = clip.lr.shape[-2:]
        noise = SeededNoise(seed, model.config.latent_channels, h // 8, w // 8)
        frames, latents = run_clip(model, clip.lr.to(model.device, model.dtype), noise)
        out.append((frames.float().cpu(), latents.float().cpu()))
    return out


def _score_swapped(model: nn.Module, fqns: Sequence[str], replacement, clips, seed, reference) -> dict[str, float]:
    """:func:`_score` with the layers ``fqns`` replaced by ``replacement(fqn)``, then put back (also on error)."""
    originals = {fqn: model.get_submodule(fqn) for fqn in fqns}
    try:
        for fqn in fqns:
            _swap(model, fqn, replacement(fqn))
        return _score(model, clips, seed, reference)
    finally:
        for fqn, module in originals.items():
            _swap(model, fqn, module)


def _score(model, clips, seed, reference) -> dict[str, float]:
    sums = ErrorSums()
    for (ref, ref_latents), (out, latents) in zip(reference, _run(model, clips, seed)):
        sums.add(ref, out, ref_latents, latents)
    return sums.scores()


@torch.no_grad()
def analyze_sensitivity(
    model: FlashVSR, scheme: Scheme | str, clips: Sequence[CalibrationClip], grouping: str = "layer",
    rank_by: str = "sqnr", calibration: CalibrationStats | None = None, smoothing: bool = False,
    layers: str = DIT_BLOCK_LINEARS, seed: int = 0, progress: Callable[[str, int, int], None] | None = None,
) -> SensitivityReport:
    """Score each group of candidate layers quantized alone under ``scheme`` (model restored after each).

    Args:
        model: float model (eval mode); it is left exactly as it was.
        clips: a few model inputs (a :class:`~flashvsr_q.quant.calibration.FootageClips` slice or TensorClips).
        calibration: statistics, required for static-activation schemes (the observer's ranges are used).
        smoothing: apply the statistics' SmoothQuant factors (schemes that support them).
        layers: regex of the layers considered (default: every DiT block linear).
        progress: optional callable ``(group, index, total)``.
    """
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    if rank_by not in RANK_BY:
        raise FlashVSRError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    if scheme.needs_calibration and calibration is None:
        raise FlashVSRError(f"scheme {scheme.name} needs activation statistics: pass --calibration STATS "
                            "(from flashvsr-q calibrate)")
    clips = list(clips)
    if not clips:
        raise FlashVSRError("sensitivity analysis needs at least one clip")
    fqns = candidate_layers(model, scheme, layers)
    if not fqns:
        raise FlashVSRError(f"no layer matching {layers!r} can take scheme {scheme.name}")
    groups = group_layers(fqns, grouping)
    per_layer = _layer_calibration(calibration, fqns, scheme, smoothing)

    def quantized_copy(fqn: str) -> nn.Module:
        return scheme.quantize(copy.deepcopy(model.get_submodule(fqn)), per_layer.get(fqn))

    reference = _run(model, clips, seed)
    results = []
    for index, (name, members) in enumerate(groups.items()):
        if progress:
            progress(name, index, len(groups))
        scores = _score_swapped(model, members, quantized_copy, clips, seed, reference)
        linears = [model.get_submodule(f) for f in members]
        params = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in linears)
        size = sum(quantized_bytes(m, scheme, per_layer.get(f)) for f, m in zip(members, linears))
        results.append(GroupResult(name, members, params, size, **scores))

    all_quantized = _score_swapped(model, fqns, quantized_copy, clips, seed, reference)

    candidates = set(fqns)
    other = sum(tensor_bytes(t) // t.element_size() * 2 if t.is_floating_point() else tensor_bytes(t)
                for k, t in model.state_dict().items() if k.rpartition(".")[0] not in candidates)
    return SensitivityReport(
        scheme=scheme.to_dict(), grouping=grouping, rank_by=rank_by,
        model=getattr(getattr(model, "config", None), "name", ""),
        clips=[c.record for c in clips], results=results, all_quantized=all_quantized, other_bytes=other,
        meta={"layers": layers, "seed": seed, "smoothing": smoothing, "dtype": str(model.dtype).removeprefix("torch."),
              "frames": [int(c.lr.shape[2]) for c in clips], "size": list(clips[0].lr.shape[-2:]),
              "calibration_hash": calibration.source_hash if calibration is not None else None})


def _layer_calibration(calibration, fqns, scheme, smoothing):
    if calibration is None:
        return {}
    if smoothing and not scheme.supports_smoothing:
        raise FlashVSRError(f"scheme {scheme.name} cannot apply SmoothQuant factors")
    ranged = with_static_ranges(calibration, smoothed=smoothing) if scheme.needs_calibration else calibration
    out = {}
    for fqn in fqns:
        entry = ranged.layers.get(fqn)
        if entry is None:
            if scheme.needs_calibration or smoothing:
                raise FlashVSRError(f"the calibration statistics have no entry for {fqn}")
            continue
        if smoothing and entry.smoothing is None:
            raise FlashVSRError(f"the calibration statistics have no smoothing factors for {fqn} "
                                "(calibrate with --smoothquant-alpha)")
        if scheme.needs_calibration or smoothing:
            out[fqn] = type(entry)(entry.input_absmax, entry.smoothing if smoothing else None, entry.num_samples)
    return out


# ---------------------------------------------------------------------------------------------------------------
# report files
# ---------------------------------------------------------------------------------------------------------------


_METRICS = {"sqnr": ("sqnr_db", "SQNR of decoded frames (dB)"), "psnr": ("psnr_db", "PSNR of decoded frames (dB)"),
            "temporal": ("temporal_db", "temporal SQNR, frame differences (dB)"),
            "latent": ("latent_sqnr_db", "SQNR of the DiT output latents (dB)")}


def plot_report(report: SensitivityReport, path: str | Path) -> Path:
    """Horizontal bars per group, most sensitive at the top (matplotlib Agg): the ranking metric, and the
    temporal SQNR (or the frame SQNR when ranking by temporal). The dashed line: everything quantized at once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = report.ranked()
    names = [r.name for r in ranked][::-1]
    second = "sqnr" if report.rank_by == "temporal" else "temporal"
    height = min(40.0, 1.5 + 0.22 * len(ranked))
    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    for ax, metric in zip(axes, (report.rank_by, second)):
        key, label = _METRICS[metric]
        values = [getattr(r, key) for r in ranked][::-1]
        all_q = report.all_quantized.get(key)
        low, high = min(values + ([all_q] if all_q is not None else [])), max(values)
        margin = max(1.0, 0.05 * (high - low))
        ax.barh(range(len(values)), [v - (low - margin) for v in values], left=low - margin, color="#4477aa")
        if all_q is not None:
            ax.axvline(all_q, color="#cc3311", linestyle="--", label=f"all quantized: {all_q:.1f} dB")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlim(low - margin, high + margin)
        ax.set_xlabel(label + (" (ranking)" if metric == report.rank_by else ""))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names, fontsize=7 if len(names) > 40 else 9)
    fig.suptitle(f"{report.scheme.get('name')} on {report.model}: one {report.grouping} quantized at a time "
                 f"(lower = more sensitive)", fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def write_report(report: SensitivityReport, out_dir: str | Path) -> dict[str, Path]:
    """``sensitivity.json``, ``sensitivity.md`` and ``sensitivity.png`` in ``out_dir`` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sensitivity.json", "markdown": out / "sensitivity.md", "plot": out / "sensitivity.png"}
    write_json(paths["json"], report.to_dict(), indent=2)
    write_text(paths["markdown"], report.to_markdown())
    plot_report(report, paths["plot"])
    return paths


def load_report(path: str | Path) -> SensitivityReport:
    """Read ``sensitivity.json`` (or a folder holding it)."""
    path = Path(path)
    path = path / "sensitivity.json" if path.is_dir() else path
    if not path.is_file():
        raise FlashVSRError(f"no sensitivity report at {path}")
    return SensitivityReport.from_dict(json.loads(path.read_text()))


# ---------------------------------------------------------------------------------------------------------------
# mixed precision under a size budget
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class MixedPrecision:
    """Which groups go to the fallback, and the resulting estimated checkpoint size."""

    scheme: dict
    fallback: dict | str
    budget: int
    promoted: list[str]  # group names, most sensitive first
    total_bytes: int
    min_bytes: int  # everything under the scheme
    max_bytes: int  # everything under the fallback
    dit_bytes: int

    def summary(self) -> str:
        fb = self.fallback if isinstance(self.fallback, str) else self.fallback["name"]
        return (f"{len(self.promoted)} group(s) in {fb}, the rest in {self.scheme['name']}: "
                f"{format_size(self.total_bytes)} (budget {format_size(self.budget)}; "
                f"all {self.scheme['name']} {format_size(self.min_bytes)}, all {fb} {format_size(self.max_bytes)})")


def plan_mixed_precision(report: SensitivityReport, model: nn.Module, fallback: Scheme | str,
                         budget: int) -> MixedPrecision:
    """Greedy: most sensitive group first, promote it to ``fallback`` if the total stays within ``budget``."""
    fb_scheme = None if fallback in (KEEP, None) else (get_scheme(fallback) if isinstance(fallback, str) else fallback)
    if fb_scheme is not None and fb_scheme.needs_calibration:
        raise FlashVSRError(f"fallback {fb_scheme.name} needs calibration; use bf16 or a weight-only/dynamic scheme")
    base = {r.name: r.bytes_quantized for r in report.results}
    high = {}
    for r in report.results:
        modules = [model.get_submodule(f) for f in r.layers]
        if fb_scheme is not None and any(fb_scheme.check_layer(m) for m in modules):
            continue  # the fallback cannot take this group: it stays under the scheme
        high[r.name] = sum(quantized_bytes(m, fb_scheme) for m in modules)
    total = report.other_bytes + sum(base.values())
    minimum = total
    if total > budget:
        raise FlashVSRError(f"budget {format_size(budget)} is below the size with every candidate layer under "
                            f"{report.scheme['name']} ({format_size(total)})")
    promoted = []
    for r in report.ranked():
        if r.name not in high:
            continue
        delta = high[r.name] - base[r.name]
        if total + delta <= budget:
            promoted.append(r.name)
            total += delta
    maximum = report.other_bytes + sum(high.get(n, base[n]) for n in base)
    dit = total - report.other_bytes + sum(
        tensor_bytes(t) // t.element_size() * 2 for k, t in model.state_dict().items()
        if k.startswith("dit.") and t.is_floating_point()
        and k.rpartition(".")[0] not in {f for r in report.results for f in r.layers})
    return MixedPrecision(report.scheme, fb_scheme.to_dict() if fb_scheme else KEEP, budget, promoted, total,
                          minimum, maximum, dit)


def _alternation(fqns: Sequence[str]) -> str:
    return "|".join(re.escape(f) for f in fqns)


_SUFFIXES = r"(?:self_attn|cross_attn)\.(?:q|k|v|o)|ffn\.(?:0|2)"


def _pattern_for(members: Sequence[str], layers: Sequence[str], proposals: Sequence[str]) -> str:
    """The first proposed regex that matches exactly ``members`` among ``layers``, else an exact alternation."""
    wanted = set(members)
    for pattern in proposals:
        if {f for f in layers if re.fullmatch(pattern, f)} == wanted:
            return pattern
    return _alternation(members)


def _group_pattern(name: str, members: Sequence[str], layers: Sequence[str]) -> str:
    proposals = [re.escape(name)]
    if re.fullmatch(r"dit\.blocks\.\d+", name):
        proposals.append(re.escape(name) + rf"\.(?:{_SUFFIXES})")
    elif not name.startswith("dit."):
        proposals.append(r"dit\.blocks\.\d+\." + re.escape(name))
    return _pattern_for(members, layers, proposals)


def recipe_yaml(report: SensitivityReport, mix: MixedPrecision, layers: Sequence[str], name: str | None = None) -> str:
    """A recipe (``recipes.py`` schema) for ``mix``. ``layers``: every layer fqn of the model (``model_layers``),
    to check that each pattern matches exactly the layers it is meant for."""
    import yaml

    scheme = dict(report.scheme)
    scheme_name = scheme.pop("name")
    fb = mix.fallback
    fb_name = fb if isinstance(fb, str) else fb["name"]
    by_name = {r.name: r for r in report.results}
    promoted = [(g, _group_pattern(g, by_name[g].layers, layers)) for g in mix.promoted]
    candidates = [f for r in report.results for f in r.layers]
    candidate_regex = _pattern_for(candidates, layers, [report.meta.get("layers", DIT_BLOCK_LINEARS)])
    name = name or f"mixed-{scheme_name}-{fb_name}".replace("_", "-")
    keep = ([p for _, p in promoted] if fb == KEEP else []) + [f"(?!(?:{candidate_regex})$).*"]
    rules = []
    if fb != KEEP:
        fb_options = {k: v for k, v in fb.items() if k != "name"}
        rules += [{"pattern": p, "scheme": fb_name} | ({"options": dict(fb_options)} if fb_options else {})
                  for _, p in promoted]
    if len(mix.promoted) < len(report.results):
        rules.append({"pattern": candidate_regex, "scheme": scheme_name} | ({"options": scheme} if scheme else {}))
    if not rules:
        raise FlashVSRError(f"the budget keeps every candidate layer in {fb_name}: no layer is left to quantize "
                            f"(use a smaller budget, or the {fb_name} model as is)")
    needs_cal = get_scheme(scheme_name, **scheme).needs_calibration
    data = {
        "kind": "quantization",
        "name": name,
        "description": f"{scheme_name} on the DiT block linears, the {len(mix.promoted)} most sensitive "
                       f"{report.grouping}(s) in {fb_name}; generated from a sensitivity report "
                       f"(ranked by {report.rank_by}) for a budget of {format_size(mix.budget)}",
        "gpu": get_scheme(scheme_name, **scheme).summary,
        "expected_memory": {"checkpoint_gb": float(f"{mix.total_bytes / 1e9:.4g}"),
                            "dit_gb": float(f"{mix.dit_bytes / 1e9:.4g}")},
        "calibration": "required" if needs_cal else "none",
        "keep": keep,
        "rules": rules,
    }
    header = (f"# Generated by flashvsr-q sensitivity for model {report.model}: {mix.summary()}.\n"
              f"# Promoted to {fb_name}, most sensitive first: {', '.join(mix.promoted) or 'none'}.\n"
              f"# {'keep: the promoted groups, then' if fb == KEEP else 'keep:'} everything that is not a candidate "
              f"layer; rules: {'the promoted groups, then ' if fb != KEEP and promoted else ''}the rest.\n")
    return header + yaml.safe_dump(data, sort_keys=False, width=100000)


def generate_recipe(report: SensitivityReport, model: nn.Module, fallback: Scheme | str, budget: int | str,
                    name: str | None = None, device: str = "cpu") -> tuple[str, MixedPrecision]:
    """Plan, write and validate a recipe with the recipe loader; returns (YAML text, plan)."""

    mix = plan_mixed_precision(report, model, fallback, parse_size(budget))
    text = recipe_yaml(report, mix, list(model_layers(model)), name)
    plan = resolve_plan(parse_recipe(text, source="<generated>"), model, device)  # raises if invalid
    kept = set(plan.kept)
    if mix.fallback == KEEP and not all(f in kept for g in mix.promoted for f in
                                        next(r for r in report.results if r.name == g).layers):
        raise RuntimeError("generated recipe does not keep the promoted layers")  # a bug, not user error
    return text, mix
