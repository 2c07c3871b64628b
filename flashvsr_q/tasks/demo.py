"""``flashvsr-q demo``: the embedded-default tour, offline, in minutes on a CPU.

1. Cut a short clip of held-out sample footage (never used to train the shipped model) and make its LR version
   with MATLAB-style bicubic x1/4 (the ground truth is the original).
2. Upscale it with the shipped model in bf16, and again with an int8 recipe applied on the fly.
3. Print a table: PSNR/SSIM against the ground truth and PSNR against plain bicubic upscaling, speed, memory,
   checkpoint sizes. Write the videos (H.264 yuv420p, they play anywhere), the frames' metrics (JSON) and a
   labelled side-by-side image: whole frames, and an enlarged crop where the model differs most from bicubic.

The shipped model is a demonstration model trained in half an hour on a CPU; it is below bicubic on unseen
footage (docs/small-model.md), and the demo says so. It shows the toolkit working end to end, not FlashVSR's
quality; :data:`NOTICE` tells the user how to get the official weights.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from flashvsr_q.checkpoints import default_checkpoint, load_checkpoint
from flashvsr_q.data.footage import sample_video
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.degrade import bicubic_downscale
from flashvsr_q.eval.metrics import compute_frame_metrics
from flashvsr_q.files import staging_dir
from flashvsr_q.infer import upscale_frames
from flashvsr_q.infer.memory import format_bytes
from flashvsr_q.infer.progress import peak_rss
from flashvsr_q.quant import load_recipe, quantize_model, resolve_plan, save_compressed
from flashvsr_q.video.clips import ClipWriter
from flashvsr_q.video.sources import open_source

NOTICE = """\
What you are looking at: flashvsr-q's small demonstration model (the FlashVSR architecture, 2 blocks, trained in
half an hour on a CPU). It is about 0.6-0.9 dB BELOW plain bicubic on footage it has not seen, and its output has
a faint 4/8-pixel grid (docs/small-model.md explains both). It demonstrates the pipeline, not FlashVSR's quality.
For real results, download the official weights and point the same commands at them:
  flashvsr-q fetch v1.1
  flashvsr-q upscale input.mp4 -o output.mp4 --checkpoint flashvsr-v1.1"""

DEMO_FOOTAGE = "carphone_pristine"  # held out from the small model's training (docs/small-model.md)
DEMO_RECIPE = "int8-weight-only"


@dataclass
class DemoRow:
    """One line of the demo table."""

    name: str
    psnr_gt: float
    ssim_gt: float
    psnr_vs_bicubic: float | None
    seconds: float | None
    fps: float | None
    peak_memory: int | None
    checkpoint_bytes: int | None


def demo_clip(frames: int = 33, footage: str = DEMO_FOOTAGE) -> np.ndarray:
    """HR ground truth uint8 [T, H, W, 3] with H, W multiples of 4 (cropped), from a sample video."""
    source = open_source(sample_video(footage))
    hr = []
    for frame in source.frames():
        hr.append(frame.rgb)
        if len(hr) == frames:
            break
    clip = np.stack(hr)
    h, w = clip.shape[1] // 4 * 4, clip.shape[2] // 4 * 4
    return clip[:, :h, :w]


def bicubic_upscale(lr: np.ndarray, scale: int = 4) -> np.ndarray:
    """PIL bicubic, as the model's own preprocessing, so 'vs bicubic' compares like with like."""
    return np.stack([np.asarray(Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale),
                                                           Image.BICUBIC)) for f in lr])


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)

    return peak_rss()


def _run(model, lr: np.ndarray, device: torch.device) -> tuple[np.ndarray, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = np.stack(list(upscale_frames(model, iter(lr), tile="off", num_frames=len(lr))))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _write_video(path: Path, frames: np.ndarray) -> None:
    """H.264 yuv420p for viewing anywhere (metrics are computed on the uint8 frames, never on a video)."""
    with ClipWriter(path) as writer:
        for frame in frames:
            writer.write(frame)
        writer.close()


def _label(image: Image.Image, text: str) -> Image.Image:
    """``image`` with a black band above it holding ``text`` (the font Pillow ships, readable at any size)."""
    size = max(12, image.width // 12)
    font = ImageFont.load_default(size=size)
    while font.getlength(text) > image.width - 8 and size > 9:  # shrink until the label fits its picture
        size -= 1
        font = ImageFont.load_default(size=size)
    band = ImageFont.load_default(size=max(12, image.width // 12)).getbbox("Ag")[3] + 8
    canvas = Image.new("RGB", (image.width, image.height + band))
    canvas.paste(image, (0, band))
    ImageDraw.Draw(canvas).text((4, 4), text, fill=(255, 255, 255), font=font)
    return canvas


def _row(images: list[Image.Image], gap: int = 4) -> Image.Image:
    canvas = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)),
                       (40, 40, 40))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    return canvas


def most_different_window(a: np.ndarray, b: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left (y, x) of the ``size`` x ``size`` window where frames ``a`` and ``b`` differ most (mean |a-b|)."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)
    size = min(size, diff.shape[0], diff.shape[1])
    integral = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def side_by_side(frames: dict[str, np.ndarray], path: Path, crop_against: tuple[str, str] | None = None,
                 crop: int = 48, zoom: int = 4) -> None:
    """A labelled PNG: one frame of every version side by side and, with ``crop_against`` = (a, b), under it the
    ``crop`` px window where versions a and b differ most, enlarged ``zoom`` times (nearest, so pixels show)."""
    rows = [_row([_label(Image.fromarray(f), name) for name, f in frames.items()])]
    if crop_against is not None:
        y, x = most_different_window(frames[crop_against[0]], frames[crop_against[1]], crop)
        size = min(crop, *next(iter(frames.values())).shape[:2])
        crops = [Image.fromarray(f[y:y + size, x:x + size]).resize((size * zoom, size * zoom), Image.NEAREST)
                 for f in frames.values()]
        rows.append(_row([_label(c, f"{name} (x{zoom})") for name, c in zip(frames, crops)]))
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 4 * (len(rows) - 1)))
    top = 0
    for r in rows:
        canvas.paste(r, (0, top))
        top += r.height + 4
    canvas.save(path)


def run_demo(out_dir: str | os.PathLike = "demo-output", *, checkpoint: str | os.PathLike | None = None,
             frames: int = 33, recipe: str = DEMO_RECIPE, device: str | None = None,
             overwrite: bool = False) -> list[DemoRow]:
    """Run the tour and write its outputs into ``out_dir``; returns the table rows."""

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FlashVSRError(f"{out_dir} already exists and is not empty (pass --overwrite to replace it)")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint()

    hr = demo_clip(frames)
    lr = np.asarray(bicubic_downscale(hr, 4))
    bicubic = bicubic_upscale(lr)

    model = load_checkpoint(ckpt, dtype=torch.bfloat16, device=dev)
    model.set_attention("auto", dev)
    results = {"bf16": _run(model, lr, dev)}
    bf16_peak = _peak_memory(dev)

    plan = resolve_plan(load_recipe(recipe), model, device=dev)
    quantize_model(model, plan)
    staging = staging_dir(out_dir, prefix=".demo-")
    try:
        int8_dir = staging / f"checkpoint-{recipe}"
        save_compressed(model, int8_dir, plan.recipe, plan)
        results[recipe] = _run(model, lr, dev)
        int8_peak = _peak_memory(dev)

        def metrics(frames_: np.ndarray) -> tuple[float, float]:
            m = compute_frame_metrics(frames_, hr, metrics=["psnr", "ssim"])
            return float(np.mean(m["psnr"])), float(np.mean(m["ssim"]))

        psnr_vs_bicubic = lambda x: float(np.mean(compute_frame_metrics(x, bicubic, metrics=["psnr"])["psnr"]))  # noqa: E731
        rows = [DemoRow("bicubic", *metrics(bicubic), None, None, None, None, None)]
        for name, (sr, seconds), peak, size in (
            ("bf16", results["bf16"], bf16_peak, checkpoint_bytes(ckpt)),
            (recipe, results[recipe], int8_peak, checkpoint_bytes(int8_dir)),
        ):
            rows.append(DemoRow(name, *metrics(sr), psnr_vs_bicubic(sr), seconds, len(sr) / seconds, peak, size))

        for name, video in (("lr", lr), ("ground-truth", hr), ("bicubic", bicubic), ("bf16", results["bf16"][0]),
                            (recipe, results[recipe][0])):
            _write_video(staging / f"{name}.mp4", video)
        mid = len(hr) // 2
        nearest = np.asarray(Image.fromarray(lr[mid]).resize(hr.shape[2:0:-1], Image.NEAREST))
        side_by_side({"LR (nearest)": nearest, "bicubic": bicubic[mid], "model bf16": results["bf16"][0][mid],
                      f"model {recipe}": results[recipe][0][mid], "ground truth": hr[mid]},
                     staging / "side-by-side.png", crop_against=("model bf16", "bicubic"))
        (staging / "results.json").write_text(json.dumps(
            {"checkpoint": str(ckpt), "footage": DEMO_FOOTAGE, "frames": len(hr), "lr_size": list(lr.shape[2:0:-1]),
             "device": str(dev), "rows": [asdict(r) for r in rows]}, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def format_table(rows: list[DemoRow]) -> str:
    """Markdown table of the rows (also what the CLI prints)."""
    lines = ["| output | PSNR vs GT (dB) | SSIM vs GT | PSNR vs bicubic (dB) | time (s) | fps | peak memory | "
             "checkpoint |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "—" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        lines.append(f"| {r.name} | {r.psnr_gt:.2f} | {r.ssim_gt:.4f} | {fmt(r.psnr_vs_bicubic, '{:.2f}')} | "
                     f"{fmt(r.seconds, '{:.1f}')} | {fmt(r.fps, '{:.2f}')} | "
                     f"{'—' if r.peak_memory is None else format_bytes(r.peak_memory)} | "
                     f"{'—' if r.checkpoint_bytes is None else format_bytes(r.checkpoint_bytes)} |")
    return "\n".join(lines)


@dataclass
class DemoOptions:
    """What ``flashvsr-q demo`` takes: the output folder, checkpoint, clip length, recipe and device."""

    output: str | os.PathLike = "demo-output"
    checkpoint: str | os.PathLike | None = None
    frames: int = 33
    recipe: str = DEMO_RECIPE
    device: str | None = None
    overwrite: bool = False


def demo(options: DemoOptions) -> list[DemoRow]:
    """Run the tour into ``options.output``; returns the table rows (:func:`format_table`)."""
    if options.frames < 1:
        raise FlashVSRError(f"--frames must be >= 1, got {options.frames}")
    return run_demo(options.output, checkpoint=options.checkpoint, frames=options.frames, recipe=options.recipe,
                    device=options.device, overwrite=options.overwrite)
