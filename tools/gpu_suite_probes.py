#!/usr/bin/env python3
"""The steps of tools/gpu_suite.py that run inside a child process on the device; each prints one JSON line.

    python tools/gpu_suite_probes.py probe-env --device cuda
    python tools/gpu_suite_probes.py write-weights --model flashvsr-v1.1 --dir DIR --device cuda [--vae wan2.1]
    python tools/gpu_suite_probes.py kernel-bench --device cuda --shape 12,198,128,120

Kept apart from the suite so that the suite's own process never imports torchao, bitsandbytes or CUDA: a probe that
hangs or crashes is killed with its process, and the suite records the reason.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import flashvsr_q.model
from flashvsr_q.attention import available_backends, get_backend
from flashvsr_q.model import FlashVSR, get_config, save_official
from flashvsr_q.quant import SCHEMES, load_recipe
from flashvsr_q.quant.recipes import shipped_recipes

GIB = 1024**3
# distribution name -> import name of the optional packages the suite reports on
PACKAGES = {"torchao": "torchao", "bitsandbytes": "bitsandbytes", "sageattention": "sageattention",
            "triton": "triton", "comfy-kitchen": "comfy_kitchen", "spas_sage_attn": "spas_sage_attn",
            "block_sparse_attn": "block_sparse_attn", "av": "av"}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def probe(fn: Callable[[], object]) -> str:
    """'ok (N ms)' or the one-line error of a small functional check."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # any failure is a finding, not a crash
        return f"error: {one_line(exc)}"
    return f"ok ({(time.perf_counter() - t0) * 1000:.0f} ms)"


# ---------------------------------------------------------------------------------------------------------------
# probe-env: versions, packages, kernels, backends, schemes and recipes on this device
# ---------------------------------------------------------------------------------------------------------------


def driver() -> str | None:
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip().split("\n")[0] or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def kernel_probes(device: torch.device) -> dict:
    """Tiny functional checks of the kernels that the recipes and attention backends rely on."""
    def int_mm():
        a = torch.randint(-128, 127, (64, 64), dtype=torch.int8, device=device)
        torch._int_mm(a, a)

    def scaled_mm():
        a = torch.randn(64, 64, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    def nf4():
        import bitsandbytes.functional as bnbf  # optional package: its absence is what the probe reports

        packed, state = bnbf.quantize_4bit(torch.randn(64, 64, device=device, dtype=torch.bfloat16), quant_type="nf4")
        bnbf.dequantize_4bit(packed, state)

    def sage():
        from sageattention import sageattn  # optional package

        q = torch.randn(1, 2, 128, 64, device=device, dtype=torch.float16)
        sageattn(q, q.clone(), q, tensor_layout="HND", is_causal=False)

    def comfy():
        import comfy_kitchen  # optional package

        checks["comfy_kitchen backends"] = {
            name: "ok" if str(b.get("available")) == "True" else f"unavailable: {b.get('unavailable_reason')}"
            for name, b in comfy_kitchen.list_backends().items()}

    checks: dict = {
        "torch._int_mm (int8 GEMM)": probe(int_mm),
        "torch._scaled_mm (fp8 GEMM)": probe(scaled_mm),
        "bitsandbytes nf4 quantize/dequantize": probe(nf4),
        "sageattention sageattn": probe(sage) if device.type == "cuda" else "not tried (CUDA only)",
        "comfy_kitchen list_backends": probe(comfy),
    }
    return checks


def probe_env(device_name: str) -> dict:
    device = torch.device(device_name)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": device_name, "device_name": cpu_name(), "driver": None, "capability": None, "memory_gib": None,
            "cpu": cpu_name(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device_name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / GIB, 1),
                    multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(), driver=driver())
    packages = {}
    for dist, module in PACKAGES.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = None
        packages[dist] = {"version": version, "import": probe(lambda m=module: importlib.import_module(m))}
    info["packages"] = packages
    info["kernels"] = kernel_probes(device)
    info["attention"] = available_backends(device)
    info["attention_auto"] = get_backend("auto", device).name
    info["schemes"] = {name: SCHEMES[name]().unavailable(device) for name in sorted(SCHEMES)}
    recipes = {}
    for name in shipped_recipes():
        recipe = load_recipe(name)
        reasons = [r.scheme.unavailable(device) for r in recipe.rules if r.scheme.unavailable(device)]
        recipes[name] = {"unavailable": reasons[0] if reasons else None, "calibration": recipe.calibration}
    info["recipes"] = recipes
    return info


# ---------------------------------------------------------------------------------------------------------------
# write-weights: deterministic random weights of a preset, in the official file layout
# ---------------------------------------------------------------------------------------------------------------


def write_weights(model_name: str, folder: str, device_name: str, seed: int, vae: str) -> dict:
    """Tiny: the four official files of preset ``model_name``; Full: also Wan2.1_VAE.pth of Wan VAE preset ``vae``
    (the project's synthetic generator), when flashvsr_q.model has it."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device_name):
        model = FlashVSR(get_config(model_name))
    with torch.no_grad():  # as bench's random models: a zero adaLN modulation would make every block an identity
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.normal_(0, 0.1)
        model.prompt.normal_(0, 0.5)
    built = time.perf_counter() - t0
    paths = save_official(model, folder, overwrite=True)
    written = time.perf_counter()
    full = {"vae_preset": vae}
    # the Full pipeline's decoder file arrived with model.wan_vae_file; look it up so older trees still run Tiny
    writer, generator = (getattr(flashvsr_q.model, n, None) for n in ("save_wan_vae", "synthetic_wan_vae_state"))
    if writer is None or generator is None:
        full["skipped"] = "flashvsr_q.model has no save_wan_vae / synthetic_wan_vae_state (no Full pipeline yet)"
    else:
        config = flashvsr_q.model.WAN_VAE_PRESETS[vae]
        paths["vae"] = writer(generator(config, seed), Path(folder) / flashvsr_q.model.WAN_VAE_FILE, overwrite=True)
        full["write_s"] = round(time.perf_counter() - written, 1)
    return {"model": model_name, "seed": seed, "generated_on": device_name, "build_s": round(built, 1),
            "write_s": round(written - t0 - built, 1), "full": full,
            "files": {part: {"name": p.name, "bytes": p.stat().st_size} for part, p in paths.items()}}


# ---------------------------------------------------------------------------------------------------------------
# kernel-bench: the attention kernels alone, and the Triton kernel's tile sizes
# ---------------------------------------------------------------------------------------------------------------


def kernel_bench(device_name: str, shape: tuple[int, int, int, int]) -> dict:
    """sparse, flex and triton on one random chunk-0-sized problem: median ms and TFLOP/s of the selected blocks."""
    device = torch.device(device_name)
    heads, blocks, dim, keep = shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, blocks * 128, dim, generator=g).to(device, dtype) for _ in range(3))
    mask = (torch.rand(1, heads, blocks, blocks, generator=g) < keep / blocks).to(device)
    flop = 4 * int(mask.sum()) * 128 * 128 * dim  # QK^T and PV over the selected 128x128 blocks

    def timed(fn) -> float:
        if device.type == "cuda":
            import triton.testing  # ships with CUDA builds of torch

            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        fn()
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t0) * 1000)
        return statistics.median(runs)

    def row(label: str, fn) -> dict:
        try:
            ms = timed(fn)
        except Exception as exc:  # e.g. a tile that does not fit this GPU's shared memory: a finding
            return {"label": label, "status": "failed", "reason": one_line(exc), "wall_s": None}
        return {"label": label, "status": "ok", "reason": None, "wall_s": None, "ms": round(ms, 4),
                "tflops": round(flop / ms / 1e9, 2)}

    rows, found = [], available_backends(device)
    for name in ("sparse", "flex", "triton"):
        if found.get(name):
            rows.append({"label": name, "status": "skipped", "reason": found[name], "wall_s": None})
        else:
            rows.append(row(name, lambda b=get_backend(name, device): b(q, k, v, mask)))
    if found.get("triton") is None:
        from flashvsr_q.attention.triton_sparse import KernelConfig, triton_block_sparse_attention  # needs triton

        for cfg in (KernelConfig(128, 64, 8, 2), KernelConfig(128, 128, 8, 2), KernelConfig(64, 64, 4, 2),
                    KernelConfig(128, 64, 8, 3), KernelConfig(128, 32, 4, 3)):
            label = f"triton {cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"
            rows.append(row(label, lambda c=cfg: triton_block_sparse_attention(q, k, v, mask, c)))
    return {"shape": {"heads": heads, "blocks": blocks, "head_dim": dim, "kept": keep}, "dtype": str(dtype),
            "selected_blocks": int(mask.sum()), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu_suite_probes.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("probe-env")
    env.add_argument("--device", required=True)
    weights = sub.add_parser("write-weights")
    weights.add_argument("--model", required=True)
    weights.add_argument("--dir", required=True)
    weights.add_argument("--device", default="cpu")
    weights.add_argument("--seed", type=int, default=0)
    weights.add_argument("--vae", default="wan2.1", help="Wan VAE preset of the Full pipeline's decoder file")
    kernels = sub.add_parser("kernel-bench")
    kernels.add_argument("--device", required=True)
    kernels.add_argument("--shape", required=True, help="heads,blocks,head_dim,kept")
    a = parser.parse_args(argv)
    if a.command == "probe-env":
        result = probe_env(a.device)
    elif a.command == "write-weights":
        result = write_weights(a.model, a.dir, a.device, a.seed, a.vae)
    else:
        result = kernel_bench(a.device, tuple(int(x) for x in a.shape.split(",")))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
