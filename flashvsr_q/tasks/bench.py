"""``flashvsr-q bench``: speed and memory of upscaler configurations on synthetic footage.

Each configuration (model, pipeline, attention backend, tiling, dtype, torch.compile, output size, frame count) runs
``upscale_frames`` over a deterministic synthetic clip generated frame by frame (no decoding or encoding cost),
by default in a fresh subprocess so that peak RSS and device peaks belong to that configuration alone.
Reported: FPS, first-output latency, CPU seconds of the process (robust to other load on a shared machine), peak
device memory allocated/reserved (CUDA), the planner's estimate, peak RSS (after loading the model, when the first
output frame appears, i.e. after the largest chunk, and at the end: the last two differ only if host memory grows
with the number of frames), and the environment (device name, driver, torch, CUDA, CPU threads).

    flashvsr-q bench --model small --size 512x512 --frames 100,400 --tile off,256x32 -o results.json
    flashvsr-q bench --checkpoint DIR --recipe none,int8-weight-only --device cuda -o quantized.json
    flashvsr-q bench --pipeline tiny,full --size 128x128 --frames 25,49 -o full.json   # Full: the Wan VAE decoder
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvsr_q.checkpoints import attach_vae, load_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import write_json, write_text
from flashvsr_q.infer.checks import resolve_device, resolve_dtype
from flashvsr_q.infer.compile import compile_blocks
from flashvsr_q.infer.memory import parse_bytes, peak_device_memory
from flashvsr_q.infer.pipeline import upscale_frames
from flashvsr_q.infer.progress import peak_rss, reset_device_peaks
from flashvsr_q.model import (
    WAN_VAE_PRESETS,
    FlashVSR,
    WanVAEDecoder,
    get_config,
    infer_config,
    synthetic_wan_vae_state,
)
from flashvsr_q.quant import CalibrationStats, load_recipe, quantize_model, resolve_plan
from flashvsr_q.quant.stats import synthetic_calibration


@dataclass(frozen=True)
class BenchConfig:
    """One configuration. ``width``/``height`` are OUTPUT pixels; the synthetic input is ``1/scale`` of that."""

    model: str = "small"
    checkpoint: str | None = None
    attention: str = "auto"
    tile: str = "off"
    dtype: str | None = None
    compile: bool = False
    width: int = 512
    height: int = 512
    frames: int = 25
    scale: int = 4
    device: str | None = None
    vram: str | None = None
    seed: int = 0
    recipe: str | None = None  # quantization recipe applied while loading (name or YAML path)
    pipeline: str = "tiny"  # "full": the Wan2.1 VAE decoder (the checkpoint's, else random official-size weights)
    calibration: str | None = None  # statistics for recipes that need them: a file, or "synthetic" (speed only)
    profile_stages: bool = False  # time the LQ projection, DiT, decoder / VAE and the rest separately


def synthetic_frames(width: int, height: int, count: int, seed: int = 0):
    """Deterministic moving texture: uint8 [height, width, 3] frames, generated one at a time."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height + count, width + count, 3), dtype=np.uint8) // 4
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        wave = 96 + 64 * np.sin((x + 2 * i) / 7.0)[..., None] * np.cos((y - i) / 11.0)[..., None]
        yield (wave + base[i : i + height, i : i + width]).clip(0, 255).astype(np.uint8)


def environment(device: torch.device) -> dict:
    """Device name, driver, library versions and CPU threads."""
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(), "device": str(device), "device_name": None,
           "driver": None}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.split("\n")[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        env["device_name"] = env["cpu"]
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_model(cfg: BenchConfig, device: torch.device, dtype: torch.dtype):
    """The checkpoint, or a random-weight model of preset ``cfg.model`` (seeded); quantized by ``cfg.recipe``.
    ``cfg.pipeline`` full: with the checkpoint's Wan VAE, or a random one of the official size (the real cost)."""
    if cfg.checkpoint:
        recipe = load_recipe(cfg.recipe) if cfg.recipe else None
        calibration = None
        if cfg.calibration and recipe is not None:
            with torch.device("meta"):
                skeleton = FlashVSR(infer_config(cfg.checkpoint)) if cfg.calibration == "synthetic" else None
            calibration = (synthetic_calibration(resolve_plan(recipe, skeleton, device))
                           if skeleton is not None else cfg.calibration)
        return load_checkpoint(cfg.checkpoint, dtype=dtype, device=device, recipe=recipe, calibration=calibration,
                               pipeline=cfg.pipeline).eval()
    try:
        config = get_config(cfg.model)
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = FlashVSR(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.normal_(0, 0.1)  # zero adaLN would make every block an identity
        model.prompt.normal_(0, 0.5)
    model = model.to(dtype).eval()
    if cfg.recipe:
        plan = resolve_plan(load_recipe(cfg.recipe), model, device)
        calibration = (synthetic_calibration(plan) if cfg.calibration == "synthetic"
                       else CalibrationStats.load(cfg.calibration) if cfg.calibration else None)
        quantize_model(model, plan, calibration)
    if cfg.pipeline == "full":
        vae = WanVAEDecoder(WAN_VAE_PRESETS["wan2.1"])
        vae.load_state_dict(synthetic_wan_vae_state(vae.config, cfg.seed, decoder_only=True))
        attach_vae(model, vae.to(device, dtype).eval())
    elif cfg.pipeline != "tiny":
        raise FlashVSRError(f"--pipeline takes tiny or full, got {cfg.pipeline!r}")
    return model


class StageTimer:
    """Wall time spent in each stage of the model (LQ projection, DiT, TCDecoder or Wan VAE), measured around each
    call with a device sync on either side; what is left of the run is tiling, blending, colour fix and frame I/O.
    The syncs cost a little overlap on a GPU: use it to see where time goes, and plain runs for FPS."""

    def __init__(self, model: FlashVSR, device: torch.device):
        self.device, self.seconds = device, {"lq_proj": 0.0, "dit": 0.0, "decoder": 0.0}
        for name in ("lq_proj", "dit", "decoder"):
            module = getattr(model, name)
            module.register_forward_pre_hook(lambda *_: self._start())
            module.register_forward_hook(lambda *_, name=name: self._stop(name))
        if model.vae is not None:  # the VAE is called through .decode, not forward
            decode = model.vae.decode
            self.seconds["vae"] = 0.0

            def timed_decode(*args, **kwargs):
                self._start()
                try:
                    return decode(*args, **kwargs)
                finally:
                    self._stop("vae")

            model.vae.decode = timed_decode
        self._t = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self) -> None:
        self._sync()
        self._t = time.perf_counter()

    def _stop(self, name: str) -> None:
        self._sync()
        self.seconds[name] += time.perf_counter() - self._t

    def stages(self, total: float) -> dict[str, float]:
        """Seconds per stage, and ``other`` (tiling, blending, colour fix, frame I/O) so that they sum to ``total``."""
        out = {k: round(v, 3) for k, v in self.seconds.items() if k != "decoder" or v > 0}
        out["other"] = round(total - sum(self.seconds.values()), 3)
        return out


def run_config(cfg: BenchConfig) -> dict:
    """Run one configuration in this process and measure it."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.width % cfg.scale or cfg.height % cfg.scale:
        raise FlashVSRError(f"output size {cfg.width}x{cfg.height} is not a multiple of the scale {cfg.scale}")
    t_build = time.perf_counter()
    model = build_model(cfg, device, dtype)
    backend = model.set_attention(cfg.attention, device)
    if cfg.compile:
        compile_blocks(model)
    build_s = time.perf_counter() - t_build
    timer = StageTimer(model, device) if cfg.profile_stages else None
    plans = []
    rss_model = peak_rss()
    reset_device_peaks(device)
    frames = synthetic_frames(cfg.width // cfg.scale, cfg.height // cfg.scale, cfg.frames, cfg.seed)
    t0, cpu0 = time.perf_counter(), time.process_time()
    first, count, rss_first = None, 0, None
    for _ in upscale_frames(model, frames, scale=cfg.scale, tile=cfg.tile,
                            vram=parse_bytes(cfg.vram) if cfg.vram else None, num_frames=cfg.frames,
                            on_plan=plans.append):
        count += 1
        if first is None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first = time.perf_counter() - t0
            rss_first = peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peaks = peak_device_memory(device) or {}
    plan = plans[-1]
    return {
        "config": dataclasses.asdict(cfg), "pipeline": model.pipeline, "backend": backend.name,
        "dtype": str(dtype).removeprefix("torch."),
        "frames_out": count, "seconds": round(total, 3), "fps": round(count / total, 4), "cpu_s": round(cpu, 3),
        "first_output_s": round(first, 3), "build_s": round(build_s, 3), "tiling": plan.plan.describe(),
        "tiles": len(plan.plan.tiles), "state_offload": plan.offload, "estimated_peak": plan.estimate.peak,
        "peak_allocated": peaks.get("allocated"), "peak_reserved": peaks.get("reserved"), "peak_rss": peak_rss(),
        "peak_rss_model": rss_model, "peak_rss_first_output": rss_first,
        **({"stages": timer.stages(total)} if timer is not None else {}),
        "environment": environment(device),
    }


def run_isolated(cfg: BenchConfig, timeout: float | None = None) -> dict:
    """Run ``cfg`` in a fresh Python process (its peak RSS is its own)."""
    proc = subprocess.run([sys.executable, "-m", "flashvsr_q.tasks.bench", json.dumps(dataclasses.asdict(cfg))],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlashVSRError(f"benchmark of {cfg} failed: {reason}")
    return json.loads(lines[-1])


def _gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 1024**3:.2f}"


def _rss_growth(r: dict) -> str:
    if r.get("peak_rss_first_output") is None:
        return "–"
    return f"{(r['peak_rss'] - r['peak_rss_first_output']) / 1024**2:.1f}"


def to_markdown(results: list[dict]) -> str:
    """A Markdown table of results plus the environment of the first one."""
    head = ("| model | attention | dtype | compile | output | frames | tiling | FPS | CPU s | first output (s) | "
            "peak alloc (GiB) | peak reserved (GiB) | estimate (GiB) | peak RSS (GiB) | RSS growth after first output "
            "(MiB) |")
    rows = [head, "|" + "---|" * 15]
    for r in results:
        c = r["config"]
        model = (c["checkpoint"] or c["model"]) + (f" + {c['recipe']}" if c.get("recipe") else "")
        model += f" ({c['pipeline']})" if c.get("pipeline", "tiny") != "tiny" else ""
        rows.append(f"| {model} | {r['backend']} | {r['dtype']} | "
                    f"{'on' if c['compile'] else 'off'} | {c['width']}x{c['height']} | {r['frames_out']} | "
                    f"{r['tiling']} | {r['fps']:.3f} | {r['cpu_s']:.1f} | {r['first_output_s']:.2f} | "
                    f"{_gib(r['peak_allocated'])} | {_gib(r['peak_reserved'])} | {_gib(r['estimated_peak'])} | "
                    f"{_gib(r['peak_rss'])} | {_rss_growth(r)} |")
    if results:
        e = results[0]["environment"]
        rows.append(f"\n{e['device_name']} ({e['device']}), driver {e['driver'] or '–'}, torch {e['torch']}, CUDA "
                    f"{e['cuda'] or '–'}, {e['cpu_threads']} CPU threads, Python {e['python']}")
    return "\n".join(rows)


@dataclass
class BenchOptions:
    """What ``flashvsr-q bench`` takes: comma-separated axes (every combination runs) and where results go."""

    checkpoint: str | None = None
    model: str = "small"
    pipeline: str = "tiny"
    recipe: str | None = None
    attention: str = "auto"
    tile: str = "off"
    dtype: str | None = None
    compile: str = "off"
    size: str = "512x512"
    frames: str = "25"
    scale: int = 4
    device: str | None = None
    vram: str | None = None
    calibration: str | None = None
    profile_stages: bool = False
    in_process: bool = False
    output: str | None = None


def _split(text: str | None) -> list:
    return [None] if text is None else [t.strip() for t in str(text).split(",") if t.strip()]


def configs_from_options(options: BenchOptions) -> list[BenchConfig]:
    """Every combination of the options' comma-separated axes, as configurations."""
    o, configs = options, []
    recipes = [None if r in (None, "none") else r for r in _split(o.recipe)]
    for pipeline, recipe, attention, tile, dtype, comp, size, frames in itertools.product(
            _split(o.pipeline), recipes, _split(o.attention), _split(o.tile), _split(o.dtype), _split(o.compile),
            _split(o.size), _split(o.frames)):
        try:
            width, height = (int(v) for v in size.lower().split("x"))
            count = int(frames)
        except ValueError:
            raise FlashVSRError(f"--size takes WxH and --frames integers, got {size!r} / {frames!r}") from None
        if comp not in ("on", "off"):
            raise FlashVSRError(f"--compile takes on/off, got {comp!r}")
        if pipeline not in ("tiny", "full"):
            raise FlashVSRError(f"--pipeline takes tiny and/or full, got {pipeline!r}")
        configs.append(BenchConfig(o.model, o.checkpoint, attention, tile, dtype, comp == "on", width, height,
                                   count, o.scale, o.device, o.vram, recipe=recipe, pipeline=pipeline,
                                   calibration=o.calibration, profile_stages=o.profile_stages))
    return configs


def bench(options: BenchOptions, log=lambda message: print(message, file=sys.stderr, flush=True)) -> list[dict]:
    """Run every configuration (each in a fresh process unless ``in_process``); write JSON + Markdown to
    ``options.output`` if given; returns the results."""
    results = []
    for cfg in configs_from_options(options):
        log(f"bench: {cfg}")
        results.append(run_config(cfg) if options.in_process else run_isolated(cfg))
    if options.output:
        out = Path(options.output)
        write_json(out, results)
        write_text(out.with_suffix(".md"), to_markdown(results) + "\n")
    return results


if __name__ == "__main__":
    result = run_config(BenchConfig(**json.loads(sys.argv[1])))
    print(json.dumps(result))
