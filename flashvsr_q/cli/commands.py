"""The subcommands of ``flashvsr-q``: each is its arguments (argparse) and a few lines that build the task's options
from them, call the task (``flashvsr_q.tasks``) and print what it returns.

Subcommands register in ``COMMANDS`` as (help, add_arguments, run); ``flashvsr_q.cli.main`` dispatches. The task
modules load on first use, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flashvsr_q import tasks
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.shipped import quantization_recipes

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, AddArgs, Run]] = {}


def command(name: str, help: str) -> Callable[[AddArgs], AddArgs]:
    """Register ``add_arguments``; its ``run`` is the function named ``run_<name>`` in this module."""

    def register(add_arguments: AddArgs) -> AddArgs:
        COMMANDS[name] = (help, add_arguments, lambda args: globals()[f"run_{name.replace('-', '_')}"](args))
        return add_arguments

    return register


def options(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """The task's options dataclass from the parsed flags of the same names (``values`` set the others)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names and k not in values}, **values)


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quiet(message: str) -> None:
    pass


# --- app ---------------------------------------------------------------------------------------------------------


@command("app", "the Gradio GUI (upscale, quantize, evaluate) on a local web page")
def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--output-dir", default=None,
                        help="where results are written (default: a new temporary folder)")


def run_app(args: argparse.Namespace) -> int:
    try:
        from flashvsr_q.app.main import launch  # gradio is the optional [app] extra
    except ImportError:
        raise FlashVSRError("the GUI needs gradio: pip install 'flashvsr-q[app]'") from None
    launch(host=args.host, port=args.port, output_dir=args.output_dir)
    return 0


# --- upscale -----------------------------------------------------------------------------------------------------


@command("upscale", "upscale a video, image, image folder or folder of videos (tiled, streaming, resumable)")
def add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="video file, image, folder of images, or folder of videos (batch)")
    parser.add_argument("-o", "--output", required=True,
                        help="output of the same kind: video file (.mp4/.mkv/.mov), image, or folder")
    add_upscale_settings(parser)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run (same input, model, "
                        "options)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (only one that "
                        "flashvsr-q wrote; never an input or a folder holding one)")
    parser.add_argument("--allow-truncated", action="store_true", help="upscale a video whose container promises "
                        "more frames than it holds (what is there; the summary says so) instead of stopping")
    parser.add_argument("--dry-run", action="store_true", help="run every check, load the model and print the "
                        "pre-flight report (tiling, estimated peak memory) on stdout, then stop")
    parser.add_argument("--json", action="store_true", help="print the summary (or the --dry-run report) as JSON on "
                        "stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or pre-flight report")


def run_upscale(args: argparse.Namespace) -> int:
    log = quiet if args.quiet else stderr
    task = options(tasks.upscale.UpscaleOptions, args, audio=not args.no_audio,
                   show_progress=not (args.quiet or args.json))
    if args.dry_run:
        reports = tasks.upscale.preflight(task, log=log)
        print(json.dumps([r.to_dict() for r in reports], indent=1) if args.json
              else "\n\n".join(r.describe() for r in reports) or f"{args.output}: already complete, nothing to do")
        return 0
    result = tasks.upscale.upscale(task, log=log)
    summaries = [] if result is None else result if isinstance(result, list) else [result]
    if args.json:
        print(tasks.upscale.summaries_json(summaries) if summaries else "[]")
    else:
        for summary in summaries:
            print(summary.describe())
        if not summaries:
            print(f"{args.output}: already complete, nothing to do")
    return 0


def add_upscale_settings(parser: argparse.ArgumentParser) -> None:
    """The flags of how a video is upscaled (model, tiling, attention, encoder, segments): `upscale` and `batch`."""
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder, or a ComfyUI-native DiT .safetensors file with the official LQ "
                        "projection, decoder and prompt beside it (default: $FLASHVSR_Q_CHECKPOINT or the shipped "
                        "small model)")
    parser.add_argument("--pipeline", default="tiny", choices=("tiny", "full"), help="tiny: the TCDecoder "
                        "(default, fast); full: the Wan2.1 VAE decoder (Wan2.1_VAE.pth in the checkpoint folder, "
                        "`flashvsr-q fetch v1.1 --full`), the official Full pipeline: slower, more memory")
    parser.add_argument("--recipe", default=None, help="quantize while loading with this recipe: a shipped name "
                        f"({', '.join(quantization_recipes())}) or a YAML file; the memory plan counts the "
                        "quantized weights")
    parser.add_argument("--variant", default=None, choices=("v1", "v1.1"), help="LQ projection of an official "
                        "folder (its files cannot tell; default v1.1); folders that record theirs must agree")
    parser.add_argument("--calibration", default=None, help="activation statistics from `flashvsr-q calibrate`, "
                        "for --recipe with static scales or SmoothQuant")
    parser.add_argument("--scale", type=int, default=4, help="integer scale 1..8 (default 4, what FlashVSR is "
                        "trained for)")
    parser.add_argument("--tile", default="auto", help="auto (fit --vram), off, or SIZExOVERLAP in input pixels, "
                        "rounded to the 128-px output grid (e.g. 256x32)")
    parser.add_argument("--vram", default=None, help="device memory budget for --tile auto, e.g. 8GB (default: "
                        "free CUDA memory; no limit on CPU)")
    parser.add_argument("--attention", default="auto", help="auto, sparse, dense, sage, sparge, flex, block_sparse, "
                        "triton or full (auto picks the fastest available and says which)")
    parser.add_argument("--color-fix", default="adain", choices=("adain", "wavelet", "none"),
                        help="colour correction against the upsampled input (default adain, as the official code)")
    parser.add_argument("--dtype", default=None, choices=("bf16", "fp32", "fp16"),
                        help="compute dtype (default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="latent noise seed (default 0)")
    parser.add_argument("--codec", default="libx264", choices=("libx264", "libx265"), help="video codec")
    parser.add_argument("--crf", type=float, default=18, help="constant rate factor (default 18)")
    parser.add_argument("--preset", default="medium", help="x264/x265 preset (default medium)")
    parser.add_argument("--pix-fmt", default="yuv420p", choices=("yuv420p", "yuv420p10le"),
                        help="pixel format (yuv420p10le = 10-bit)")
    parser.add_argument("--no-audio", action="store_true", help="do not copy audio and subtitle streams")
    parser.add_argument("--segment-frames", type=int, default=480,
                        help="output frames per segment and resume snapshot (default 480)")

# --- batch -------------------------------------------------------------------------------------------------------


@command("batch", "upscale a video library on Ray: one video per task, one FlashVSR actor per GPU (or CPU workers), "
         "local or on a cluster; resumable, with a summary")
def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of videos, or .txt/.csv "
                        "lists of paths (one per line; relative to the list)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder: one video per "
                        "input (same name), batch-summary.json and batch-summary.md")
    add_upscale_settings(parser)
    parser.add_argument("--workers", type=int, default=None, help="actors in the pool (default: one per GPU of the "
                        "Ray cluster; 1 CPU worker without GPUs, CPU workers share the CPUs)")
    parser.add_argument("--address", default=None, help="join a running Ray cluster: auto (this machine is a node) "
                        "or ray://HOST:PORT (default: start a local Ray for this run)")
    parser.add_argument("--retries", type=int, default=2, help="times a video is retried when its worker process "
                        "dies; each retry resumes from the last committed segment (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs that the batch summary "
                        "does not record as finished with these options (finished ones are always skipped)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout instead of the "
                        "table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_batch(args: argparse.Namespace) -> int:
    batch = tasks.batch  # Ray is the optional [batch] extra: a missing Ray is a one-line error here
    template = options(tasks.upscale.UpscaleOptions, args, input="", output=None, audio=not args.no_audio,
                       show_progress=False)
    result = batch.batch(options(batch.BatchOptions, args, upscale=template, show_progress=not args.quiet),
                         log=quiet if args.quiet else stderr)
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in result.rows], indent=1))
    else:
        print(result.markdown(), end="")
        counts = ", ".join(f"{n} {status}" for status, n in result.counts().items())
        print(f"{counts} in {result.seconds:.1f} s; summary: {result.summary}")
    return 0 if result.ok else 1


# --- bench -------------------------------------------------------------------------------------------------------


@command("bench", "speed and memory of upscaler configurations (JSON + Markdown)")
def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (instead of --model)")
    parser.add_argument("--model", default="small", help="random-weight preset when no --checkpoint: "
                        "small, test, flashvsr-v1, flashvsr-v1.1 (default small)")
    parser.add_argument("--pipeline", default="tiny", help="comma-separated: tiny, full (the Wan2.1 VAE decoder: "
                        "Wan2.1_VAE.pth from --checkpoint, else random weights of the official VAE; default tiny)")
    parser.add_argument("--recipe", default=None, help="comma-separated quantization recipes applied while loading; "
                        "none = unquantized (default: none)")
    parser.add_argument("--attention", default="auto", help="comma-separated backends (default auto)")
    parser.add_argument("--tile", default="off", help="comma-separated --tile values (default off)")
    parser.add_argument("--dtype", default=None, help="comma-separated: fp32, bf16 (default per device)")
    parser.add_argument("--compile", default="off", help="comma-separated: off, on (regional torch.compile)")
    parser.add_argument("--size", default="512x512", help="comma-separated OUTPUT sizes WxH (default 512x512)")
    parser.add_argument("--frames", default="25", help="comma-separated frame counts (default 25)")
    parser.add_argument("--scale", type=int, default=4, help="scale (default 4)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default cuda when available)")
    parser.add_argument("--vram", default=None, help="budget for --tile auto, e.g. 8GB")
    parser.add_argument("--calibration", default=None, help="statistics for recipes that need them: a file from "
                        "`flashvsr-q calibrate`, or synthetic (random statistics of the right shapes: speed only)")
    parser.add_argument("--profile-stages", action="store_true", help="also time the LQ projection, the DiT, the "
                        "decoder (or VAE) and the rest (tiling, colour fix, frame I/O) separately, with a device "
                        "sync around each")
    parser.add_argument("--in-process", action="store_true",
                        help="run configurations in this process (default: a fresh subprocess each, so peak RSS "
                        "and device peaks are per configuration)")
    parser.add_argument("-o", "--output", default=None, help="write results as JSON here (and .md beside it)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")


def run_bench(args: argparse.Namespace) -> int:
    results = tasks.bench.bench(options(tasks.bench.BenchOptions, args))
    print(json.dumps(results, indent=1) if args.json else tasks.bench.to_markdown(results))
    return 0


# --- fetch -------------------------------------------------------------------------------------------------------


@command("fetch", "download the official FlashVSR weights (v1 or v1.1) from Hugging Face and verify their SHA-256")
def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    # (dest "release": "version" is the top-level --version flag's)
    parser.add_argument("release", metavar="{v1,v1.1}", choices=("v1", "v1.1"), help="which release")
    parser.add_argument("--dir", dest="directory", default=None, metavar="DIR", help="target folder (default: "
                        "$FLASHVSR_Q_OFFICIAL/FlashVSR-VERSION, ~/.cache/flashvsr-q/official/...; then "
                        "--checkpoint flashvsr-VERSION finds it)")
    parser.add_argument("--full", action="store_true", help="also Wan2.1_VAE.pth (508 MB), the decoder of "
                        "--pipeline full")


def run_fetch(args: argparse.Namespace) -> int:
    folder = tasks.fetch.fetch(options(tasks.fetch.FetchOptions, args, version=args.release))
    if args.directory is None:
        print(f"use it with --checkpoint flashvsr-{args.release}" + (" --pipeline full" if args.full else ""))
    else:
        print(f"use it with --checkpoint {folder}" + (" --pipeline full" if args.full else ""))
    return 0


# --- quantize ----------------------------------------------------------------------------------------------------


@command("quantize", "quantize a checkpoint with a recipe into a compressed checkpoint (or export fp8 official)")
def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipe", help="recipe YAML file, or the name of a shipped one: "
                      f"{', '.join(quantization_recipes())}")
    what.add_argument("--export", choices=("fp8-official",),
                      help="instead of a compressed checkpoint, write the official file layout with fp8 e4m3 DiT "
                      "linears and per-tensor scale_weight (ComfyUI scaled-fp8 convention)")
    parser.add_argument("--checkpoint", default=None,
                        help="official-layout folder to quantize (default: $FLASHVSR_Q_CHECKPOINT or the shipped "
                        "small model)")
    parser.add_argument("-o", "--output", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--calibration", default=None, help="activation statistics from `flashvsr-q calibrate` "
                        "(required by static and SmoothQuant recipes)")
    parser.add_argument("--device", default="cpu", help="device that quantizes and will run the model: cpu or "
                        "cuda[:N] (default cpu); the recipe's schemes are checked against it")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "fp16"), help="compute dtype (bf16)")
    parser.add_argument("--variant", default="v1.1", choices=("v1", "v1.1"), help="LQ projection of official "
                        "weights (the files cannot tell)")
    parser.add_argument("--dry-run", action="store_true", help="print the per-layer plan and stop")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="do not print the plan")


def run_quantize(args: argparse.Namespace) -> int:
    show_plan = print if args.dry_run or not args.quiet else None
    result = tasks.quantize.quantize(options(tasks.quantize.QuantizeOptions, args), on_plan=lambda p: show_plan
                                     and show_plan(p.format()))
    if result is not None:
        print(result.describe())
    return 0


# --- inspect -----------------------------------------------------------------------------------------------------


@command("inspect", "what a checkpoint folder holds: schemes per layer, sizes, hashes, versions")
def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official-layout or compressed checkpoint folder, or a ComfyUI-native DiT "
                        ".safetensors file")
    parser.add_argument("--no-hash", action="store_true", help="skip SHA-256 (sizes are still checked)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_inspect(args: argparse.Namespace) -> int:
    info = tasks.inspect.inspect(tasks.inspect.InspectOptions(args.checkpoint, hashes=not args.no_hash))
    print(json.dumps(info, indent=1) if args.json else tasks.inspect.format_inspection(info))
    bad = tasks.inspect.failed(info)
    if bad:
        print(f"error: {', '.join(bad)} failed verification", file=sys.stderr)
        return 1
    return 0


# --- export ------------------------------------------------------------------------------------------------------


@command("export", "write a DiT file that ComfyUI and the FlashVSR nodes load (int8 ConvRot, int8, fp8, bf16), with a "
         "model card")
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="official-layout folder or flashvsr-q compressed checkpoint")
    parser.add_argument("--format", required=True, choices=("comfy-int8-convrot", "comfy-int8", "comfy-fp8", "bf16",
                                                            "fp8-official"),
                        help="comfy-int8-convrot: ComfyUI INT8 ConvRot (W8A8); comfy-int8: int8 weight-only; "
                        "comfy-fp8: fp8 e4m3 with calibrated input scales; bf16: same keys in bf16 (DiffSynth-based "
                        "nodes); fp8-official: the legacy scaled_fp8 official-layout folder")
    parser.add_argument("-o", "--output", required=True, help="the .safetensors file to write (a folder for "
                        "fp8-official); the model card goes beside it as <name>.md")
    parser.add_argument("--prefix", action="store_true", help="prefix every key with model.diffusion_model. "
                        "(ComfyUI reads both; the DiffSynth-based nodes need no prefix)")
    parser.add_argument("--calibration", default=None, help="activation statistics from `flashvsr-q calibrate` "
                        "(comfy-fp8's input scales; calibrated recipes)")
    parser.add_argument("--recipe", default=None, help="quantize an official folder with this recipe first, e.g. "
                        "w8a8-int8-convrot-calibrated with --calibration (calibrated int8 ConvRot scales)")
    parser.add_argument("--variant", default="v1.1", choices=("v1", "v1.1"), help="LQ projection of official "
                        "weights (the files cannot tell)")
    parser.add_argument("--no-measure", dest="measure", action="store_false", help="skip the quality check that "
                        "goes into the model card (one DiT step of the file against its source)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export and its card")


def run_export(args: argparse.Namespace) -> int:
    print(tasks.export.export(options(tasks.export.ExportOptions, args)).describe())
    return 0


# --- degrade -----------------------------------------------------------------------------------------------------


@command("degrade", "make LR footage from HR: MATLAB bicubic or the RealBasicVSR random degradation (seeded)")
def add_degrade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hr", metavar="HR", help="HR video file or folder of images")
    parser.add_argument("-o", "--output", required=True, metavar="LR",
                        help="LR video file (H.264 with the HR's audio, by extension: .mp4 .mkv .mov ...) or folder of "
                        "PNGs")
    parser.add_argument("--preset", default="bicubic", choices=("bicubic", "realbasicvsr"),
                        help="bicubic: MATLAB imresize x1/scale (BI); realbasicvsr: two random rounds of blur, "
                        "resize, noise, JPEG and video compression, one parameter set per clip (default bicubic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the realbasicvsr parameters and noise (default 0)")
    parser.add_argument("--scale", type=int, default=4,
                        help="downscaling factor; HR sides must divide by it (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace LR if it exists")
    parser.add_argument("--lossless", action="store_true", help="a video LR as exact RGB (libx264rgb CRF 0) for "
                        "evaluation, instead of H.264 yuv420p that plays everywhere")


def run_degrade(args: argparse.Namespace) -> int:
    result = tasks.degrade.degrade(options(tasks.degrade.DegradeOptions, args))
    print(tasks.degrade.describe(result))
    return 0


# --- eval --------------------------------------------------------------------------------------------------------


@command("eval", "compare configurations (bicubic, float, recipes, tiling, attention backends) on a dataset: "
         "per-clip and mean tables, deltas, plots")
def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="REDS-style folder (GT/<clip>/*.png [+ LR/<clip>/*.png]), "
                        "LR-only folder of clips (VideoLQ style), folder of HR videos, one video, or heldout (the "
                        "shipped small model's held-out clips)")
    parser.add_argument("--dataset-kind", default="auto", choices=("auto", "reds", "videolq", "videos", "heldout"),
                        help="how to read --dataset (default: detected)")
    parser.add_argument("--frames", type=int, default=None, help="at most N frames per clip (default: all)")
    parser.add_argument("--crop", default=None, help="keep a centred window of at most WxH HR pixels of every clip "
                        "(e.g. 320x128; the LR window is W/scale x H/scale)")
    parser.add_argument("--degradation", default="bicubic", choices=("bicubic", "realbasicvsr"),
                        help="how LR is made where the dataset has only HR (default bicubic)")
    parser.add_argument("--degradation-seed", type=int, default=0, help="seed of the degradation; clip i uses "
                        "SEED+i (default 0)")
    parser.add_argument("--config", action="append", default=[], metavar="NAME:key=value,...",
                        help="one configuration; keys: checkpoint, recipe, tile, attention, dtype, color_fix, "
                        "calibration, pipeline, kind (model|bicubic); repeatable (e.g. int8:recipe=int8-weight-only)")
    parser.add_argument("--checkpoint", default=None, help="comma-separated checkpoint folders (an axis; default: "
                        "$FLASHVSR_Q_CHECKPOINT or the shipped small model)")
    parser.add_argument("--recipe", default=None, help="comma-separated recipes: shipped names, YAML files, none "
                        "(the float model) or all (every shipped quantization recipe)")
    parser.add_argument("--tile", default=None, help="comma-separated tilings: off, auto, SIZExOVERLAP in LR pixels")
    parser.add_argument("--attention", default=None, help="comma-separated attention backends, or all")
    parser.add_argument("--dtype", default=None, help="comma-separated fp32, bf16, fp16 (default: bf16 on CUDA, "
                        "fp32 on CPU)")
    parser.add_argument("--sweep", default="product", choices=("product", "each"), help="product: every "
                        "combination of the axis flags; each: the first value of every axis, then one axis changed "
                        "at a time (default product)")
    parser.add_argument("--color-fix", default="adain", choices=("adain", "wavelet", "none"),
                        help="colour correction of the model configurations (default adain)")
    parser.add_argument("--pipeline", default="tiny", choices=("tiny", "full"), help="decoder of the model "
                        "configurations: tiny (TCDecoder, default) or full (Wan2.1 VAE, Wan2.1_VAE.pth in the "
                        "checkpoint folder); --config NAME:pipeline=full sets it per configuration")
    parser.add_argument("--calibration", default=None, help="calibration statistics for recipes that need them")
    parser.add_argument("--no-bicubic", action="store_true", help="leave out the bicubic baseline")
    parser.add_argument("--metrics", default="all", help="comma-separated metric names, or all (psnr, ssim, lpips, "
                        "niqe, musiq, clipiqa, dover, ewarp, tlp, tdiff; default all); metrics whose weights are "
                        "missing are skipped with a note")
    parser.add_argument("--reference", default=None, help="configuration the deltas are taken against (default: "
                        "the first model configuration)")
    parser.add_argument("--seed", type=int, default=0, help="latent noise seed of the model (default 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default cuda when available)")
    parser.add_argument("--title", default="Evaluation report", help="title of report.md")
    parser.add_argument("--save-frames", action="store_true", help="also write every output frame as PNG "
                        "(OUTPUT/frames/<config>/<clip>/)")
    parser.add_argument("--update-doc", default=None, metavar="FILE.md", help="also put the report between the "
                        "lines <!-- flashvsr-q eval: begin --> and <!-- flashvsr-q eval: end --> of FILE.md")
    parser.add_argument("-o", "--output", required=True, help="report folder (report.md, table.md, CSV, JSON, PNG)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    parser.add_argument("--json", action="store_true", help="print the means and the report files as JSON on stdout")


def run_eval(args: argparse.Namespace) -> int:
    command = shlex.join(["flashvsr-q", *getattr(args, "argv", [])])
    task = options(tasks.evaluate.EvaluateOptions, args, command=command, show_progress=not args.quiet)
    results = tasks.evaluate.evaluate(task, log=quiet if args.quiet else stderr)
    if args.json:
        files = {kind: str(path) for kind, path in results.files.items()}
        print(json.dumps({"means": tasks.evaluate.means(results), "files": files}, indent=1, default=str))
        return 0
    print(tasks.evaluate.describe_results(results))
    print(f"report written to {Path(args.output)}/ ({', '.join(sorted(p.name for p in results.files.values()))})")
    if args.update_doc:
        print(f"updated {args.update_doc}")
    return 0


# --- train -------------------------------------------------------------------------------------------------------


@command("train", "train a FlashVSR model (the shipped small one) from a YAML recipe with Lightning")
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="training recipe YAML (e.g. recipes/train-small.yaml)")
    parser.add_argument("-o", "--output", required=True, help="run folder: Lightning checkpoints, logs, model/")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/lightning/last.ckpt")
    parser.add_argument("--max-minutes", type=float, help="stop this invocation after N minutes (resumable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    result = tasks.train.train(options(tasks.train.TrainOptions, args, progress=not args.no_progress))
    last = result.losses[-1][1] if result.losses else float("nan")
    print(f"trained to step {result.steps} in {result.wall_seconds / 60:.1f} min (last loss {last:.4f}); "
          f"model: {result.model_dir}; resume from: {result.checkpoint}")
    return 0


@command("demo", "the embedded-default tour: upscale a sample clip in bf16 and int8, print a table, write outputs")
def add_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped small model)")
    parser.add_argument("--frames", type=int, default=33, help="frames of the sample clip (default 33)")
    parser.add_argument("--recipe", default="int8-weight-only", help="recipe applied on the fly")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run_demo(args: argparse.Namespace) -> int:
    rows = tasks.demo.demo(options(tasks.demo.DemoOptions, args))
    print(tasks.demo.format_table(rows))
    print(f"videos (H.264, play anywhere), side-by-side.png and results.json written to {args.output}/\n")
    print(tasks.demo.NOTICE)
    return 0


# --- qat ---------------------------------------------------------------------------------------------------------


@command("qat", "quantization-aware fine-tuning distilled from the float model (Lightning), then export")
def add_qat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="QAT recipe YAML (e.g. recipes/qat-w4a8.yaml)")
    parser.add_argument("--checkpoint", default=None, help="float checkpoint to fine-tune (default: "
                        "$FLASHVSR_Q_CHECKPOINT or the shipped small model)")
    parser.add_argument("--footage", nargs="+", required=True, help="training footage: video files, image files, "
                        "folders, stills:DIR, hf:DIR (a saved datasets.Dataset), builtin (sample videos + stills)")
    parser.add_argument("-o", "--output", required=True, help="run folder: lightning/, logs/, model/ (the export)")
    parser.add_argument("--steps", type=int, help="total training steps (default: the recipe's run.max_steps)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/lightning/last.ckpt")
    parser.add_argument("--devices", default="1", help="devices (processes) per node, or auto (default 1)")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (multi-node DDP; default 1)")
    parser.add_argument("--strategy", default="auto", choices=("auto", "ddp", "ddp_spawn", "fsdp"),
                        help="multi-device strategy (default auto); fsdp needs CUDA")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"), help="(default auto)")
    parser.add_argument("--precision", default=None, help="Lightning precision (default bf16-mixed on GPU, 32-true)")
    parser.add_argument("--dtype", default=None, choices=("bf16", "fp32"), help="compute dtype of the export "
                        "(default bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--holdout", nargs="*", default=(), help="footage names kept out of training; validation "
                        "clips come from them (default: carphone_pristine.mp4)")
    parser.add_argument("--val-footage", nargs="*", default=(), help="extra validation footage")
    parser.add_argument("--max-minutes", type=float, help="stop this invocation after N minutes (resumable)")
    parser.add_argument("--compare", action="store_true", help="after export, measure teacher, plain PTQ and QAT "
                        "on held-out clips; write OUTPUT/qat-report.md and .json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_qat(args: argparse.Namespace) -> int:
    outcome = tasks.qat.qat(options(tasks.qat.QATOptions, args, holdout=tuple(args.holdout),
                                    val_footage=tuple(args.val_footage), progress=not args.no_progress))
    result = outcome.run
    if result.model_dir is None:  # a non-zero rank of a multi-process run: rank 0 reports and exports
        return 0
    val = ", ".join(f"{k.removeprefix('val/')} {v:.2f} dB" for k, v in result.validation.items())
    print(f"QAT to step {result.steps} in {result.wall_seconds / 60:.1f} min{'; ' + val if val else ''}; "
          f"model: {result.model_dir}; resume from: {result.checkpoint}")
    if outcome.table is not None:
        print(outcome.table)
    return 0


# --- calibrate ---------------------------------------------------------------------------------------------------

CLIP_DEFAULTS = {"calibrate": {"clips": 24, "frames": 41, "size": "256x256"},
                 "sensitivity": {"clips": 2, "frames": 33, "size": "256x256"}}


def _add_clip_arguments(parser: argparse.ArgumentParser, defaults: dict) -> None:
    parser.add_argument("--set", dest="calibration_set", default=None, metavar="FILE", help="calibration-set YAML "
                        "(calibration/*.yaml): footage and settings; flags given here override it")
    parser.add_argument("--checkpoint", default=None, help="float checkpoint (official layout; default: "
                        "$FLASHVSR_Q_CHECKPOINT or the shipped small model)")
    parser.add_argument("--footage", nargs="+", default=None, help="video files, image files, folders, stills:DIR, "
                        "hf:DIR (a datasets.Dataset saved to disk), builtin (sample videos + stills)")
    parser.add_argument("--clips", type=int, default=None, help=f"clips cut from the footage "
                        f"(default {defaults['clips']})")
    parser.add_argument("--frames", type=int, default=None, help=f"LR frames per clip, 8k+1 >= 33: a first chunk "
                        f"and cache-warm chunks (default {defaults['frames']})")
    parser.add_argument("--size", default=None, help=f"output size WxH, multiples of 128 (default {defaults['size']})")
    parser.add_argument("--lr", action="store_true", default=None, help="the footage is already low-resolution: "
                        "used as is (crops of W/4 x H/4) instead of bicubic-downscaled x4 from HR")
    parser.add_argument("--seed", type=int, default=None, help="clip sampling and latent noise seed (default 0)")
    parser.add_argument("--hash", default=None, choices=("content", "mtime"), help="identify footage files by "
                        "SHA-256 of their content (default; stable across machines) or by path+size+mtime (fast)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="compute dtype (default "
                        "bf16 on GPU, fp32 on CPU)")


def _add_sensitivity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grouping", default="layer", choices=("layer", "block", "kind"), help="quantize one "
                        "linear, one DiT block, or one kind (q/k/v/o/ffn across blocks) at a time (default layer)")
    parser.add_argument("--rank-by", default="sqnr", choices=("sqnr", "psnr", "temporal", "latent"),
                        help="metric that ranks sensitivity, lowest first (default sqnr of the decoded frames)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="scheme option (e.g. group_size=64); repeatable")
    _add_output_arguments(parser)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


@command("calibrate", "activation statistics of every linear on your footage (observers, SmoothQuant factors); "
         "optionally a sensitivity report")
def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="statistics file to write (.safetensors), for "
                        "`flashvsr-q quantize --calibration`")
    _add_clip_arguments(parser, CLIP_DEFAULTS["calibrate"])
    parser.add_argument("--observer", default=None, choices=("minmax", "percentile", "mse"),
                        help="per-tensor activation range for static int8 scales (default minmax)")
    parser.add_argument("--percentile", type=float, default=None, help="for --observer percentile (default 99.99)")
    parser.add_argument("--smoothquant-alpha", type=float, default=None, help="compute SmoothQuant factors with this "
                        "alpha (0..1) for the DiT block linears (default: none, or the --recipe's alpha)")
    parser.add_argument("--alpha", action="append", default=[], metavar="PATTERN=ALPHA", help="per-layer alpha: "
                        "first full regex match wins (e.g. 'dit\\.blocks\\.\\d+\\.ffn\\.2=0.75'); repeatable")
    parser.add_argument("--recipe", default=None, help="smooth exactly the layers this recipe quantizes with a "
                        "scheme that takes SmoothQuant factors; its smoothquant alpha and overrides are the default")
    parser.add_argument("--sensitivity", metavar="SCHEME", default=None, help="also rank layer sensitivity under "
                        "SCHEME on the first --sensitivity-clips clips")
    parser.add_argument("--sensitivity-clips", type=int, default=2, help="clips for the sensitivity run (default 2)")
    parser.add_argument("--report", default=None, help="sensitivity report folder (default: OUTPUT-sensitivity/)")
    _add_sensitivity_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing statistics file")


def run_calibrate(args: argparse.Namespace) -> int:
    result = tasks.calibrate.calibrate(options(tasks.calibrate.CalibrateOptions, args, show_progress=not args.quiet))
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    print(result.describe())
    if result.report is not None:
        _print_report(result.report, result.report_files)
    return 0


def _print_report(report, files: dict) -> None:
    print(report.to_markdown(top=10))
    print(f"wrote {files['json']}, {files['markdown']}, {files['plot']}")


# --- sensitivity -------------------------------------------------------------------------------------------------


@command("sensitivity", "quantize one layer (or block, or kind) at a time and rank the damage to the decoded video; "
         "optionally write a mixed-precision recipe for a size budget")
def add_sensitivity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheme", required=True, help="scheme to test (int4_weight_only, nf4, w8a8_int8, ...)")
    parser.add_argument("-o", "--output", required=True, help="report folder: sensitivity.json, .md, .png")
    _add_clip_arguments(parser, CLIP_DEFAULTS["sensitivity"])
    _add_sensitivity_arguments(parser)
    parser.add_argument("--calibration", default=None, help="statistics from `flashvsr-q calibrate` (needed by "
                        "static-activation schemes)")
    parser.add_argument("--smoothquant", action="store_true", help="apply the statistics' SmoothQuant factors")
    parser.add_argument("--budget", default=None, help="size budget of the checkpoint for --recipe-out (e.g. 1.2GB, "
                        "800MiB)")
    parser.add_argument("--fallback", default="bf16", help="precision of the most sensitive layers in the generated "
                        "recipe: bf16 (kept) or a scheme name (default bf16)")
    parser.add_argument("--recipe-out", default=None, help="write a recipe YAML that keeps the most sensitive groups "
                        "in --fallback within --budget")
    parser.add_argument("--recipe-name", default=None, help="name of the generated recipe")


def run_sensitivity(args: argparse.Namespace) -> int:
    result = tasks.calibrate.sensitivity(options(tasks.calibrate.SensitivityOptions, args,
                                                 show_progress=not args.quiet))
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    _print_report(result.report, result.files)
    if result.recipe is not None:
        print(f"wrote {result.recipe}: {result.mix}")
    return 0
