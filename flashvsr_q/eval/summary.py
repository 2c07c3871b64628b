"""The runner's report: the configurations and run sections, ``configs.json``, the doc update, the terminal table.

``write_eval_report`` adds to :func:`flashvsr_q.eval.report.write_report` what only the runner knows (how each
configuration ran, which were skipped and why, the dataset, versions, checkpoint hashes, the command);
``splice_markdown`` copies a written report into a Markdown file between two marker lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.metrics import METRICS, base_name
from flashvsr_q.eval.report import Report, column_title, fmt, write_report
from flashvsr_q.files import write_json, write_text

if TYPE_CHECKING:
    from flashvsr_q.eval.runner import EvalResults


def configs_markdown(res: EvalResults) -> str:
    """The configurations section: what each one ran, its times, and those that were skipped (with why)."""
    lines = ["## Configurations", "",
             "| Configuration | what it runs | ran with | tiles per clip | upscale s | total s |",
             "|---|---|---|---|---:|---:|"]
    for c in res.configs:
        if c.name not in res.results:
            continue
        run = res.runs.get(c.name, {})
        ran_with = f"{run['dtype']} on {run['device']}, attention {run['attention']}" if "dtype" in run else "-"
        tiles = ", ".join(run["tiles"].values()) if "dtype" in run else "-"
        lines.append(f"| {c.name} | {c.describe()} | {ran_with} | {tiles} | {run.get('upscale_seconds', 0):.1f} | "
                     f"{res.seconds.get(c.name, float('nan')):.1f} |")
    if res.skipped_configs:
        lines += ["", "Skipped configurations (cannot run here):", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in res.skipped_configs.items()]
    return "\n".join(lines) + "\n"


def run_markdown(res: EvalResults) -> str:
    """The run section: dataset and clips, seeds, versions, checkpoints, the command, and the table's layout."""
    lines = ["## Run", ""]
    lines += [f"- {key}: {value}" for key, value in res.info.items() if key != "command"]
    for name, clip in res.clips.items():
        lines.append(f"- clip {name}: {clip['frames']} frames, LR {clip['lr']} -> output {clip['sr']}")
    lines.append("- table layout: one row per configuration, one column per metric (the transpose of the thesis' "
                 "Table 1, which has one column per method); ↑/↓ say which way is better")
    if "command" in res.info:
        lines += ["", "Reproduce with:", "", "```", res.info["command"], "```"]
    return "\n".join(lines) + "\n"


def write_eval_report(res: EvalResults, out_dir: str | os.PathLike, title: str = "Evaluation report") -> dict:
    """``eval.report.write_report`` plus the configurations and run sections, and ``configs.json``.

    Files: ``report.md``, ``table.md``, ``per_clip.csv``, ``means.csv``, ``deltas.csv``, ``results.json``,
    ``deltas.png``, ``<metric>_per_frame.png`` (see ``write_report``) and ``configs.json`` (every configuration,
    whether it ran, how, and why not).
    """

    names = sorted({n for clips in res.per_frame.values() for values in clips.values() for n in values})
    frame = [n for n in names if base_name(n) in METRICS and METRICS[base_name(n)].kind == "frame"]
    frame_metric = "psnr" if "psnr" in frame else frame[0] if frame else "psnr"
    files = write_report(res.results, out_dir, reference=res.reference, per_frame=res.per_frame,
                         skipped=res.skipped_metrics, title=title, frame_metric=frame_metric)
    report = files["report"]
    write_text(report, report.read_text() + "\n" + configs_markdown(res) + "\n" + run_markdown(res))
    files["configs"] = write_json(Path(out_dir) / "configs.json", {
        "configs": [{**c.as_dict(), "ran": c.name in res.results, "seconds": res.seconds.get(c.name),
                     **res.runs.get(c.name, {})} for c in res.configs],
        "skipped_configs": res.skipped_configs, "skipped_metrics": res.skipped_metrics,
        "reference": res.reference, "clips": res.clips, "info": res.info}, indent=2)
    return files


DOC_BEGIN = "<!-- flashvsr-q eval: begin -->"
DOC_END = "<!-- flashvsr-q eval: end -->"


def check_doc(doc: str | os.PathLike) -> tuple[str, str]:
    """The text of a Markdown file before the :data:`DOC_BEGIN` line and after the :data:`DOC_END` line.

    Raises:
        FlashVSRError: the file or a marker is missing.
    """
    path = Path(doc)
    if not path.is_file():
        raise FlashVSRError(f"{path} does not exist")
    text = path.read_text()
    # whole lines only, so the markers can be quoted in the document's prose
    begin = re.search(rf"^{re.escape(DOC_BEGIN)}[ \t]*$", text, flags=re.M)
    end = re.search(rf"^{re.escape(DOC_END)}[ \t]*$", text, flags=re.M)
    if begin is None or end is None or begin.start() > end.start():
        raise FlashVSRError(f"{path} needs the marker lines {DOC_BEGIN} and {DOC_END} (in that order, each on a "
                            "line of its own)")
    return text[: begin.start()], text[end.end():]


def splice_markdown(doc: str | os.PathLike, res: EvalResults, levels: int = 2) -> Path:
    """Replace the text between the :data:`DOC_BEGIN` and :data:`DOC_END` lines of a Markdown file with the report
    (headings demoted by ``levels``, plot links relative to the file); written whole under a temporary name.

    Raises:
        FlashVSRError: the file or a marker is missing, or the report has not been written.
    """
    if "report" not in res.files:
        raise FlashVSRError("the report has not been written (no output folder)")
    path = Path(doc)
    head, tail = check_doc(path)
    body = res.files["report"].read_text()
    body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", body, flags=re.M)
    folder = Path(os.path.relpath(res.files["report"].parent, path.parent)).as_posix()
    plots = [p for p in res.files.values() if p.suffix == ".png"]
    body += "\n" + "\n\n".join(f"![{p.stem}]({folder}/{p.name})" for p in plots) + "\n" if plots else ""
    body += f"\nAll files of this report (CSV, JSON, plots): [`{folder}/`]({folder}/).\n"
    return write_text(path, f"{head}{DOC_BEGIN}\n\n{body}\n{DOC_END}{tail}")


def describe_results(res: EvalResults, metrics: Sequence[str] | None = None) -> str:
    """A compact text table of the means (rows: configurations) for the terminal."""

    report = Report(res.results, res.reference, res.skipped_metrics)
    shown = [m for m in report.metrics if metrics is None or m in metrics or m.split(" (")[0] in metrics]
    shown = [m for m in shown if any(isinstance(report.means[c][m], float) for c in report.configs)]
    width = max(len(c) for c in report.configs) + 6
    columns = [max(12, len(column_title(m))) + 2 for m in shown]  # a long title never runs into its neighbour
    lines = ["".ljust(width) + "".join(column_title(m).rjust(w) for m, w in zip(shown, columns))]
    for config in report.configs:
        label = config + (" (ref)" if config == res.reference else "")
        lines.append(label.ljust(width) + "".join(fmt(m, report.means[config][m]).rjust(w)
                                                  for m, w in zip(shown, columns)))
    lines += [f"skipped {name}: {reason}" for name, reason in res.skipped_configs.items()]
    lines += [f"{m}: {reason}" for m, reason in res.skipped_metrics.items()]
    return "\n".join(lines)


__all__ = ["DOC_BEGIN", "DOC_END", "check_doc", "configs_markdown", "describe_results", "run_markdown",
           "splice_markdown", "write_eval_report"]
