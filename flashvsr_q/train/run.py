"""``flashvsr-q train``: build the model, the data and the Lightning Trainer from a recipe, fit, export.

Output folder::

    DIR/lightning/last.ckpt     resumable Lightning checkpoint (``--resume`` continues from it)
    DIR/logs/version_N/         per-step loss and learning rates (metrics.csv), one folder per invocation
    DIR/model/                  the trained model in the official file layout (``load_checkpoint(DIR/model)``)
    DIR/train-summary.json      steps, wall time, final loss, recipe
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from flashvsr_q.attention import LCSASettings
from flashvsr_q.data.clips import ClipDataModule, ClipSpec
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import write_json
from flashvsr_q.model import FlashVSR, get_config
from flashvsr_q.model.loading import save_official
from flashvsr_q.progress import ProgressBar
from flashvsr_q.train.decoder_fit import fit_decoder, fit_path
from flashvsr_q.train.init import init_decoder_as_upscaler
from flashvsr_q.train.output_fit import fit_output_layer
from flashvsr_q.train.recipe import TrainRecipe
from flashvsr_q.train.system import FlashVSRTrainingSystem

log = logging.getLogger(__name__)
LAST = "last.ckpt"


def init_model(name: str, seed: int, decoder_init: str = "upscaler") -> FlashVSR:
    """A fresh fp32 model of preset ``name`` from ``seed``: PyTorch default init, and the decoder either set up as
    an upscaler of its LR conditioning (:func:`~flashvsr_q.train.init.init_decoder_as_upscaler`) or random
    (output bias at mid-grey)."""
    torch.manual_seed(seed)
    model = FlashVSR(get_config(name))
    with torch.no_grad():
        if decoder_init == "upscaler":
            init_decoder_as_upscaler(model.decoder)
        else:
            model.decoder.decoder[-1].bias.fill_(0.5)  # decoder output ~[0, 1]: start at mid-grey, not black
    return model


class StopAfter(Callback):
    """Stop (cleanly, after a whole step) once this invocation has run ``minutes``."""

    def __init__(self, minutes: float):
        self.seconds, self.start = minutes * 60, time.monotonic()

    def on_train_batch_end(self, trainer, *args) -> None:
        if time.monotonic() - self.start > self.seconds:
            trainer.should_stop = True


class PlainProgress(Callback):
    """Training progress as plain lines (steps, rate, ETA) for logs, where Lightning's redrawn bar would fill the
    file with control codes; rank 0 only."""

    def __init__(self, description: str):
        self.description, self.bar = description, None

    def on_train_start(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self.bar = ProgressBar(self.description, trainer.max_steps, unit="steps")
            self.bar.update(trainer.global_step, since=trainer.global_step)

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.bar is not None:
            self.bar.update(trainer.global_step)

    def on_train_end(self, trainer, module) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_callbacks(progress: bool, description: str) -> tuple[list[Callback], bool]:
    """(extra callbacks, Lightning's ``enable_progress_bar``): its bar on a terminal, plain lines when stderr is a
    file or a pipe, nothing when ``progress`` is off."""
    if not progress:
        return [], False
    if sys.stderr.isatty():
        return [], True
    return [PlainProgress(description)], False


class LossHistory(Callback):
    """Keeps (global step, loss) of every step of this invocation (tests, summary)."""

    def __init__(self):
        self.losses: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append((trainer.global_step, float(outputs["loss"])))


@dataclass
class TrainResult:
    steps: int
    wall_seconds: float
    losses: list[tuple[int, float]]
    model_dir: Path
    checkpoint: Path


def train(recipe: TrainRecipe, out_dir: str | os.PathLike, *, resume: bool = False, max_minutes: float | None = None,
          progress: bool = True, export: bool = True) -> TrainResult:
    """Train per ``recipe`` into ``out_dir``; ``resume`` continues from ``out_dir/lightning/last.ckpt``.

    ``max_minutes`` (default: the recipe's) bounds this invocation; the run stops after a whole step and still
    writes its checkpoint and model, so a later ``resume`` carries on.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "lightning"
    last = ckpt_dir / LAST
    if resume and not last.is_file():
        raise FlashVSRError(f"nothing to resume: {last} does not exist")
    if not resume and last.is_file():
        raise FlashVSRError(f"{out_dir} already holds a run ({last}); pass --resume or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.train.threads)
    L.seed_everything(recipe.seed, workers=True, verbose=False)

    # 1. model (+ the decoder fits on a fresh run), system, data
    start = time.monotonic()
    model = init_model(recipe.model, recipe.seed, recipe.decoder_init)
    spec = ClipSpec(size=recipe.data.size, batch_size=recipe.data.batch_size, weights=recipe.data.weights,
                    latent_channels=model.config.latent_channels)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else log.info  # noqa: E731
    if not resume:  # a resumed run holds the fitted decoder in last.ckpt
        if recipe.fit.path.rounds > 0:
            fit_path(model, spec, recipe.seed, recipe.fit.path, say)
        if recipe.fit.decoder.rounds > 0:
            fit_decoder(model, spec, recipe.seed, recipe.fit.decoder, say)
    system = FlashVSRTrainingSystem(
        model, recipe.optim, recipe.loss, total_steps=recipe.train.max_steps, attention=recipe.attention,
        lcsa=LCSASettings(local_range=recipe.local_range, sparse_ratio=recipe.sparse_ratio))
    data = ClipDataModule(spec, seed=recipe.seed)

    # 2. trainer
    history = LossHistory()
    callbacks = [history, ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:06d}", every_n_train_steps=
                                          recipe.train.checkpoint_every, save_last=True, save_top_k=1,
                                          auto_insert_metric_name=False),
                 LearningRateMonitor(logging_interval="step")]
    minutes = max_minutes if max_minutes is not None else recipe.train.max_minutes
    if minutes is not None:
        callbacks.append(StopAfter(minutes))
    extra, lightning_bar = progress_callbacks(progress, "train")
    callbacks += extra
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=recipe.train.max_steps, max_epochs=-1,
        gradient_clip_val=recipe.optim.grad_clip or None, log_every_n_steps=1, callbacks=callbacks,
        logger=CSVLogger(out_dir, name="logs"), enable_progress_bar=lightning_bar,  # logs/version_N per invocation
        enable_model_summary=progress, num_sanity_val_steps=0, default_root_dir=out_dir)

    # 3. fit (resumes optimiser, scheduler and step count), then checkpoint and export
    trainer.fit(system, datamodule=data, ckpt_path=str(last) if resume else None)
    trainer.save_checkpoint(last)  # also when stopped by time, between the periodic checkpoints
    model_dir = out_dir / "model"
    if recipe.train.output_fit_clips > 0:  # closed-form last layer (train/output_fit.py); not in last.ckpt
        fit_output_layer(model.eval(), data.spec, recipe.seed, recipe.train.output_fit_clips)
    if export:
        save_official(model, model_dir, overwrite=True)
    result = TrainResult(trainer.global_step, time.monotonic() - start, history.losses, model_dir, last)
    _write_summary(out_dir / "train-summary.json", recipe, result)
    return result


def _write_summary(path: Path, recipe: TrainRecipe, result: TrainResult) -> None:
    tail = [loss for _, loss in result.losses[-20:]]
    previous = json.loads(path.read_text()) if path.is_file() else {}
    summary = {
        "steps": result.steps,
        "wall_seconds": round(previous.get("wall_seconds", 0) + result.wall_seconds, 1),
        "invocations": previous.get("invocations", 0) + 1,
        "final_loss_mean_last_20": sum(tail) / len(tail) if tail else None,
        "recipe": recipe.to_dict(),
        "torch": torch.__version__, "lightning": L.__version__,
    }
    write_json(path, summary)
