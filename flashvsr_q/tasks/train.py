"""The train use case: a FlashVSR model (the shipped small one) from a YAML training recipe, with Lightning.

    from flashvsr_q.tasks.train import TrainOptions, train

    result = train(TrainOptions(recipe="train-small", output="runs/small", max_minutes=1))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flashvsr_q.shipped import by_name, recipes_dir
from flashvsr_q.train.recipe import load_recipe
from flashvsr_q.train.run import TrainResult
from flashvsr_q.train.run import train as run_training


@dataclass(kw_only=True)
class TrainOptions:
    """What ``flashvsr-q train`` takes: the recipe (a YAML file or a shipped name), the run folder, resume and a
    wall-clock bound for this invocation."""

    recipe: str
    output: str | Path
    resume: bool = False
    max_minutes: float | None = None
    progress: bool = True


def train(options: TrainOptions) -> TrainResult:
    """Train into ``options.output`` (Lightning checkpoints, logs, ``model/`` in the official layout)."""
    recipe = load_recipe(by_name(options.recipe, recipes_dir()))
    return run_training(recipe, options.output, resume=options.resume, max_minutes=options.max_minutes,
                        progress=options.progress)
