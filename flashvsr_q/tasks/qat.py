"""The QAT use case: fine-tune a float checkpoint under a QAT recipe (Lightning), export it, optionally compare.

    from flashvsr_q.tasks.qat import QATOptions, qat

    result = qat(QATOptions(recipe="qat-w4a8", footage=["builtin"], output="runs/qat", steps=20))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import write_json, write_text
from flashvsr_q.shipped import by_name, recipes_dir
from flashvsr_q.train.qat.system import QATResult, compare_ptq_qat, load_qat_recipe, run_qat

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}


@dataclass(kw_only=True)
class QATOptions:
    """What ``flashvsr-q qat`` takes (the CLI flags, same names and defaults). ``recipe``: a QAT recipe YAML or the
    name of a shipped one; ``compare``: after export, measure teacher, plain PTQ and QAT on held-out clips."""

    recipe: str
    footage: list[str]
    output: str | Path
    checkpoint: str | None = None
    steps: int | None = None
    resume: bool = False
    devices: str = "1"
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    precision: str | None = None
    dtype: str | None = None
    holdout: tuple[str, ...] = ()
    val_footage: tuple[str, ...] = ()
    max_minutes: float | None = None
    compare: bool = False
    progress: bool = True


@dataclass
class QATOutcome:
    """The run (``QATResult``) and, with ``compare``, the Markdown comparison table."""

    run: QATResult
    table: str | None = None


def qat(options: QATOptions) -> QATOutcome:
    """Fine-tune, export to ``output/model`` and (``compare``) write ``output/qat-report.md`` and ``.json``.

    Returns the outcome; on a non-zero rank of a multi-process run ``run.model_dir`` is None (rank 0 exports).
    """
    o = options
    recipe = load_qat_recipe(by_name(o.recipe, recipes_dir()))
    if o.dtype not in DTYPES:
        raise FlashVSRError(f"--dtype must be bf16 or fp32, got {o.dtype!r}")
    devices = o.devices if o.devices == "auto" else int(o.devices)
    result = run_qat(recipe, o.checkpoint, o.footage, o.output, steps=o.steps, resume=o.resume,
                     accelerator=o.accelerator, devices=devices, num_nodes=o.num_nodes, strategy=o.strategy,
                     precision=o.precision, holdout=tuple(o.holdout), val_footage=tuple(o.val_footage),
                     dtype=DTYPES[o.dtype], max_minutes=o.max_minutes, progress=o.progress)
    outcome = QATOutcome(result)
    if o.compare and result.model_dir is not None:
        table, results, summary = compare_ptq_qat(recipe, o.checkpoint, result.model_dir,
                                                  chunks=recipe.settings.data.chunks)
        report = Path(o.output) / "qat-report"
        write_text(report.with_suffix(".md"), table + f"\n\nQAT: {result.steps} steps\n")
        write_json(report.with_suffix(".json"), {"clips": results, **summary, "steps": result.steps})
        outcome.table = table
    return outcome
