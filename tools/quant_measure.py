"""Measure what each recipe costs: on disk and in host memory while quantizing, and in quality.

    # official-size random weights (6.4 GB, ~8.5 GB RAM, ~30 s), then every CPU-runnable shipped recipe:
    python /work/shared/conformance/make_weights.py --out /tmp/fvsr-L30 --layers 30
    python tools/quant_measure.py --checkpoint /tmp/fvsr-L30 --out /tmp/fvsr-measure --markdown results.md

    # quality of every shipped recipe on a (small) model: held-out PSNR / SSIM against the HR frames and the
    # bf16 model's own output (see :func:`quality_table`)
    python tools/quant_measure.py quality --checkpoint checkpoints/flashvsr-small --markdown quality.md

Each recipe runs in its own process (so peak RSS is that recipe's alone): ``quantize_official`` (layer by layer from
the official files) then ``save_compressed``; the compressed folder is deleted afterwards unless ``--keep``.
Reported per recipe: bytes per part, seconds, peak RSS (``VmHWM``) and the peak of anonymous memory (``RssAnon``,
sampled every 20 ms: what the process allocated itself; the rest of RSS is file pages of the memory-mapped
inputs, which the kernel can drop).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flashvsr_q.files import write_text
from flashvsr_q.quant.stats import synthetic_calibration  # noqa: F401  (used below and by tests)

if TYPE_CHECKING:
    import torch

    from flashvsr_q.model import FlashVSR
    from flashvsr_q.quant.recipes import Recipe
    from flashvsr_q.quant.stats import CalibrationStats

GB = 1e9


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Samples /proc/self/status in a thread: peak RssAnon and RssFile, and VmHWM at the end."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_anon, self.peak_file = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = _status()
            self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
            self.peak_file = max(self.peak_file, s.get("RssFile", 0))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm = _status()["VmHWM"]


def measure_one(recipe_name: str, checkpoint: Path, out: Path, device: str = "cpu") -> dict:
    """Quantize ``checkpoint`` with one recipe into ``out``; sizes, times and memory."""
    import torch

    from flashvsr_q.model import FlashVSR, infer_config
    from flashvsr_q.quant import load_recipe, quantize_official, resolve_plan, save_compressed

    base = _status()
    recipe = load_recipe(recipe_name)
    with torch.device("meta"):
        plan = resolve_plan(recipe, FlashVSR(infer_config(checkpoint)), device)
    calibration = synthetic_calibration(plan) if recipe.needs_calibration else None
    with PeakMemory() as memory:
        start = time.perf_counter()
        model, plan = quantize_official(checkpoint, plan, dtype=torch.bfloat16, device=device,
                                        calibration=calibration)
        quantized_at = time.perf_counter()
        save_compressed(model, out, recipe, plan, calibration.fingerprint() if calibration else None)
        saved_at = time.perf_counter()
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "recipe": recipe_name, "device": device, "synthetic_calibration": calibration is not None,
        "parts": {info["part"]: info["bytes"] for info in manifest["files"].values()},
        "total_bytes": sum(info["bytes"] for info in manifest["files"].values()),
        "quantize_s": round(quantized_at - start, 1), "save_s": round(saved_at - quantized_at, 1),
        "peak_rss": memory.hwm, "peak_anon": memory.peak_anon, "peak_file": memory.peak_file,
        "baseline_rss": base.get("VmRSS", 0), "threads": torch.get_num_threads(),
    }


def runnable_recipes(device: str = "cpu") -> list[str]:
    from flashvsr_q.quant.recipes import load_recipe, shipped_recipes

    return [n for n in shipped_recipes() if all(r.scheme.unavailable(device) is None for r in load_recipe(n).rules)]


def bf16_sizes(checkpoint: Path) -> dict[str, int]:
    import torch

    from flashvsr_q.model import FlashVSR, infer_config

    with torch.device("meta"):
        model = FlashVSR(infer_config(checkpoint))
    count = lambda m: sum(t.numel() for t in m.state_dict().values())  # noqa: E731
    return {"dit": 2 * count(model.dit), "lq_proj": 2 * count(model.lq_proj), "decoder": 2 * count(model.decoder),
            "prompt": 2 * model.prompt.numel()}


def markdown(results: list[dict], bf16: dict[str, int]) -> str:
    lines = ["| recipe | DiT file | vs bf16 DiT | LQ proj + decoder + prompt | total | quantize | save | "
             "peak RSS | peak anon RSS | RSS after imports |", "|---|---|---|---|---|---|---|---|---|---|"]
    other = bf16["lq_proj"] + bf16["decoder"] + bf16["prompt"]
    lines.append(f"| bf16 (reference, computed) | {bf16['dit'] / GB:.3f} GB | 100% | {other / GB:.3f} GB | "
                 f"{(bf16['dit'] + other) / GB:.3f} GB | | | | | |")
    for r in results:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['error']} | | | | | | | | |")
            continue
        p = r["parts"]
        rest = p["lq_proj"] + p["decoder"] + p["prompt"]
        note = " (synthetic calibration)" if r["synthetic_calibration"] else ""
        lines.append(f"| {r['recipe']}{note} | {p['dit'] / GB:.3f} GB | {p['dit'] / bf16['dit']:.0%} | "
                     f"{rest / GB:.3f} GB | {r['total_bytes'] / GB:.3f} GB | {r['quantize_s']} s | {r['save_s']} s | "
                     f"{r['peak_rss'] / GB:.2f} GB | {r['peak_anon'] / GB:.2f} GB | {r['baseline_rss'] / GB:.2f} GB |")
    return "\n".join(lines)


def sqnr_table(dim: int = 1536, tokens: int = 512, seed: int = 0) -> str:
    """Per-layer SQNR of every scheme that runs on CPU: one dim x dim layer, N(0, 1/dim) weights (the official
    init scale), N(0, 1) bf16 activations; output against the bf16 layer."""
    import torch

    from flashvsr_q.quant.schemes import SCHEMES
    from flashvsr_q.quant.stats import LayerCalibration

    torch.manual_seed(seed)
    torch.set_grad_enabled(False)
    weight = torch.randn(dim, dim) / dim**0.5
    x = torch.randn(1, tokens, dim, dtype=torch.bfloat16)
    lines = ["| scheme | SQNR vs bf16 layer |", "|---|---|"]
    for name, cls in sorted(SCHEMES.items()):
        if cls().unavailable("cpu"):
            lines.append(f"| {name} | not on CPU |")
            continue
        layer = torch.nn.Linear(dim, dim).to(torch.bfloat16)
        with torch.no_grad():
            layer.weight.copy_(weight)
        reference = layer(x).float()
        stats = LayerCalibration(x.abs().flatten(0, 1).amax(0).float()) if cls().needs_calibration else None
        out = cls().quantize(layer, stats)(x).float().detach()
        db = 20 * torch.log10(reference.norm() / (reference - out).norm())
        lines.append(f"| {name} | {float(db):.1f} dB |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# quality: every recipe on the held-out clips, against the HR frames and the bf16 model
# ---------------------------------------------------------------------------------------------------------------

CALIBRATION_EXCLUDES = ("bigbuckbunny", "carphone")  # the held-out clips' source videos: never calibrated on
STATIC_VARIANTS = {"w8a8-int8-static (min-max)": "minmax", "w8a8-int8-static (percentile)": "percentile"}


@dataclass
class QualityRow:
    """One line of the quality table: a float model or a recipe, on every held-out clip.

    ``clips`` maps clip name -> {"psnr", "ssim"} against the HR frames, "vs_bf16" (PSNR of the 8-bit output
    against the bf16 float model's 8-bit output; inf when identical) and "latent_snr" (SNR in dB of the DiT's
    output latents against the bf16 model's; inf when identical). ``note`` says why a recipe has no numbers.
    """

    name: str
    what: str
    clips: dict[str, dict[str, float]]
    seconds: float = 0.0
    note: str = ""

    def mean(self, key: str) -> float:
        import numpy as np

        return float(np.mean([c[key] for c in self.clips.values()]))


def held_out_outputs(model: FlashVSR, clips: dict[str, torch.Tensor], seed: int = 0, fix: str = "adain",
                     attention: str = "sparse") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(8-bit output frames [3, T - 4, H, W], DiT output latents [1, C, 2k, h, w] fp32) of ``model`` on each
    held-out HR clip [T, 3, H, W].

    The path of :func:`flashvsr_q.train.measure.measure` (the training run's held-out measurement): training
    degradation (bicubic x1/4, 8-bit, bicubic x4), ``run_clip`` with seeded noise, colour fix, truncation to 8 bits.
    The frames and latents are returned so that recipes can also be compared with the float model's output; the
    latents show the DiT's quantization error even where the decoder makes little use of them.
    """
    import torch

    from flashvsr_q.data.clips import make_pair
    from flashvsr_q.infer.colorfix import color_fix, to_uint8
    from flashvsr_q.model.streaming import SeededNoise, run_clip

    model.set_attention(attention)
    out = {}
    with torch.no_grad():
        for name, hr_u8 in clips.items():
            lr_up, _ = make_pair(hr_u8)  # [3, T, H, W] in [-1, 1]
            frames_out = hr_u8.shape[0] - 4
            h, w = lr_up.shape[-2:]
            noise = SeededNoise(seed, model.config.latent_channels, h // 8, w // 8)
            frames, latents = run_clip(model, lr_up[None].to(model.device, model.dtype), noise)
            reference = lr_up[None, :, :frames_out]
            out[name] = (to_uint8(color_fix(frames.float().cpu(), reference, fix)[0]), latents.float().cpu())
    return out


def _scores(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], clips: dict[str, torch.Tensor],
            bf16: dict[str, tuple[torch.Tensor, torch.Tensor]] | None) -> dict[str, dict[str, float]]:
    import math

    from flashvsr_q.train.measure import frame_metrics, psnr

    scores = {}
    for name, (frames, latents) in outputs.items():
        hr = clips[name][: frames.shape[1]].permute(1, 0, 2, 3)  # [3, T, H, W] uint8
        row = frame_metrics(frames, hr)
        if bf16 is not None:
            ref_frames, ref_latents = bf16[name]
            same = bool((frames == ref_frames).all())
            row["vs_bf16"] = math.inf if same else psnr(frames.numpy(), ref_frames.numpy())
            error = float((latents - ref_latents).norm())
            row["latent_snr"] = math.inf if error == 0 else 20 * math.log10(float(ref_latents.norm()) / error)
        scores[name] = row
    return scores


def quality_calibration(model: FlashVSR, smoothquant_recipe: Recipe, clips: int = 8, frames: int = 33,
                        size: int = 256, observer: str = "percentile", seed: int = 0) -> CalibrationStats:
    """Calibration statistics for the recipes that need them, from the ``builtin`` footage minus the held-out
    clips' source videos (:data:`CALIBRATION_EXCLUDES`): ``observer`` ranges, and SmoothQuant factors with
    ``smoothquant_recipe``'s alpha and overrides for the layers it smooths."""
    from flashvsr_q.data.footage import resolve_footage
    from flashvsr_q.quant.calibration import CalibrationConfig, FootageClips, calibrate, smoothing_from_recipe

    footage = [f for f in resolve_footage(["builtin"]) if not any(k in f.name for k in CALIBRATION_EXCLUDES)]
    layers, alpha = smoothing_from_recipe(smoothquant_recipe, model)
    config = CalibrationConfig(observer=observer, alpha=alpha, alpha_overrides=smoothquant_recipe.alpha_overrides,
                               smooth_layers=layers, seed=seed)
    return calibrate(model, FootageClips(footage, clips=clips, frames=frames, size=(size, size), seed=seed), config)


def _static_recipe(observer: str) -> Recipe:
    """The shipped w8a8-int8 recipe with static per-tensor activation scales (not shipped: it shows the effect
    of the calibration observer on the static scale)."""
    from flashvsr_q.quant.recipes import load_recipe, parse_recipe

    text = load_recipe("w8a8-int8").text
    text = (text.replace("scheme: w8a8_int8\n", "scheme: w8a8_int8_static\n")
            .replace("calibration: none", "calibration: required")
            .replace("name: w8a8-int8\n", f"name: w8a8-int8-static-{observer}\n"))
    return parse_recipe(text, source=f"w8a8-int8 with static scales ({observer})")


def _without_observer_ranges(stats: CalibrationStats) -> CalibrationStats:
    """A copy of ``stats`` without the observer's per-tensor ranges: static scales fall back to min-max."""
    from flashvsr_q.quant.stats import CalibrationStats

    meta = {k: v for k, v in stats.meta.items() if k not in ("act_clip", "smoothed_act_clip")}
    return CalibrationStats(stats.layers, stats.source_hash + ":minmax", {**meta, "observer": "minmax"})


def quality_table(checkpoint: str | os.PathLike | None = None, recipes: list[str] | None = None, seed: int = 0,
                  fix: str = "adain", calibration_clips: int = 8, static_variants: bool = True,
                  progress: Callable[[str], None] = print,
                  clips: dict[str, torch.Tensor] | None = None) -> tuple[list[QualityRow], dict]:
    """Held-out quality of the float model (fp32, bf16) and of every shipped recipe (quantized in bf16 on CPU).

    Every model sees the same held-out clips (:func:`flashvsr_q.data.clips.held_out_clips`) with the same noise
    seed, so differences between rows are due to quantization alone. Recipes that cannot run on CPU get a row
    with the reason. Recipes that need calibration statistics use :func:`quality_calibration` (percentile
    observer, the SmoothQuant recipe's alpha); with ``static_variants`` two unshipped rows show
    ``w8a8_int8_static`` with min-max and with percentile scales from the same statistics. ``clips`` replaces
    the held-out clips (HR uint8 [T, 3, H, W], T = 8k + 5; tests).

    Returns:
        (rows, info): info holds the checkpoint, the clips and the calibration-set hash.
    """
    import torch

    from flashvsr_q.checkpoints import default_checkpoint, load_checkpoint
    from flashvsr_q.data.clips import held_out_clips
    from flashvsr_q.quant.ptq import quantize_model
    from flashvsr_q.quant.recipes import load_recipe, resolve_plan, shipped_recipes

    checkpoint = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    clips = held_out_clips() if clips is None else clips
    names = recipes if recipes is not None else list(shipped_recipes())
    loaded = {n: load_recipe(n) for n in names}

    def run(name: str, what: str, model: FlashVSR,
            bf16_out: dict | None) -> tuple[QualityRow, dict]:
        start = time.perf_counter()
        outputs = held_out_outputs(model, clips, seed, fix)
        row = QualityRow(name, what, _scores(outputs, clips, bf16_out), time.perf_counter() - start)
        progress(f"  {name}: {row.mean('psnr'):.3f} dB ({row.seconds:.0f} s)")
        return row, outputs

    rows = []
    bf16_row, bf16_out = run("bf16", "float model, bf16 (reference)",
                             load_checkpoint(checkpoint, dtype=torch.bfloat16), None)
    for c in bf16_row.clips.values():
        c["vs_bf16"] = c["latent_snr"] = float("inf")
    fp32_row, _ = run("fp32", "float model, fp32", load_checkpoint(checkpoint, dtype=torch.float32), bf16_out)
    rows += [fp32_row, bf16_row]

    stats = None
    needs_stats = any(r.needs_calibration for r in loaded.values()) or static_variants
    if needs_stats:
        smoothing = next((r for r in loaded.values() if r.smoothquant), None) or load_recipe("w8a8-int8-smoothquant")
        start = time.perf_counter()
        stats = quality_calibration(load_checkpoint(checkpoint, dtype=torch.bfloat16), smoothing,
                                    clips=calibration_clips, seed=seed)
        progress(f"  calibration: {len(stats.meta['clips'])} clips ({time.perf_counter() - start:.0f} s)")

    candidates = [(n, r, stats if r.needs_calibration else None) for n, r in loaded.items()]
    if static_variants:
        candidates += [(label, _static_recipe(obs), stats if obs == "percentile" else _without_observer_ranges(stats))
                       for label, obs in STATIC_VARIANTS.items()]
    for name, recipe, calibration in candidates:
        schemes = sorted({r.scheme.label() for r in recipe.rules})
        what = ", ".join(schemes) + (f" + SmoothQuant (alpha {recipe.smoothquant['alpha']})"
                                     if recipe.smoothquant else "")
        reasons = sorted({why for rule in recipe.rules if (why := rule.scheme.unavailable("cpu"))})
        if reasons:  # a GPU-only scheme
            rows.append(QualityRow(name, what, {}, note=f"GPU: open ({'; '.join(reasons)})"))
            progress(f"  {name}: not on CPU")
            continue
        model = load_checkpoint(checkpoint, dtype=torch.bfloat16)
        quantize_model(model, resolve_plan(recipe, model, "cpu"), calibration)
        rows.append(run(name, what, model, bf16_out)[0])
    dit_file = checkpoint / "diffusion_pytorch_model_streaming_dmd.safetensors"
    identity = dit_file if dit_file.is_file() else checkpoint / "manifest.json"
    info = {"checkpoint": str(checkpoint), "sha256": _sha256(identity)[:16] if identity.is_file() else None,
            "clips": {k: f"{v.shape[-1]}x{v.shape[-2]}, {v.shape[0] - 4} frames"
                                                     for k, v in clips.items()},
            "calibration": stats.source_hash[:16] if stats is not None else None, "seed": seed, "color_fix": fix}
    return rows, info


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quality_markdown(rows: list[QualityRow], info: dict) -> str:
    """The quality table: per clip PSNR / SSIM against HR, their means, the change against bf16, and how close
    each output is to the bf16 model's output."""
    clip_names = list(info["clips"])
    head = ["recipe", "what"] + [f"{c} PSNR / SSIM" for c in clip_names] + [
        "mean PSNR", "Δ vs bf16", "mean SSIM", "frames vs bf16 (PSNR)", "DiT latents vs bf16 (SNR)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = next(r for r in rows if r.name == "bf16")
    for r in rows:
        if not r.clips:
            lines.append(f"| {r.name} | {r.what} | " + " | ".join([r.note] + [""] * (len(head) - 3)) + " |")
            continue
        cells = [f"{r.clips[c]['psnr']:.3f} / {r.clips[c]['ssim']:.4f}" for c in clip_names]
        vs, snr = r.mean("vs_bf16"), r.mean("latent_snr")
        cells += [f"{r.mean('psnr'):.3f}", "—" if r is base else f"{r.mean('psnr') - base.mean('psnr'):+.3f}",
                  f"{r.mean('ssim'):.4f}", "identical" if vs == float("inf") else f"{vs:.1f} dB",
                  "identical" if snr == float("inf") else f"{snr:.1f} dB"]
        lines.append(f"| {r.name} | {r.what} | " + " | ".join(cells) + " |")
    clips = "; ".join(f"{k} {v}" for k, v in info["clips"].items())
    lines.append("")
    identity = f" (DiT file SHA-256 {info['sha256']}…)" if info.get("sha256") else ""
    lines.append(f"Checkpoint `{info['checkpoint']}`{identity}; held-out clips: {clips}; noise seed {info['seed']}, "
                 f"colour fix {info['color_fix']}; calibration set {info['calibration']} (builtin footage without "
                 f"{' / '.join(CALIBRATION_EXCLUDES)}). PSNR (RGB, dB) and SSIM of the 8-bit frames, mean over "
                 f"frames, then over clips.")
    return "\n".join(lines)


def quality_main(argv: list[str]) -> int:
    """``python tools/quant_measure.py quality ...``: print (and optionally write) the quality table."""
    import torch

    parser = argparse.ArgumentParser(prog="python tools/quant_measure.py quality",
                                     description="held-out quality of every shipped recipe on a model")
    parser.add_argument("--checkpoint", default=None, help="float model folder (default: the shipped small model)")
    parser.add_argument("--recipes", default=None, help="comma-separated (default: every shipped recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--color-fix", default="adain", choices=("adain", "wavelet", "none"))
    parser.add_argument("--calibration-clips", type=int, default=8, help="clips for the calibrated recipes")
    parser.add_argument("--no-static-variants", action="store_true", help="leave out the two unshipped "
                        "w8a8_int8_static rows (min-max vs percentile scales)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as torch chooses)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, info = quality_table(args.checkpoint, args.recipes.split(",") if args.recipes else None, args.seed,
                               args.color_fix, args.calibration_clips, not args.no_static_variants,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    table = quality_markdown(rows, info)
    print(table)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# DiT-output SNR of recipes and ComfyUI export formats against the fp32 model (official-size random weights)
# ---------------------------------------------------------------------------------------------------------------


def w4a8_convrot_recipe() -> Recipe:
    """The shipped nf4 recipe with the DiT block linears on ConvRot W4A8 (not shipped: rotation at 4 bits)."""
    from flashvsr_q.quant.recipes import load_recipe, parse_recipe

    text = load_recipe("nf4").text.replace("scheme: nf4\n    options: {blocksize: 64, double_quant: true}",
                                           "scheme: w4a8_int8_convrot\n    options: {group_size: 256}")
    return parse_recipe(text.replace("name: nf4\n", "name: w4a8-int8-convrot\n"), source="nf4 with ConvRot W4A8")


def dit_snr(checkpoint: Path, recipes: list[str], formats: list[str], frames: int = 25, size: int = 128,
            seed: int = 0, progress: Callable[[str], None] = print) -> list[dict]:
    """SNR (dB) of the DiT output latents (LQ projection included: the whole pipeline up to the decoder) and PSNR of
    the decoded frames, each model against the fp32 float model, on one random LR clip (``frames`` frames at
    ``size`` x ``size``: ``frames`` = 25 is the first chunk, each 8 more one more chunk), LCSA sparse attention.

    Recipes are applied with ``quantize_official`` in bf16; ``w8a8-int8-convrot-calibrated`` gets statistics from
    a clip with another seed. Formats are ComfyUI files written from the fp32 model (``to_comfy``) and run as
    ComfyUI runs them in bf16 with the official float LQ projection and decoder.
    """
    import copy
    import math

    import torch

    from flashvsr_q.model import load_official
    from flashvsr_q.model.streaming import SeededNoise, run_clip
    from flashvsr_q.quant import quantize_official
    from flashvsr_q.quant.comfy import apply_comfy, from_comfy, to_comfy
    from flashvsr_q.quant.recipes import load_recipe

    def clip(s: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(s)
        x = torch.rand(1, 3, frames, size // 8, size // 8, generator=g) * 2 - 1
        return torch.nn.functional.interpolate(x, size=(frames, size, size), mode="trilinear").clamp(-1, 1)

    def run(model, s: int = seed) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            model.set_attention("sparse")
            out, lat = run_clip(model, clip(s).to(model.dtype), SeededNoise(0, model.config.latent_channels,
                                                                            size // 8, size // 8))
        return out.float(), lat.float()

    def row(name: str, model) -> dict:
        start = time.perf_counter()
        out, lat = run(model)
        snr = 20 * math.log10(float(ref_lat.norm()) / max(float((ref_lat - lat).norm()), 1e-30))
        mse = float((ref_out.clamp(-1, 1) - out.clamp(-1, 1)).square().mean()) / 4  # frames in [0, 1]
        result = {"name": name, "latent_snr_db": round(snr, 2),
                  "frames_psnr_db": round(10 * math.log10(1 / max(mse, 1e-30)), 2),
                  "seconds": round(time.perf_counter() - start, 1)}
        progress(json.dumps(result))
        return result

    reference = load_official(checkpoint, dtype=torch.float32)
    ref_out, ref_lat = run(reference)
    rows = [row("bf16 (float model, bf16 compute)", copy.deepcopy(reference).to(torch.bfloat16))]
    for fmt in formats:
        stats = None
        if fmt == "fp8":
            stats = _absmax_stats(reference, lambda m: run(m, seed + 1))
        tensors = to_comfy(reference, fmt, calibration=stats)
        model = copy.deepcopy(reference).to(torch.bfloat16)
        apply_comfy(model.dit, from_comfy(tensors, config=reference.config), torch.bfloat16, "cpu")
        model.dit._rope_tables = None
        rows.append(row(f"comfy-{fmt} file", model))
        del tensors, model
    for name in recipes:
        recipe = w4a8_convrot_recipe() if name == "w4a8-int8-convrot" else load_recipe(name)
        stats = _absmax_stats(copy.deepcopy(reference).to(torch.bfloat16), lambda m: run(m, seed + 1)) \
            if recipe.needs_calibration else None
        model, _ = quantize_official(checkpoint, recipe, dtype=torch.bfloat16, calibration=stats)
        rows.append(row(name, model))
        del model
    return rows


def _absmax_stats(model, run_once) -> CalibrationStats:
    """Per-channel input abs-max of every Linear of ``model`` over one run (a clip with another seed)."""
    import torch

    from flashvsr_q.quant.stats import CalibrationStats, LayerCalibration

    absmax, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            def hook(mod, inputs, output, name=name):
                a = inputs[0].detach().float().abs().flatten(0, -2).amax(0)
                absmax[name] = torch.maximum(absmax[name], a) if name in absmax else a
            hooks.append(module.register_forward_hook(hook))
    run_once(model)
    for h in hooks:
        h.remove()
    return CalibrationStats({k: LayerCalibration(v) for k, v in absmax.items()}, source_hash="dit-snr:seed+1")


def snr_main(argv: list[str]) -> int:
    """``python tools/quant_measure.py snr ...``: DiT-output SNR of recipes and export formats (JSON lines)."""
    import torch

    parser = argparse.ArgumentParser(prog="python tools/quant_measure.py snr", description=dit_snr.__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="official-layout folder (float weights)")
    parser.add_argument("--recipes", default="", help="comma-separated recipes (w4a8-int8-convrot: nf4 with "
                        "ConvRot W4A8 DiT linears, not shipped)")
    parser.add_argument("--formats", default="", help="comma-separated ComfyUI formats: int8-convrot,int8,fp8,bf16")
    parser.add_argument("--frames", type=int, default=25, help="25: one chunk; +8 per further chunk")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = lambda v: [x for x in v.split(",") if x]  # noqa: E731
    dit_snr(args.checkpoint, split(args.recipes), split(args.formats), args.frames, args.size,
            progress=lambda line: print(line, flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["quality"]:
        return quality_main(argv[1:])
    if argv[:1] == ["snr"]:
        return snr_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="python tools/quant_measure.py quality --help: the quality table; "
                                     "python tools/quant_measure.py snr --help: DiT-output SNR")
    parser.add_argument("--checkpoint", type=Path, help="official-layout folder")
    parser.add_argument("--out", type=Path, help="scratch folder for the compressed checkpoints")
    parser.add_argument("--sqnr", action="store_true", help="only print the per-layer SQNR of every scheme")
    parser.add_argument("--recipes", default=None, help="comma-separated (default: every shipped recipe that runs "
                        "on --device)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", action="store_true", help="keep the compressed checkpoints")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one recipe, JSON on stdout
    args = parser.parse_args(argv)
    if args.sqnr:
        print(sqnr_table())
        return 0
    if args.checkpoint is None or args.out is None:
        parser.error("--checkpoint and --out are required (or --sqnr)")
    if args.one:
        print(json.dumps(measure_one(args.one, args.checkpoint, args.out / args.one, args.device)))
        return 0
    names = args.recipes.split(",") if args.recipes else runnable_recipes(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--checkpoint", str(args.checkpoint),
               "--out", str(args.out), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            results.append({"recipe": name, "error": proc.stderr.strip().splitlines()[-1][:200]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
        if not args.keep:
            shutil.rmtree(args.out / name, ignore_errors=True)
    table = markdown(results, bf16_sizes(args.checkpoint))
    print(table)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
