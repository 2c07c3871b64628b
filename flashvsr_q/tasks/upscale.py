"""The upscale use case: files and folders in, files and folders out, with one model and one set of options.

    from flashvsr_q.tasks.upscale import UpscaleOptions, preflight, upscale

    summary = upscale(UpscaleOptions("in.mp4", "out.mp4", tile="auto", vram="8GB"))
    summary = upscale(UpscaleOptions("in.mp4", "out.mp4", recipe="int8-weight-only"))   # quantized while loading
    summary = upscale(UpscaleOptions("in.mp4", "out.mp4", checkpoint="flashvsr-v1.1", pipeline="full"))  # Wan VAE
    for report in preflight(UpscaleOptions("in.mp4", "out.mp4", vram="8GB")):           # the plan, nothing written
        print(report.describe())

    video file -> video file      (segments + remux; audio and subtitles copied; timestamps kept)
    image      -> image
    image folder -> image folder  (one PNG per input file, same names)
    folder of videos -> folder    (one video each, same names)

Every check runs before any frame is decoded, in this order: options, inputs and outputs, recipe and statistics,
then the model. The jobs then run through ``flashvsr_q.infer.run_job``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.checkpoints import CalibrationLike, RecipeLike, load_checkpoint, read_recipe_and_calibration
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.checks import Log, Preflight, log_stderr, resolve_device, resolve_dtype
from flashvsr_q.infer.memory import device_budget, format_bytes, module_bytes, parse_bytes
from flashvsr_q.infer.pipeline import UpscaleSettings, plan_memory
from flashvsr_q.infer.progress import Summary, summaries_json
from flashvsr_q.infer.resume import MANIFEST_NAME
from flashvsr_q.infer.runner import DEFAULT_SEGMENT_FRAMES, Job, run_job
from flashvsr_q.infer.tiling import Geometry, parse_tile
from flashvsr_q.model import PIPELINES, FlashVSR
from flashvsr_q.quant import QuantPlan
from flashvsr_q.tasks.outputs import OutputClash, RunLock, check_output, check_paths, owned_marker
from flashvsr_q.video.segments import OUTPUT_FORMATS, EncoderSettings
from flashvsr_q.video.sources import IMAGE_EXTENSIONS, FrameSource, list_images, list_videos, open_source

__all__ = ["UpscaleOptions", "load_model", "plan_jobs", "preflight", "prepare", "summaries_json", "upscale"]

BATCH_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")  # other containers become .mp4 in batch mode


@dataclass
class UpscaleOptions:
    """Everything ``flashvsr-q upscale`` takes (the CLI flags, same names and defaults).

    Attributes:
        input, output: paths (see the module docstring for the kinds). ``output`` None: report inputs only
            (:func:`preflight`).
        checkpoint: checkpoint folder (None: ``$FLASHVSR_Q_CHECKPOINT`` or the shipped small model), or a release
            name (``flashvsr-v1.1``, ``flashvsr-v1``: the folder ``flashvsr-q fetch`` fills).
        pipeline: ``tiny`` (TCDecoder) or ``full`` (the Wan2.1 VAE decoder, ``Wan2.1_VAE.pth`` in the checkpoint
            folder; slower, what the official Full pipeline runs). A model passed in runs its own pipeline;
            ``full`` then requires one with a VAE.
        recipe: quantization recipe applied on the fly while loading: a shipped name (``int8-weight-only``), a
            YAML path or a ``Recipe``. The memory plan then counts the quantized weights.
        variant: ``"v1"`` | ``"v1.1"``: the LQ projection of an official folder (its files cannot tell; None means
            v1.1). Folders that record their architecture must agree.
        calibration: statistics from ``flashvsr-q calibrate`` (path or ``CalibrationStats``) for recipes with static
            activation scales or SmoothQuant.
        scale: integer 1..8 (trained for 4). tile: ``auto`` | ``off`` | ``SIZExOVERLAP`` in LR px.
        vram: device memory budget (bytes or "8GB"); None: the free CUDA memory, no limit on CPU.
        attention: backend name or ``auto``. color_fix: ``adain`` | ``wavelet`` | ``none``.
        dtype: ``bf16`` | ``fp16`` | ``fp32`` (default bf16 on CUDA, fp32 on CPU). device: ``cpu`` | ``cuda[:N]``
            (default cuda when available).
        codec, crf, preset, pix_fmt: video encoder settings. audio: copy audio and subtitle streams.
        resume: continue an interrupted run from its manifest (refused if input, model or options changed).
        overwrite: replace an existing output (or an interrupted run's work folder); only outputs this tool wrote
            are replaced, never an input or a folder holding one (``flashvsr_q.tasks.outputs``).
        segment_frames: output frames per segment / resume snapshot (>= 1).
        allow_truncated: upscale a video whose container promises more frames than its stream holds (what is
            there), and say so in the summary; without it such an input is an error.
        show_progress: a progress bar on stderr.
    """

    input: str | Path
    output: str | Path | None = None
    checkpoint: str | Path | None = None
    pipeline: str = "tiny"
    recipe: RecipeLike | None = None
    variant: str | None = None
    calibration: CalibrationLike | None = None
    scale: int = 4
    tile: str = "auto"
    vram: int | str | None = None
    attention: str = "auto"
    color_fix: str = "adain"
    dtype: str | torch.dtype | None = None
    device: str | torch.device | None = None
    seed: int = 0
    lcsa: LCSASettings | None = None
    codec: str = "libx264"
    crf: float = 18
    preset: str = "medium"
    pix_fmt: str = "yuv420p"
    audio: bool = True
    resume: bool = False
    overwrite: bool = False
    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    allow_truncated: bool = False
    show_progress: bool = True


# ---------------------------------------------------------------------------------------------------------------
# inputs and outputs
# ---------------------------------------------------------------------------------------------------------------


def _check_output(path: Path, kind: str, inputs: list, resume: bool, overwrite: bool) -> bool:
    """Validate an output path; returns False when ``resume`` finds it already complete (skip it).

    ``inputs``: every path the run reads (the input, the checkpoint, statistics, recipe); the output and its work
    folder ``OUT.parts`` may not overlap any of them (``flashvsr_q.tasks.outputs``).
    """
    if kind == "video" and path.suffix.lower() not in OUTPUT_FORMATS:
        raise FlashVSRError(f"{path}: a video output needs one of {', '.join(OUTPUT_FORMATS)}")
    if kind == "image" and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise FlashVSRError(f"{path}: an image output needs one of {', '.join(IMAGE_EXTENSIONS)}")
    check_paths(path, inputs)
    work = path.with_name(path.name + ".parts")
    if kind != "image":
        check_paths(work, inputs, what="work folder")
        if work.exists() and not (work / MANIFEST_NAME).is_file() and not (work / "writer.json").is_file():
            raise OutputClash(f"{work}: the work folder name is taken by something flashvsr-q did not write; move "
                              "it away")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FlashVSRError(f"{path}: the folder {parent} does not exist")
    if not _writable(parent):
        raise FlashVSRError(f"{path}: the folder {parent} is not writable")
    if path.exists() and not overwrite and resume:
        if kind != "image_folder" and path.is_dir():
            raise FlashVSRError(f"{path}: is a folder, expected a file name")
        if work.exists():
            # a run killed after its output was renamed into place, before its work folder was removed
            raise OutputClash(f"{path} already exists and {work} is left from a run; use --overwrite to replace "
                              f"the output, or delete {work}")
        return False  # finished by an earlier run
    # an image folder is ours if it holds the marker that the runner leaves in the folders it writes
    check_output(path, inputs=inputs, overwrite=overwrite, kind="folder" if kind == "image_folder" else "file",
                 owned=owned_marker)
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


def plan_jobs(input_path: Path, output: Path, *, resume: bool = False, overwrite: bool = False,
              reads: Sequence[str | Path | None] = (), allow_truncated: bool = False) -> list[Job]:
    """Open every input and check every output before anything is written (errors are FlashVSRError).

    ``reads``: the other paths the run reads (checkpoint, statistics, recipe file): no output may overlap them.
    ``allow_truncated``: accept videos whose container promises more frames than they hold (see
    :func:`check_truncated`).
    """
    if not input_path.exists():
        raise FlashVSRError(f"{input_path}: no such file or folder")
    if is_batch(input_path):
        check_paths(output, [input_path, *reads])
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
            source = check_truncated(open_source(video), allow_truncated)
            if output.is_dir() and not _check_output(target, "video", [video, *reads], resume, overwrite):
                continue
            jobs.append(Job(source, target, "video"))
        if not output.exists():
            if not _writable(output.parent):
                raise FlashVSRError(f"{output}: the folder {output.parent} is not writable")
        return jobs
    source = check_truncated(open_source(input_path), allow_truncated)
    kind = source.kind
    if not _check_output(output, kind, [input_path, *reads], resume, overwrite):
        return []
    return [Job(source, output, kind)]


def check_truncated(source: FrameSource, allow: bool) -> FrameSource:
    """Refuse a video whose container promises more frames than its stream holds (a cut-off download or copy),
    unless ``allow``: then it is upscaled as it is and the summary says so."""
    if source.declared_frames is not None and source.num_frames < source.declared_frames and not allow:
        raise FlashVSRError(f"{source.path}: truncated: the container promises {source.declared_frames} frames but "
                            f"the stream holds {source.num_frames}; use --allow-truncated to upscale those "
                            f"{source.num_frames}")
    return source


def truncation_note(source: FrameSource) -> str | None:
    """The summary's line for a truncated input (None if it is complete)."""
    if source.declared_frames is None or source.num_frames >= source.declared_frames:
        return None
    return f"input truncated: {source.num_frames} of the {source.declared_frames} frames its container promises"


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------


def load_model(options: UpscaleOptions, log: Log = log_stderr) -> FlashVSR:
    """The options' checkpoint on their device and dtype, quantized on the fly by their recipe (plan summary and
    quantized size go to ``log``)."""
    recipe, calibration = read_recipe_and_calibration(options.recipe, options.calibration)
    device = resolve_device(options.device)

    def on_plan(plan: QuantPlan) -> None:
        log(plan.format().splitlines()[0] + " (applied on the fly while loading)")
        if calibration is not None and plan.recipe.calibration == "none":
            log(f"note: recipe {plan.recipe.name} uses no calibration statistics; --calibration is ignored")

    # no --dtype: a compressed checkpoint runs in its own dtype, anything else bf16 on CUDA / fp32 on CPU
    dtype = resolve_dtype(options.dtype, device) if options.dtype is not None else None
    model = load_checkpoint(options.checkpoint, dtype=dtype, device=device,
                            variant=options.variant, recipe=recipe, calibration=calibration, on_plan=on_plan,
                            pipeline=options.pipeline)
    if recipe is not None:
        log(f"weights after {recipe.name}: {format_bytes(module_bytes(model))}")
    return model


# ---------------------------------------------------------------------------------------------------------------
# the use case
# ---------------------------------------------------------------------------------------------------------------


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


def check_options(o: UpscaleOptions, model: FlashVSR | None = None) -> tuple[UpscaleSettings, int | None,
                                                                             EncoderSettings]:
    """The checks of the options alone (no file is opened): (settings, device memory budget, encoder settings).

    Raises FlashVSRError, one line naming the option, for each bad value.
    """
    settings = UpscaleSettings(o.scale, o.color_fix, o.seed, o.lcsa or LCSASettings())
    if o.pipeline not in PIPELINES:
        raise FlashVSRError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {o.pipeline!r}")
    if isinstance(o.segment_frames, bool) or not isinstance(o.segment_frames, int) or o.segment_frames < 1:
        raise FlashVSRError(f"--segment-frames must be a whole number of frames >= 1 (rounded to chunks of 8), got "
                            f"{o.segment_frames!r}")
    try:
        parse_tile(o.tile, o.scale)
        budget = parse_bytes(o.vram) if o.vram is not None else None
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None
    if budget is not None and budget <= 0:
        raise FlashVSRError(f"--vram must be a positive memory size such as 8GB, got {o.vram!r}; leave it out to "
                            "use the free device memory")
    if model is None:
        resolve_device(o.device)
    encoder = EncoderSettings(o.codec, o.crf, o.preset, o.pix_fmt)
    encoder.check()
    return settings, budget, encoder


def _reads(o: UpscaleOptions) -> list[Path]:
    """The paths besides the input that a run reads (no output may overlap them)."""
    given = [o.checkpoint, o.calibration, o.recipe]
    return [Path(p) for p in given if isinstance(p, (str, Path)) and Path(p).exists()]


def prepare(options: UpscaleOptions, model: FlashVSR | None = None, log: Log = log_stderr) -> Prepared:
    """The checks of :func:`upscale` in order (options, inputs and outputs, recipe and statistics, then the model).

    ``model``: reuse a loaded model (on its device and dtype); then the options' checkpoint, recipe, variant,
    calibration and dtype must be unset.
    """
    o = options
    settings, budget, encoder = check_options(o, model)
    input = Path(o.input)
    if o.output is not None:
        jobs = plan_jobs(input, Path(o.output), resume=o.resume, overwrite=o.overwrite, reads=_reads(o),
                         allow_truncated=o.allow_truncated)
    elif is_batch(input):
        jobs = [Job(open_source(v), v, "video") for v in list_videos(input)]
        if not jobs:
            raise FlashVSRError(f"{input}: the folder holds no images and no videos")
    else:
        source = open_source(input)
        jobs = [Job(source, input, source.kind)]
    if model is None:
        model = load_model(o, log)
    else:
        given = [name for name in ("checkpoint", "recipe", "variant", "calibration", "dtype")
                 if getattr(o, name) is not None]
        if given:
            raise FlashVSRError(f"{', '.join(given)} only apply when the model is loaded here; the model passed in "
                                "is used as it is")
        if o.pipeline == "full" and model.vae is None:
            raise FlashVSRError("pipeline full needs a model with its Wan VAE decoder: load it with "
                                "load_checkpoint(..., pipeline='full')")
        if o.device is not None and torch.device(o.device) != model.device:
            raise FlashVSRError(f"the model is on {model.device} but device={o.device} was asked for")
    backend = model.set_attention(o.attention, model.device)
    if o.attention == "auto":
        log(f"attention 'auto' chose {backend.name!r} on {model.device}")
    return Prepared(jobs, model, settings, encoder, budget, is_batch(input), outputs_checked=o.output is not None)


def preflight(options: UpscaleOptions, model: FlashVSR | None = None, log: Log = log_stderr) -> list[Preflight]:
    """What :func:`upscale` would run, one report per job, without decoding or writing anything.

    The model is loaded (and the recipe applied) so that the weight term and the attention backend are real; pass
    ``model`` to reuse one. A finished output skipped by ``resume`` gets no report.
    """
    run = prepare(options, model, log)
    return [run.preflight(job, options.tile) for job in run.jobs]


def upscale(options: UpscaleOptions, model: FlashVSR | None = None, *,
            progress: Callable[[int, int], None] | None = None, cancel=None,
            log: Log = log_stderr) -> Summary | list[Summary] | None:
    """Upscale a video, an image, an image folder or a folder of videos.

    Returns the summary (a list for a folder of videos; None when ``resume`` finds the output already complete).
    ``model``: see :func:`prepare`. ``progress`` is called with (frames done, total); ``cancel`` (an Event or a
    callable) is checked between tiles; ``log`` receives the pre-flight report and notes, one message at a time.

    Raises:
        FlashVSRError (and subclasses): bad options, inputs, outputs, checkpoint, recipe or device, all checked
        before any frame is decoded; ``Cancelled`` when cancelled.
    """
    if options.output is None:
        raise FlashVSRError("upscale needs an output path")
    check_options(options, model)  # bad options fail before the lock and before anything is opened
    check_paths(options.output, [options.input, *_reads(options)])  # and clashing paths before a lock file is made
    summaries = []
    with ExitStack() as held:
        # one run per output: held from the output checks to the final rename (a folder of videos: the folder)
        lock = held.enter_context(RunLock(options.output))
        if lock.stale_pid is not None:
            log(f"note: {options.output} was locked by process {lock.stale_pid}, which is gone; taking over")
        run = prepare(options, model, log)
        if run.batch:
            Path(options.output).mkdir(exist_ok=True)
        for job in run.jobs:
            summary = run_job(run.model, job, run.settings, tile=options.tile, vram=run.budget,
                              encoder=run.encoder, audio=options.audio, resume=options.resume,
                              overwrite=options.overwrite, segment_frames=options.segment_frames,
                              show_progress=options.show_progress, progress=progress, cancel=cancel, log=log)
            note = truncation_note(job.source)
            if note is not None:
                summary.notes.append(note)
            summaries.append(summary)
    return summaries if run.batch else (summaries[0] if summaries else None)

