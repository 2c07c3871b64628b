"""The export use case: a checkpoint -> one DiT file that ComfyUI and the FlashVSR nodes load, with a model card.

    from flashvsr_q.tasks.export import ExportOptions, export

    result = export(ExportOptions("FlashVSR-v1.1/", "comfy-int8-convrot", "FlashVSR1_1-int8_convrot.safetensors"))
    print(result.describe())

Formats (``flashvsr_q.quant.comfy`` writes the ComfyUI ones byte for byte as ComfyUI reads them):

- ``comfy-int8-convrot``: ``int8_tensorwise`` + ``convrot`` (group 256): ComfyUI's INT8 ConvRot, W8A8;
- ``comfy-int8``: ``int8_tensorwise`` with ``full_precision_matrix_mult`` (weight-only, bf16 matmul);
- ``comfy-fp8``: ``float8_e4m3fn`` per tensor, with a calibrated ``input_scale`` (needs ``calibration``);
- ``bf16``: the official key set in bf16, no sidecars (what the DiffSynth-based nodes accept);
- ``fp8-official``: the legacy official-layout folder with ``scaled_fp8`` DiT linears (``quant.export``).

The source is an official folder (float weights), a flashvsr-q compressed checkpoint (a ``w8a8_int8_convrot``
checkpoint exports to ``comfy-int8-convrot`` bit for bit, a torchao per-row int8 one to ``comfy-int8``), or an
official folder quantized first with ``recipe`` (``w8a8-int8-convrot-calibrated`` + ``calibration``: the file
carries the calibrated scales). Beside the file, ``<file stem>.md`` records the source and its hashes, the recipe,
the calibration footage, the file's SHA-256, the quality measured at export time and which front-ends load it.

Output safety (minimal, until the shared output-safety module exists): an existing output or card is replaced
only with ``overwrite``; an output that is one of the inputs (a source file, the statistics, the recipe) or a
folder is refused, overwrite or not; files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.checkpoints import (
    CalibrationLike,
    RecipeLike,
    checkpoint_kind,
    default_checkpoint,
    load_checkpoint,
    read_recipe_and_calibration,
)
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import sha256_file, write_text
from flashvsr_q.model import OFFICIAL_FILES, FlashVSR, infer_config, load_official
from flashvsr_q.quant import CalibrationStats, Recipe, load_compressed, load_recipe
from flashvsr_q.quant.checkpoint import read_manifest
from flashvsr_q.quant.comfy import SUPPORTED, apply_comfy, from_comfy, to_comfy, write_comfy
from flashvsr_q.quant.export import export_fp8_official
from flashvsr_q.tasks.outputs import RunLock, check_output

FORMATS = {"comfy-int8-convrot": "int8-convrot", "comfy-int8": "int8", "comfy-fp8": "fp8", "bf16": "bf16",
           "fp8-official": None}
CARD_MARKER = "<!-- written by flashvsr-q export -->"

# Which front-end loads which export (shared notes, interop-formats §4); "claim" = not verified by anyone.
FRONT_ENDS = {
    "comfy": [
        ("ComfyUI, Load Diffusion Model (UNETLoader)", "yes: every ComfyUI-native format (int8 needs ComfyUI with "
         "int8 support, v0.27+; the fast CUDA kernels need comfy-kitchen and torch built for CUDA 13)"),
        ("ComfyUI-FlashVSR-Stock (STK)", "yes: it loads the DiT with comfy.sd.load_diffusion_model (native formats)"),
        ("ComfyUI-WanVideoWrapper (kijai) FlashVSR", "claim, untested: its loader imports comfy_quant support"),
        ("ComfyUI-FlashVSR-Plus-T8", "unverified: ships its own int8 ConvRot files; loader code not read"),
        ("FlashVSR_Ultra_Fast (L6), FlashVSR_Stable (NX), 1038lab", "no: DiffSynth's key/shape hash rejects every "
         "quantized file"),
        ("flashvsr-q", "yes: `--checkpoint FILE` with LQ_proj_in.ckpt, TCDecoder.ckpt, posi_prompt.pth beside it "
         "(or fetched with `flashvsr-q fetch v1.1`)"),
    ],
    "bf16": [
        ("FlashVSR_Ultra_Fast (L6), FlashVSR_Stable (NX)", "yes, without --prefix: name it "
         "diffusion_pytorch_model_streaming_dmd.safetensors in models/FlashVSR(-v1.1)/"),
        ("1038lab ComfyUI-FlashVSR", "yes, without --prefix (same DiffSynth key hash; it expects its own file name)"),
        ("ComfyUI, Load Diffusion Model; ComfyUI-FlashVSR-Stock", "yes (with or without --prefix)"),
        ("flashvsr-q", "yes: as an official folder, or `--checkpoint FILE` with the official parts beside it"),
    ],
    "fp8-official": [
        ("ComfyUI (legacy scaled_fp8, converted on load); ComfyUI-WanVideoWrapper", "yes (scale_weight convention)"),
        ("FlashVSR_Ultra_Fast (L6), FlashVSR_Stable (NX), 1038lab", "no: the scale_weight keys change the key hash"),
        ("flashvsr-q", "read back with flashvsr_q.quant.export.read_fp8_official"),
    ],
}


@dataclass
class ExportOptions:
    """What ``flashvsr-q export`` takes (the CLI flags, same names and defaults).

    Attributes:
        checkpoint: the source (official folder or flashvsr-q checkpoint; None: ``$FLASHVSR_Q_CHECKPOINT`` or the
            shipped model).
        format: one of :data:`FORMATS`.
        output: the file to write (a folder for ``fp8-official``); the card goes to ``<stem>.md`` beside it.
        prefix: prefix every key with ``model.diffusion_model.`` (ComfyUI accepts both; the DiffSynth nodes do not).
        calibration: statistics from ``flashvsr-q calibrate``: ``comfy-fp8``'s input scales, or a calibrated recipe.
        recipe: quantize an official source with this recipe first (e.g. ``w8a8-int8-convrot-calibrated``).
        variant: LQ projection of official weights ("v1" or "v1.1"). measure: the quality check of the card.
    """

    checkpoint: str | Path | None
    format: str
    output: str | Path
    prefix: bool = False
    calibration: CalibrationLike | None = None
    recipe: RecipeLike | None = None
    variant: str = "v1.1"
    overwrite: bool = False
    measure: bool = True


@dataclass
class ExportResult:
    """What was written: the file (or folder), its card, its SHA-256 (files only), size, and the measured SNR."""

    output: Path
    card: Path
    format: str
    bytes: int
    sha256: str | None
    quality: dict = field(default_factory=dict)

    def describe(self) -> str:
        snr = self.quality.get("dit_snr_db")
        measured = f"; DiT output {snr:.1f} dB SNR vs {self.quality['reference']}" if snr is not None else ""
        return f"wrote {self.output} ({self.format}, {self.bytes / 1e6:.1f} MB{measured}) and {self.card.name}"


def card_path(output: Path) -> Path:
    """``FILE.safetensors`` -> ``FILE.md``; a folder ``OUT`` -> ``OUT.md``."""
    return output.with_suffix(".md") if output.suffix else output.with_name(output.name + ".md")


def check_targets(output: Path, card: Path, inputs: list[Path], overwrite: bool, folder: bool) -> None:
    """The shared output rules (``tasks.outputs``) for the file (a folder for fp8-official) and its card, and: a card
    is replaced only when this command wrote it."""
    if not output.parent.is_dir():
        raise FlashVSRError(f"the folder {output.parent} does not exist")
    check_output(output, inputs=inputs, overwrite=overwrite, kind="folder" if folder else "file",
                 owned=lambda path: checkpoint_kind_or_none(path) is not None)
    check_output(card, inputs=inputs, overwrite=overwrite, kind="file", what="model card")
    if card.exists() and CARD_MARKER not in card.read_text(errors="replace")[:4096]:
        raise FlashVSRError(f"{card} exists and was not written by flashvsr-q export; refusing to replace it")


def checkpoint_kind_or_none(path: Path) -> str | None:
    try:
        return checkpoint_kind(path)
    except FlashVSRError:
        return None


def source_files(source: Path) -> list[Path]:
    """The files a source checkpoint consists of (what the export must never write onto)."""
    if source.is_file():
        return [source]
    files = [source / name for name in OFFICIAL_FILES.values()] + [source / "manifest.json"]
    if (source / "manifest.json").is_file():
        files += [source / name for name in read_manifest(source)["files"]]
    return [f for f in files if f.exists()]


# ---------------------------------------------------------------------------------------------------------------
# the quality measured for the card
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def dit_step(model: FlashVSR, seed: int = 0) -> torch.Tensor:
    """One first-chunk DiT step at a 128x128 output (random latents and LQ tokens from ``seed``; every block
    Linear runs, the cross-attention's prompt K/V included): ``[1, C, 6, 16, 16]`` in fp32."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    noise = torch.randn(1, cfg.latent_channels, 6, 16, 16, generator=g).to(model.device, model.dtype)
    lq = torch.randn(1, 6 * 8 * 8, cfg.dim, generator=g).to(model.device, model.dtype)
    return model.dit(noise, lq, model.conditioning(), model.dit.new_caches(3), 0, LCSASettings()).float()


def measure_file(tensors: dict[str, torch.Tensor], reference: FlashVSR, reference_is_float: bool = True,
                 seeds: tuple[int, ...] = (0, 1)) -> dict:
    """DiT-output SNR (dB) of the written tensors, run as ComfyUI runs them (bf16 compute), against ``reference``'s
    DiT (in its own dtype) on :func:`dit_step`, averaged over ``seeds``."""
    file = from_comfy(tensors, config=reference.config, source="export")
    with torch.device("meta"):
        model = FlashVSR(reference.config)
    apply_comfy(model.dit, file, torch.bfloat16, "cpu")
    model.prompt = reference.prompt.detach().to(torch.bfloat16)
    model.dit._rope_tables = None
    snrs = []
    for seed in seeds:
        ref, out = dit_step(reference, seed), dit_step(model.eval(), seed)
        error = float((ref - out).norm())
        snrs.append(math.inf if error == 0 else 20 * math.log10(float(ref.norm()) / error))
    what = "the float model" if reference_is_float else "the source checkpoint as flashvsr-q runs it"
    return {"dit_snr_db": sum(snrs) / len(snrs), "seeds": list(seeds), "compute": "bf16 (as ComfyUI)",
            "reference": f"{what} ({str(reference.dtype).removeprefix('torch.')} compute)"}


# ---------------------------------------------------------------------------------------------------------------
# the use case
# ---------------------------------------------------------------------------------------------------------------


def export(options: ExportOptions) -> ExportResult:
    """Export a checkpoint (see the module docstring); returns what was written.

    Raises:
        FlashVSRError: a bad format, source, recipe, statistics or output (all before any weight is read), or a
        source this format cannot carry (e.g. an NF4 checkpoint as comfy-int8-convrot).
    """
    o = options
    if o.format not in FORMATS:
        raise FlashVSRError(f"unknown export format {o.format!r}; choose one of {', '.join(FORMATS)}")
    source = Path(o.checkpoint) if o.checkpoint is not None else default_checkpoint()
    kind = checkpoint_kind(source)
    if kind == "comfy":
        raise FlashVSRError(f"{source} is already a ComfyUI file; export from an official or flashvsr-q checkpoint")
    recipe = o.recipe if o.recipe is None or isinstance(o.recipe, Recipe) else load_recipe(o.recipe)
    calibration = o.calibration
    if calibration is not None and not isinstance(calibration, CalibrationStats):
        calibration = CalibrationStats.load(calibration)
    if recipe is not None:
        read_recipe_and_calibration(recipe, calibration)  # a calibrated recipe without statistics is refused here
    if recipe is not None and kind != "official":
        raise FlashVSRError(f"--recipe quantizes float weights: {source} is already a compressed checkpoint")
    if o.format == "comfy-fp8" and calibration is None:
        raise FlashVSRError("comfy-fp8 needs --calibration (flashvsr-q calibrate): ComfyUI clamps activations to "
                            "+-448 unless the file carries an input_scale")
    if o.format == "fp8-official" and (o.prefix or recipe is not None):
        raise FlashVSRError("fp8-official is the official folder layout: no --prefix, no --recipe")
    output = Path(o.output)
    card = card_path(output)
    inputs = source_files(source) + [Path(p) for p in (o.calibration, o.recipe)
                                     if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    check_targets(output, card, inputs, o.overwrite, folder=o.format == "fp8-official")
    with RunLock(output):
        return _write(o, source, kind, output, card, recipe, calibration)


def _write(o: ExportOptions, source: Path, kind: str, output: Path, card: Path, recipe, calibration) -> ExportResult:
    """Build, measure and write the file and its card (the checks have passed and the output is locked)."""
    # the model: float (fp32 from the official files, so quantized from the originals), quantized by the recipe,
    # or as compressed (in its own compute dtype); the quality check compares the file with the float model, or
    # with the compressed source as flashvsr-q runs it
    if kind == "official":
        with torch.device("meta"):
            config = infer_config(source, o.variant)
        reference = load_official(source, config, variant=o.variant, dtype=torch.float32) if (
            recipe is None or o.measure) else None
        model = reference if recipe is None else load_checkpoint(source, dtype=torch.float32, variant=o.variant,
                                                                 recipe=recipe, calibration=calibration)
    else:
        model = reference = load_compressed(source, dtype=None)

    if o.format == "fp8-official":
        export_fp8_official(model, output, overwrite=o.overwrite)
        size, digest, quality = sum(f.stat().st_size for f in output.iterdir() if f.is_file()), None, {}
    else:
        tensors = to_comfy(model, FORMATS[o.format], o.prefix, calibration=calibration)
        quality = measure_file(tensors, reference, kind == "official") if o.measure else {}
        write_comfy(output, tensors)
        del tensors
        size, digest = output.stat().st_size, sha256_file(output)
    write_text(card, model_card(o, source, kind, output, size, digest, recipe, calibration, quality))
    return ExportResult(output, card, o.format, size, digest, quality)


# ---------------------------------------------------------------------------------------------------------------
# the model card
# ---------------------------------------------------------------------------------------------------------------


def _source_lines(source: Path, kind: str) -> list[str]:
    if kind == "compressed":
        manifest = read_manifest(source)
        lines = [f"- source: flashvsr-q checkpoint `{source}` (recipe `{manifest.get('recipe', {}).get('name')}`, "
                 f"model {manifest['model_config'].get('name')})"]
        lines += [f"  - `{name}` sha256 `{info['sha256']}`" for name, info in manifest["files"].items()]
        return lines
    lines = [f"- source: official-layout folder `{source}`"]
    for name in OFFICIAL_FILES.values():
        if (source / name).is_file():
            lines.append(f"  - `{name}` sha256 `{sha256_file(source / name)}`")
    return lines


def _calibration_lines(calibration) -> list[str]:
    if calibration is None:
        return ["- calibration: none (absmax scales, as ComfyUI's own converter)"]
    clips = calibration.meta.get("clips") or []
    lines = [f"- calibration: statistics `{calibration.fingerprint()[:16]}…`, {len(calibration.layers)} layers, "
             f"{len(clips)} clips, observer {calibration.meta.get('observer', '?')}"]
    sources = []
    for clip in clips:
        text = json.dumps(clip.get("source", clip), sort_keys=True)
        if text not in sources:
            sources.append(text)
    lines += [f"  - footage: `{s}`" for s in sources[:10]]
    if len(sources) > 10:
        lines.append(f"  - … and {len(sources) - 10} more")
    return lines


def model_card(o: ExportOptions, source: Path, kind: str, output: Path, size: int, digest: str | None, recipe,
               calibration, quality: dict) -> str:
    """The Markdown card written beside the export."""
    family = "comfy" if o.format.startswith("comfy-") else o.format
    lines = [CARD_MARKER, f"# {output.name}", "",
             f"FlashVSR DiT exported by flashvsr-q as **{o.format}**"
             + (" with keys prefixed `model.diffusion_model.`" if o.prefix else "") + ".", "",
             "## File", "", f"- `{output.name}`: {size:,} bytes" + (f", sha256 `{digest}`" if digest else "")]
    lines += _source_lines(source, kind)
    if recipe is not None:
        lines.append(f"- recipe: `{recipe.name}` (sha256 `{hashlib.sha256(recipe.text.encode()).hexdigest()}`)")
    lines += _calibration_lines(calibration)
    lines += ["", "## Measured quality", ""]
    if quality:
        lines.append(f"- DiT output SNR against {quality['reference']}: **{quality['dit_snr_db']:.1f} dB** (one "
                     f"first-chunk DiT step at 128x128, random latents and LQ tokens, seeds {quality['seeds']}, "
                     f"{quality['compute']}). This measures the file against its own source, not picture quality.")
    else:
        lines.append("- not measured at export time")
    lines += ["- per-format tables (DiT-output SNR on full-size random weights, frame PSNR and tDiff against the bf16 "
              "model on the shipped small model, sizes): flashvsr-q `docs/quantization.md`; random weights do not "
              "stand for the official ones, so picture quality on real footage is still to be measured.", "",
              "## Which front-ends load it", "", "| front-end | loads it? |", "|---|---|"]
    lines += [f"| {name} | {what} |" for name, what in FRONT_ENDS[family]]
    lines += ["", "The LQ projection, TCDecoder and prompt are not in this file: every FlashVSR front-end reads them "
              "from its own files (the official `LQ_proj_in.ckpt`, `TCDecoder.ckpt`, `posi_prompt.pth`). "
              f"flashvsr-q imports {SUPPORTED}. See flashvsr-q `docs/comfyui.md`."]
    return "\n".join(lines) + "\n"
