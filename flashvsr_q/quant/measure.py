"""Measure what each recipe costs on disk and in host memory while quantizing, from an official-layout folder.

    # official-size random weights (6.4 GB, ~8.5 GB RAM, ~30 s), then every CPU-runnable shipped recipe:
    python /work/shared/conformance/make_weights.py --out /tmp/fvsr-L30 --layers 30
    python -m flashvsr_q.quant.measure --checkpoint /tmp/fvsr-L30 --out /tmp/fvsr-measure --markdown results.md

Each recipe runs in its own process (so peak RSS is that recipe's alone): ``quantize_official`` (layer by layer from
the official files) then ``save_compressed``; the compressed folder is deleted afterwards unless ``--keep``.
Reported per recipe: bytes per part, seconds, peak RSS (``VmHWM``) and the peak of anonymous memory (``RssAnon``,
sampled every 20 ms: what the process allocated itself; the rest of RSS is file pages of the memory-mapped
inputs, which the kernel can drop).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

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


def synthetic_calibration(plan, seed: int = 0):
    """Random statistics of the right shapes (for measuring sizes of calibrated recipes, not for quality)."""
    import torch

    from flashvsr_q.quant.stats import CalibrationStats, LayerCalibration

    g = torch.Generator().manual_seed(seed)
    layers = {fqn: LayerCalibration(torch.rand(p.shape[1], generator=g) * 4 + 0.1,
                                    torch.rand(p.shape[1], generator=g) + 0.5) for fqn, p in plan.quantized.items()}
    return CalibrationStats(layers, source_hash="synthetic", meta={"synthetic": True})


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        cmd = [sys.executable, "-m", "flashvsr_q.quant.measure", "--one", name, "--checkpoint", str(args.checkpoint),
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
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
