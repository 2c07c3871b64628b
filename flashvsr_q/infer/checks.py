"""Everything decided before any work: device and dtype, inputs and outputs, the model, the pre-flight report.

    from flashvsr_q.infer import preflight, resolve_device, resolve_dtype

    device = resolve_device(None)                  # cuda when available, else cpu (an absent cuda is an error)
    dtype = resolve_dtype(None, device)            # bf16 on CUDA, fp32 on CPU
    for report in preflight("in.mp4", "out.mp4", recipe="int8-weight-only", vram="8GB"):
        print(report.describe())                   # input, output, model, tiling, estimated peak memory by term

:func:`preflight` runs every check :func:`~flashvsr_q.infer.upscale` runs (options, inputs, outputs, model,
recipe, attention backend) and plans the memory, but decodes no frame and writes nothing
(``flashvsr-q upscale --dry-run``). A recipe is applied while loading, so the plan's weight term is the
quantized model's real size.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.errors import BackendUnavailable, CheckpointError, FlashVSRError
from flashvsr_q.infer.memory import MemoryPlan, device_budget, format_bytes, module_bytes, parse_bytes
from flashvsr_q.infer.pipeline import UpscaleSettings, plan_memory
from flashvsr_q.video.segments import OUTPUT_FORMATS, EncoderSettings
from flashvsr_q.infer.tiling import Geometry, parse_tile
from flashvsr_q.video.sources import IMAGE_EXTENSIONS, FrameSource, list_images, list_videos, open_source
from flashvsr_q.model import FlashVSR

if TYPE_CHECKING:
    from flashvsr_q.quant import CalibrationStats, Recipe

    RecipeLike = str | os.PathLike | Recipe
    CalibrationLike = str | os.PathLike | CalibrationStats

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BATCH_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")  # other containers become .mp4 in batch mode

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    """The default ``log`` of the upscaler: one line on stderr, flushed."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# device and dtype
# ---------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; a requested device that is absent or unsupported is an error.

    Raises:
        BackendUnavailable: cuda asked for without a GPU (or with a CPU-only torch), or a device other than
            cpu / cuda[:N].
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("CUDA is not available here (no GPU or a CPU-only torch); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"device {device} is not supported; use cpu or cuda")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> bf16 on CUDA, fp32 on CPU; ``"bf16"``, ``"fp16"``, ``"fp32"`` or a torch dtype as given."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise FlashVSRError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


# ---------------------------------------------------------------------------------------------------------------
# inputs and outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One input and where its output goes. ``kind``: ``"video"``, ``"image"`` or ``"image_folder"``."""

    source: FrameSource
    output: Path
    kind: str

    @property
    def work_dir(self) -> Path | None:
        """``OUT.parts/`` (segments, manifest, state snapshot); None for a single image."""
        return None if self.kind == "image" else self.output.with_name(self.output.name + ".parts")


def _check_output(path: Path, kind: str, input_path: Path, resume: bool, overwrite: bool) -> bool:
    """Validate an output path; returns False when ``resume`` finds it already complete (skip it)."""
    if path.resolve() == input_path.resolve():
        raise FlashVSRError(f"{path}: the output would replace the input")
    if kind == "video" and path.suffix.lower() not in OUTPUT_FORMATS:
        raise FlashVSRError(f"{path}: a video output needs one of {', '.join(OUTPUT_FORMATS)}")
    if kind == "image" and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise FlashVSRError(f"{path}: an image output needs one of {', '.join(IMAGE_EXTENSIONS)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FlashVSRError(f"{path}: the folder {parent} does not exist")
    if not _writable(parent):
        raise FlashVSRError(f"{path}: the folder {parent} is not writable")
    if path.exists():
        if kind != "image_folder" and path.is_dir():
            raise FlashVSRError(f"{path}: is a folder, expected a file name")
        if kind == "image_folder" and not path.is_dir():
            raise FlashVSRError(f"{path}: is a file, expected a folder for the upscaled images")
        if overwrite:
            return True
        work = path.with_name(path.name + ".parts")
        if resume and not work.exists():
            return False  # finished by an earlier run
        raise FlashVSRError(f"{path} already exists; use --overwrite to replace it")
    return True


def _writable(folder: Path) -> bool:
    try:
        probe = folder / f".flashvsr-q-write-test-{time.time_ns()}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def is_batch(input_path: Path) -> bool:
    """Whether ``input_path`` is a folder of videos (batch mode) rather than a file or a folder of images."""
    return input_path.is_dir() and not list_images(input_path)


def plan_jobs(input_path: Path, output: Path, *, resume: bool = False, overwrite: bool = False) -> list[Job]:
    """Open every input and check every output before anything is written (errors are FlashVSRError)."""
    if not input_path.exists():
        raise FlashVSRError(f"{input_path}: no such file or folder")
    if is_batch(input_path):
        videos = list_videos(input_path)
        if not videos:
            raise FlashVSRError(f"{input_path}: the folder holds no images and no videos")
        if output.exists() and not output.is_dir():
            raise FlashVSRError(f"{output}: is a file; batch mode writes into a folder")
        if not output.parent.is_dir():
            raise FlashVSRError(f"{output}: the folder {output.parent} does not exist")
        jobs = []
        for video in videos:
            target = output / (video.name if video.suffix.lower() in BATCH_SUFFIXES else video.stem + ".mp4")
            source = open_source(video)
            if output.is_dir() and not _check_output(target, "video", video, resume, overwrite):
                continue
            jobs.append(Job(source, target, "video"))
        if not output.exists():
            if not _writable(output.parent):
                raise FlashVSRError(f"{output}: the folder {output.parent} is not writable")
        return jobs
    source = open_source(input_path)
    kind = source.kind
    if not _check_output(output, kind, input_path, resume, overwrite):
        return []
    return [Job(source, output, kind)]


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------


def load_recipe_and_calibration(recipe: RecipeLike | None, calibration: CalibrationLike | None,
                                ) -> tuple[Recipe | None, CalibrationStats | None]:
    """Read a recipe (name, YAML path or ``Recipe``) and statistics (path or ``CalibrationStats``) up front, so
    that a bad name or file is refused before the model loads; returns (recipe or None, statistics or None)."""
    if recipe is None:
        if calibration is not None:
            raise FlashVSRError("--calibration only applies with --recipe (the statistics are used while quantizing)")
        return None, None
    from flashvsr_q.quant import CalibrationStats, Recipe, RecipeError, load_recipe

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if calibration is None and recipe.needs_calibration:
        raise RecipeError(f"recipe {recipe.name} needs calibration statistics: run `flashvsr-q calibrate` and pass "
                          "the result with --calibration")
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = CalibrationStats.load(calibration)
    return recipe, calibration


def load_model(checkpoint: str | Path | None, dtype: torch.dtype, device: torch.device, *, variant: str | None = None,
               recipe: RecipeLike | None = None, calibration: CalibrationLike | None = None,
               log: Log = log_stderr) -> FlashVSR:
    """``load_checkpoint`` for the upscaler, optionally quantizing on the fly with ``recipe``.

    Args:
        checkpoint: folder, or None for ``$FLASHVSR_Q_CHECKPOINT`` / the shipped small model.
        variant: LQ projection of an official folder without a config (``"v1"`` | ``"v1.1"``; None: v1.1). A
            folder that records its architecture (compressed manifest, config sidecar) must agree with it.
        recipe: name, YAML path or ``Recipe`` (see ``load_checkpoint``); its plan summary goes to ``log``.
        calibration: path or ``CalibrationStats`` for recipes with static scales or SmoothQuant.
    Raises:
        CheckpointError: an unreadable folder, or ``variant`` contradicting what the folder records.
        RecipeError / BackendUnavailable: a recipe that does not fit the model or the device, missing statistics.
    """
    from flashvsr_q.checkpoints import default_checkpoint, load_checkpoint

    recipe, calibration = load_recipe_and_calibration(recipe, calibration)

    def on_plan(plan) -> None:
        log(plan.format().splitlines()[0] + " (applied on the fly while loading)")
        if calibration is not None and plan.recipe.calibration == "none":
            log(f"note: recipe {plan.recipe.name} uses no calibration statistics; --calibration is ignored")

    model = load_checkpoint(checkpoint, dtype=dtype, device=device, variant=variant or "v1.1", recipe=recipe,
                            calibration=calibration, on_plan=on_plan)
    if variant is not None and model.config.lq_variant != variant:
        path = checkpoint or default_checkpoint()
        raise CheckpointError(f"{path} records its LQ projection as {model.config.lq_variant}; --variant "
                              f"{variant} is only for official folders without a config (their files cannot tell)")
    if recipe is not None:
        log(f"weights after {recipe.name}: {format_bytes(module_bytes(model))}")
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# the pre-flight report
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preflight:
    """What one job will run, decided before any work: geometry, model, tiling and estimated peak memory.

    ``describe()`` is the report ``flashvsr-q upscale`` prints on stderr before it starts (and ``--dry-run``
    prints instead of starting); ``to_dict()`` is its JSON form.
    """

    source: FrameSource
    output: Path | None
    geometry: Geometry
    memory: MemoryPlan
    model: str
    dtype: str
    device: str
    backend: str

    @classmethod
    def of(cls, source: FrameSource, output: Path | None, geometry: Geometry, memory: MemoryPlan,
           model: FlashVSR) -> Preflight:
        """The report of running ``source`` through ``model`` with ``memory``'s tiling."""
        return cls(source, output, geometry, memory, model.config.name, str(model.dtype).removeprefix("torch."),
                   str(model.device), model.dit.backend.name)

    def describe(self) -> str:
        s, g = self.source, self.geometry
        target = f"{self.output} " if self.output is not None else ""
        lines = [f"{s.path} ({s.kind}, {s.width}x{s.height}, {s.num_frames} frames, {float(s.fps):.3f} fps) -> "
                 f"{target}({g.out_width}x{g.out_height}; the model runs {g.padded_width}x{g.padded_height})",
                 f"model {self.model} {self.dtype} on {self.device}, attention {self.backend}",
                 self.memory.describe()]
        if g.scale != 4:
            lines.append(f"note: FlashVSR is trained for x4; x{g.scale} only changes the bicubic target size")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        s, g, m = self.source, self.geometry, self.memory
        return {"input": str(s.path), "kind": s.kind, "input_size": [s.width, s.height], "frames": s.num_frames,
                "fps": float(s.fps), "output": None if self.output is None else str(self.output),
                "output_size": [g.out_width, g.out_height], "model_size": [g.padded_width, g.padded_height],
                "scale": g.scale, "model": self.model, "dtype": self.dtype, "device": self.device,
                "backend": self.backend, "tiling": m.plan.describe(), "tiles": len(m.plan.tiles),
                "state_offload": m.offload, "canvas_on_device": m.canvas_on_device, "budget": m.budget,
                "estimate": m.estimate.to_dict()}


@dataclass
class Prepared:
    """A checked run: its jobs, the model (on its device, attention set) and the parsed options."""

    jobs: list[Job]
    model: FlashVSR
    settings: UpscaleSettings
    encoder: EncoderSettings
    budget: int | None
    batch: bool
    outputs_checked: bool = True  # False: prepared for a report only (the jobs' outputs are placeholders)

    def preflight(self, job: Job, tile: str) -> Preflight:
        """The report of ``job`` with a freshly planned tiling (``tile`` as in ``upscale``)."""
        geometry = Geometry(job.source.width, job.source.height, self.settings.scale)
        budget = self.budget if self.budget is not None else device_budget(self.model.device)
        memory = plan_memory(self.model, geometry, tile, budget, self.settings)
        return Preflight.of(job.source, job.output if self.outputs_checked else None, geometry, memory, self.model)


def prepare(input: str | Path, output: str | Path | None, *, checkpoint: str | Path | None = None,
            model: FlashVSR | None = None, recipe: RecipeLike | None = None, variant: str | None = None,
            calibration: CalibrationLike | None = None, scale: int = 4, tile: str = "auto",
            vram: int | str | None = None, attention: str = "auto", color_fix: str = "adain",
            dtype: str | torch.dtype | None = None, device: str | torch.device | None = None, seed: int = 0,
            lcsa: LCSASettings | None = None, codec: str = "libx264", crf: float = 18, preset: str = "medium",
            pix_fmt: str = "yuv420p", resume: bool = False, overwrite: bool = False, log: Log = log_stderr,
            ) -> Prepared:
    """The checks of ``upscale`` in order (options, inputs and outputs, recipe and statistics, then the model);
    see :func:`~flashvsr_q.infer.upscale` for the arguments. ``output`` None skips the output checks."""
    settings = UpscaleSettings(scale, color_fix, seed, lcsa or LCSASettings())
    try:
        parse_tile(tile, scale)
        budget = parse_bytes(vram) if vram is not None else None
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None
    encoder = EncoderSettings(codec, crf, preset, pix_fmt)
    encoder.check()
    input = Path(input)
    if output is not None:
        jobs = plan_jobs(input, Path(output), resume=resume, overwrite=overwrite)
    elif is_batch(input):
        jobs = [Job(open_source(v), v, "video") for v in list_videos(input)]
        if not jobs:
            raise FlashVSRError(f"{input}: the folder holds no images and no videos")
    else:
        source = open_source(input)
        jobs = [Job(source, input, source.kind)]
    if model is None:
        recipe, calibration = load_recipe_and_calibration(recipe, calibration)
        dev = resolve_device(device)
        model = load_model(checkpoint, resolve_dtype(dtype, dev), dev, variant=variant, recipe=recipe,
                           calibration=calibration, log=log)
    else:
        given = [name for name, value in (("checkpoint", checkpoint), ("recipe", recipe), ("variant", variant),
                                          ("calibration", calibration), ("dtype", dtype)) if value is not None]
        if given:
            raise FlashVSRError(f"{', '.join(given)} only apply when the model is loaded here; the model passed in "
                                "is used as it is")
        if device is not None and torch.device(device) != model.device:
            raise FlashVSRError(f"the model is on {model.device} but device={device} was asked for")
    backend = model.set_attention(attention, model.device)
    if attention == "auto":
        log(f"attention 'auto' chose {backend.name!r} on {model.device}")
    return Prepared(jobs, model, settings, encoder, budget, is_batch(input), outputs_checked=output is not None)


def preflight(input: str | Path, output: str | Path | None = None, *, checkpoint: str | Path | None = None,
              model: FlashVSR | None = None, recipe: RecipeLike | None = None, variant: str | None = None,
              calibration: CalibrationLike | None = None, scale: int = 4, tile: str = "auto",
              vram: int | str | None = None, attention: str = "auto", color_fix: str = "adain",
              dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
              lcsa: LCSASettings | None = None, resume: bool = False, overwrite: bool = False,
              log: Log = log_stderr) -> list[Preflight]:
    """What :func:`~flashvsr_q.infer.upscale` would run, one report per job, without decoding or writing anything.

    Takes the arguments of ``upscale`` (``output`` None: report the inputs only, without checking an output).
    The model is loaded (and the recipe applied) so that the weight term and the attention backend are real;
    pass ``model`` to reuse one. A finished output skipped by ``resume`` gets no report.
    """
    run = prepare(input, output, checkpoint=checkpoint, model=model, recipe=recipe, variant=variant,
                  calibration=calibration, scale=scale, tile=tile, vram=vram, attention=attention,
                  color_fix=color_fix, dtype=dtype, device=device, lcsa=lcsa, resume=resume, overwrite=overwrite,
                  log=log)
    return [run.preflight(job, tile) for job in run.jobs]
