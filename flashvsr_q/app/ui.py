"""What the GUI's tabs share: server-side state, the model widgets, and running a library call as a page job.

A handler starts one ``app.calls`` function as a :class:`~flashvsr_q.app.jobs.Job` keyed by the browser session
(:func:`session`), relays its progress with :func:`follow`, and turns any failure into one line with :func:`fail`.
The Cancel buttons call :func:`cancel_job`, which sets the session's job's cancel event.
"""

from __future__ import annotations

import logging
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from flashvsr_q.app import calls
from flashvsr_q.app.jobs import (
    DEFAULT_CHOICE,
    JOBS,
    RECIPE_NONE,
    Job,
    checkpoint_choices,
    device_choices,
    error_line,
    recipe_choices,
    resolve_checkpoint,
    resolve_recipe,
)
from flashvsr_q.errors import FlashVSRError

log = logging.getLogger("flashvsr_q.app")

DTYPE_CHOICES = [("auto (bf16 on CUDA, fp32 on CPU)", "auto"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")]


class AppState:
    """Server-side settings shared by all sessions: where results go, and the checkpoints exported so far."""

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="flashvsr-q-app-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.exports: list[Path] = []

    def run_dir(self, kind: str) -> Path:
        """A fresh folder for one run's outputs."""
        folder = self.output_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=folder))

    def checkpoints(self) -> list[tuple[str, str]]:
        return checkpoint_choices(self.exports)


# ---------------------------------------------------------------------------------------------------------------
# running a job from an event handler
# ---------------------------------------------------------------------------------------------------------------


def session(request: gr.Request | None) -> str:
    """The browser session a handler serves (its jobs and Cancel button are matched by it)."""
    return getattr(request, "session_hash", None) or "local"


def fail(exc: BaseException) -> gr.Error:
    """The page-side form of any failure: one readable line; the stack trace goes to the server log only."""
    if not isinstance(exc, FlashVSRError):
        log.error("unexpected error in the app:\n%s", "".join(traceback.format_exception(exc)))
    return gr.Error(error_line(exc), print_exception=False)


def follow(job: Job, progress: gr.Progress, lines: list[str]) -> Iterator[str]:
    """While ``job`` runs: move the progress bar and yield the log so far (about twice a second)."""
    for update in job.updates():
        if update is not None:
            total = int(update.total) if update.total else None
            progress((int(update.done), total), desc=update.text, unit=update.unit)
        yield "\n".join(lines[-40:])


def model_choice(checkpoint: str, recipe: str, dtype: str, device: str, variant: str) -> calls.ModelChoice:
    """The model widgets' values -> what ``app.calls`` loads."""
    return calls.ModelChoice(resolve_checkpoint(checkpoint), resolve_recipe(recipe),
                             None if dtype in (None, "auto") else dtype, device or None, variant or "v1.1")


def model_widgets(state: AppState, with_recipe: bool = True, prefix: str = "upscale"):
    """Checkpoint, recipe, device, dtype and LQ-variant widgets (the same in every tab)."""
    checkpoint = gr.Dropdown(state.checkpoints(), value=DEFAULT_CHOICE, label="Checkpoint", allow_custom_value=True,
                             info="the default, a checkpoint folder, or type the path of an official or compressed "
                                  "checkpoint folder", elem_id=f"{prefix}-checkpoint")
    recipe = None
    if with_recipe:
        recipe = gr.Dropdown(recipe_choices(), value=RECIPE_NONE, label="Recipe", allow_custom_value=True,
                             info="none = use the checkpoint as stored; a recipe is applied on the fly",
                             elem_id=f"{prefix}-recipe")
    with gr.Row():
        devices = device_choices()
        device = gr.Dropdown(devices, value=devices[0], label="Device", elem_id=f"{prefix}-device")
        dtype = gr.Dropdown(DTYPE_CHOICES, value="auto", label="Compute dtype", elem_id=f"{prefix}-dtype")
        variant = gr.Dropdown(["v1.1", "v1"], value="v1.1", label="Official folder version",
                              info="only for official FlashVSR folders", elem_id=f"{prefix}-variant")
    return checkpoint, recipe, device, dtype, variant


def cancel_job(request: gr.Request = None) -> dict:
    """The Cancel buttons: set the cancel event of this session's running job (the library stops at its next
    check and the job's handler reports "cancelled")."""
    if JOBS.cancel(session(request)):
        gr.Info("cancelling: the job stops at its next check")
        return gr.update()
    gr.Info("nothing is running")
    return gr.update()
