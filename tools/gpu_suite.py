#!/usr/bin/env python3
"""Measure what flashvsr-q promises on one CUDA GPU in one command; ``--dry-run`` rehearses every step on the CPU.

    python tools/gpu_suite.py --out OUT                        # on the GPU machine (docs/gpu-suite.md)
    python tools/gpu_suite.py --dry-run --out /tmp/gpu-suite   # anywhere: tiny sizes on the CPU, about a minute
    python tools/gpu_suite.py splice OUT/results.md docs/benchmarks.md

Sections run in order of value inside one time budget (``--budget``, seconds). Each has its own allowance and every
step its own timeout; a step whose expected time no longer fits is skipped with the reason. Every measurement is a
``flashvsr-q bench`` call in a fresh process (peaks are that configuration's alone), killed with its process group
when it overruns. After every step ``OUT/results.json`` and ``OUT/results.md`` are rewritten atomically, so a run cut
short still leaves what it measured. Steps that need a bench option that is not there yet (``--profile-stages``,
``--pipeline``, ``--calibration``) are detected from ``flashvsr-q bench --help`` and skipped with that reason until
the option lands. The environment probe, the weights and the kernel timings run in child processes too
(tools/gpu_suite_probes.py), so the suite's own process never touches the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

try:
    from flashvsr_q.files import write_json, write_text
    from flashvsr_q.model.streaming import FIRST_CHUNK_OUTPUT
except ImportError as exc:  # tools/ is not installed: the package must come from an install or PYTHONPATH
    raise SystemExit(f"error: cannot import flashvsr_q ({exc}); install it, or export PYTHONPATH=<repository root>")

SCHEMA = "flashvsr-q-gpu-suite/1"
REPO = Path(__file__).resolve().parents[1]
PROBES = Path(__file__).resolve().with_name("gpu_suite_probes.py")
GIB = 1024**3
# `flashvsr-q bench ...` exactly as the console script runs it (flashvsr_q.cli:main), whatever cli's module layout
CLI = "import sys; from flashvsr_q.cli import main; sys.argv[0] = 'flashvsr-q'; sys.exit(main())"
# bench options the suite waits for: option -> what it turns on
WAITING_FOR = {
    "--profile-stages": "per-stage time profile (LQ projection, DiT, decoder, colour fix, I/O)",
    "--pipeline": "the Full pipeline (Wan2.1 VAE decoder): bench --pipeline full",
    "--calibration": "recipes that need calibration statistics (SmoothQuant, calibrated ConvRot)",
}
# attention backends: preference order after the one `auto` picks; `dense` is the fp32 token-level reference
BACKEND_ORDER = ("triton", "block_sparse", "flex", "sage", "sparge", "sparse", "full")
REFERENCE_BACKENDS = {"dense": "exact fp32 token-level reference ([H, Q, K] scores): not a speed path"}
# recipes by value; shipped recipes not named here (new ones) run after w8a8-fp8
RECIPE_ORDER = ("int8-weight-only", "w8a8-int8", "w8a8-int8-convrot", "w8a8-fp8", "fp8-storage", "nf4",
                "int4-weight-only", "w4a8")
GOAL_FPS, GOAL_RATIO, GOAL_PLANNER_ERROR = 57.0, 1.2, 0.15


@dataclass(frozen=True)
class Settings:
    """Sizes of one run. Sizes are OUTPUT pixels WxH; the paper's 768x1408 (HxW) is 1408x768 here."""

    device: str
    model: str  # preset of the random official-layout weights
    vae: str  # Wan VAE preset of the Full pipeline's Wan2.1_VAE.pth
    paper_size: str
    paper_frames: int
    planner: tuple[tuple[str, str, str], ...]  # (label, --vram, output size)
    planner_frames: int
    profile_size: str
    profile_frames: int
    kernel_shape: tuple[int, int, int, int]  # heads, 128-token blocks, head dim, key blocks kept per query block
    estimate_s: dict = field(default_factory=dict)  # expected seconds of one step, per section, until measured
    timeout_s: dict = field(default_factory=dict)  # hard limit of one step, per section


REAL = Settings(
    "cuda", "flashvsr-v1.1", "wan2.1", "1408x768", 101,
    (("1080p", "8GB", "1920x1080"), ("1440p", "12GB", "2560x1440"), ("4K", "16GB", "3840x2160")), 41,
    "1920x1080", 41, (12, 198, 128, 120),
    estimate_s={"environment": 20, "weights": 60, "paper": 45, "recipes": 50, "planner": 50, "profile": 45,
                "cuda_tests": 60, "kernels": 45, "compile": 150, "full_pipeline": 60},
    timeout_s={"environment": 120, "weights": 240, "paper": 150, "recipes": 150, "planner": 180, "profile": 150,
               "cuda_tests": 180, "kernels": 150, "compile": 300, "full_pipeline": 200},
)
DRY = Settings(
    "cpu", "test", "small", "128x128", 29,
    (("1080p", "8GB", "192x108"), ("1440p", "12GB", "256x144"), ("4K", "16GB", "384x216")), 5,
    "192x108", 5, (2, 4, 64, 2),
    estimate_s={name: 5 for name in REAL.estimate_s},
    timeout_s={name: 120 for name in REAL.timeout_s},
)


# ---------------------------------------------------------------------------------------------------------------
# the runner: budget, child processes, results written after every step
# ---------------------------------------------------------------------------------------------------------------


class Stopped(Exception):
    """SIGTERM/SIGINT: write what was measured and stop."""


@dataclass
class Finished:
    rc: int | None  # None: killed at its timeout
    stdout: str
    stderr: str
    wall_s: float


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def json_line(text: str) -> dict | None:
    """The last stdout line that is a JSON object (child commands print exactly one)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


class Suite:
    """One run: options, the JSON document, the clock, and the child process in flight."""

    def __init__(self, opts: argparse.Namespace, settings: Settings):
        self.opts, self.settings = opts, settings
        self.out, self.work = Path(opts.out), Path(opts.work)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.work / "bench").mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + opts.budget
        self.section_deadline = self.deadline
        self.bench_options: set[str] = set()
        self.env: dict = {}  # the environment section's findings
        self.weights: Path | None = None
        self.child: subprocess.Popen | None = None
        self.doc = {
            "schema": SCHEMA, "dry_run": opts.dry_run, "started": now(), "updated": None, "finished": False,
            "budget_s": opts.budget, "elapsed_s": 0.0, "command": sys.argv, "settings": asdict(settings),
            "device": None, "bench_options": [], "waiting_for": {}, "weights": None, "bench_environment": None,
            "sections": {s.name: {"status": "pending", "reason": "not reached", "seconds": 0.0, "what": s.what,
                                  "items": [], "info": None} for s in SECTIONS},
            "goals": [],
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section_left(self) -> float:
        return min(self.section_deadline, self.deadline) - time.monotonic()

    def save(self) -> None:
        self.doc["updated"] = now()
        self.doc["elapsed_s"] = round(self.opts.budget - self.left(), 1)
        self.doc["goals"] = goals(self.doc)
        write_json(self.out / "results.json", self.doc)
        write_text(self.out / "results.md", markdown(self.doc) + "\n")

    def run(self, argv: list[str], timeout: float) -> Finished:
        """Run a child in its own process group; at ``timeout`` kill the whole group (compile workers too)."""
        # PYTHONSAFEPATH: children import flashvsr_q from where this process does (the installed package, or
        # PYTHONPATH), never from the working directory by accident
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}
        t0 = time.monotonic()
        self.child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
        try:
            out, err = self.child.communicate(timeout=max(timeout, 1))
            rc = self.child.returncode
        except subprocess.TimeoutExpired:
            self.kill_child()
            out, err = self.child.communicate()
            rc = None
        except BaseException:  # Stopped (a signal) mid-step: take the child's process group down with us
            self.kill_child()
            raise
        finally:
            self.child = None
        return Finished(rc, out, err, round(time.monotonic() - t0, 1))

    def kill_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def tool(self, command: str, *args: str, timeout: float) -> Finished:
        """A step of tools/gpu_suite_probes.py (environment, weights, kernels) in a child process."""
        return self.run([self.opts.python, str(PROBES), command, *args], timeout)

    def estimate(self, section: str) -> float:
        """Seconds one more step of ``section`` should take: the median of its finished steps, else the default."""
        walls = [r["wall_s"] for r in self.doc["sections"][section]["items"] if r["status"] == "ok"]
        return statistics.median(walls) if walls else self.settings.estimate_s[section]

    def budget_reason(self, section: str, estimate: float | None = None) -> str | None:
        estimate = self.estimate(section) if estimate is None else estimate
        left = self.section_left()
        if estimate > left:
            return f"budget: ~{estimate:.0f} s needed, {max(left, 0):.0f} s left for this section"
        return None

    def bench(self, section: str, label: str, args: list[str], *, estimate: float | None = None) -> dict:
        """One ``flashvsr-q bench`` configuration as one row of ``section``; never raises on a failed run."""
        row = {"label": label, "status": "skipped", "reason": None, "wall_s": None, "args": args, "result": None}
        self.doc["sections"][section]["items"].append(row)
        unknown = [a for a in args if a.startswith("--") and a not in self.bench_options]
        if unknown:
            row.update(status="failed", reason=f"bench has no option {', '.join(unknown)} (bench changed, or a typo)")
        elif self.opts.dry_run and self.settings.device == "cpu" and section in CUDA_ONLY:
            row["reason"] = "no CUDA (dry run: planned only)"
        elif reason := self.budget_reason(section, estimate):
            row["reason"] = reason
        else:
            output = self.work / "bench" / f"{section}-{slug(label)}.json"
            output.unlink(missing_ok=True)
            timeout = min(self.settings.timeout_s[section], self.section_left())
            row.update(status="running", reason="in flight")
            done = self.run([self.opts.python, "-c", CLI, "bench", *args, "-o", str(output)], timeout)
            row["wall_s"] = done.wall_s
            if done.rc is None:
                row.update(status="timeout", reason=f"killed after {done.wall_s:.0f} s (step limit {timeout:.0f} s)",
                           stderr_tail=done.stderr[-2000:])
            elif done.rc != 0 or not output.exists():
                row.update(status="failed", reason=last_line(done.stderr) or f"exit code {done.rc}",
                           stderr_tail=done.stderr[-2000:])  # a GPU run is rare: keep enough to debug it here
            else:
                result = json.loads(output.read_text())[0]
                self.doc["bench_environment"] = self.doc["bench_environment"] or result.pop("environment", None)
                result.pop("environment", None)
                row.update(status="ok", result=result, **derived(result))
        print(progress(self, section, row), flush=True)
        self.save()
        return row

    def common_args(self) -> list[str]:
        """Model source, device and dtype shared by every bench step."""
        source = ["--checkpoint", str(self.weights)] if self.weights else ["--model", self.settings.model]
        return [*source, "--device", self.settings.device, "--dtype", "bf16", "--in-process"]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "x"


def derived(result: dict) -> dict:
    """FPS after the first chunk: frames of later chunks over the time after the first output, which leaves out
    chunk 0's one-time costs (kernel autotuning, FlexAttention and torch.compile compilation)."""
    later = result["frames_out"] - FIRST_CHUNK_OUTPUT
    span = result["seconds"] - result["first_output_s"]
    return {"fps_steady": round(later / span, 3) if later > 0 and span > 0 else None}


def progress(suite: Suite, section: str, row: dict) -> str:
    head = f"[{suite.opts.budget - suite.left():6.0f} s] {section}/{row['label']}: {row['status']}"
    r = row.get("result")
    if not r:
        return f"{head} ({row['reason']})"
    peak = "" if r.get("peak_allocated") is None else f", peak {r['peak_allocated'] / GIB:.2f} GiB"
    return f"{head} {r['fps']:.2f} FPS (after chunk 0: {row.get('fps_steady')}){peak}, {row['wall_s']:.0f} s"


# ---------------------------------------------------------------------------------------------------------------
# sections, in order of value
# ---------------------------------------------------------------------------------------------------------------


def section_environment(s: Suite, rec: dict) -> None:
    """Python, torch, CUDA, the device; which optional packages import and which kernels run here."""
    done = s.tool("probe-env", "--device", s.settings.device, timeout=s.settings.timeout_s["environment"])
    info = json_line(done.stdout) if done.rc == 0 else None
    if info is None:
        rec.update(status="failed", reason=last_line(done.stderr) or f"exit code {done.rc}")
        return
    s.env = info
    s.doc["device"] = {k: info.get(k) for k in ("device_name", "capability", "memory_gib", "driver", "torch", "cuda",
                                                "python")}
    rec["info"] = info


def section_weights(s: Suite, rec: dict) -> None:
    """Full-size deterministic random weights in the official layout: Tiny (flashvsr_q.model.save_official) and the
    Full pipeline's Wan2.1_VAE.pth (flashvsr_q.model.save_wan_vae), in one folder as the release ships them."""
    folder = s.work / "weights" / s.settings.model
    done = s.tool("write-weights", "--model", s.settings.model, "--vae", s.settings.vae, "--dir", str(folder),
                  "--device", s.settings.device, timeout=min(s.settings.timeout_s["weights"], s.section_left()))
    info = json_line(done.stdout) if done.rc == 0 else None
    if info is None:
        why = "timed out" if done.rc is None else (last_line(done.stderr) or f"exit code {done.rc}")
        rec.update(status="failed", reason=f"{why}; bench steps use --model {s.settings.model} (random, in-process)")
        return
    s.weights = folder
    s.doc["weights"] = {"source": "official layout, save_official", "dir": str(folder), **info}
    full = info["full"]
    rec["items"] += [{"label": f"Tiny {s.settings.model}", "status": "ok", "reason": None, "wall_s": done.wall_s,
                      "result": {k: v for k, v in info["files"].items() if k != "vae"}},
                     {"label": f"Full {s.settings.vae}", "status": "skipped" if "skipped" in full else "ok",
                      "reason": full.get("skipped"), "wall_s": full.get("write_s"),
                      "result": info["files"].get("vae")}]


def backend_order(s: Suite) -> list[tuple[str, str | None]]:
    """(backend, reason it cannot run or None), the one `auto` picks first; just `auto` without the probe."""
    found = s.env.get("attention")
    if not found:
        return [("auto", None)]
    auto = s.env.get("attention_auto")
    names = [auto] if auto else []
    names += [n for n in BACKEND_ORDER if n in found and n not in names]
    names += [n for n in found if n not in names and n != "auto"]
    return [(n, REFERENCE_BACKENDS.get(n) or found.get(n)) for n in names]


def section_paper(s: Suite, rec: dict) -> None:
    """The paper's setting (Tiny, 768x1408 output, 101 frames), bf16, every attention backend that runs here."""
    for name, reason in backend_order(s):
        if reason:
            rec["items"].append({"label": name, "status": "skipped", "reason": reason, "wall_s": None})
            continue
        s.bench("paper", name, [*s.common_args(), "--attention", name, "--compile", "off",
                                "--size", s.settings.paper_size, "--frames", str(s.settings.paper_frames)])


def baseline(s: Suite) -> dict | None:
    """The bf16 row the ratios divide by: the paper row of the backend `auto` picks (the first backend tried)."""
    rows = [r for r in s.doc["sections"]["paper"]["items"] if r.get("result")]
    return rows[0] if rows else None


def section_recipes(s: Suite, rec: dict) -> None:
    """Every shipped quantization recipe this device supports, as FPS / peak ratios to bf16 in the same run."""
    base = baseline(s)
    if base is None:
        name = s.env.get("attention_auto") or "auto"
        base = s.bench("recipes", f"bf16 ({name})", [*s.common_args(), "--attention", name, "--compile", "off",
                                                     "--size", s.settings.paper_size,
                                                     "--frames", str(s.settings.paper_frames)])
        if not base.get("result"):
            rec.update(status="failed", reason=f"no bf16 baseline: {base['reason']}")
            return
    attention = base["result"]["backend"]
    recipes = s.env.get("recipes") or {}
    if not recipes:
        rec.update(status="skipped", reason="the environment probe listed no recipes")
        return
    known = [n for n in RECIPE_ORDER if n in recipes]
    new = [n for n in recipes if n not in RECIPE_ORDER]
    cut = known.index("w8a8-fp8") + 1 if "w8a8-fp8" in known else len(known)
    for name in known[:cut] + new + known[cut:]:
        info = recipes[name]
        reason = info.get("unavailable")
        if not reason and info.get("calibration") == "required" and "--calibration" not in s.bench_options:
            reason = "needs calibration statistics: waits for bench --calibration"
        if reason:
            rec["items"].append({"label": name, "status": "skipped", "reason": reason, "wall_s": None})
            continue
        estimate = s.estimate("recipes") if any(r.get("result") for r in rec["items"]) else base["wall_s"] * 1.3
        calibration = ["--calibration", "synthetic"] if info.get("calibration") == "required" else []
        row = s.bench("recipes", name, [*s.common_args(), "--recipe", name, *calibration, "--attention", attention,
                                        "--compile", "off", "--size", s.settings.paper_size,
                                        "--frames", str(s.settings.paper_frames)], estimate=estimate)
        if row.get("result"):
            row.update(ratios(row, base))
            s.save()


def ratios(row: dict, base: dict) -> dict:
    r, b = row["result"], base["result"]
    div = lambda x, y: round(x / y, 3) if x is not None and y else None  # noqa: E731
    return {"vs_bf16": {"fps": div(r["fps"], b["fps"]), "fps_steady": div(row.get("fps_steady"),
                                                                         base.get("fps_steady")),
                        "peak_allocated": div(r.get("peak_allocated"), b.get("peak_allocated"))}}


def section_planner(s: Suite, rec: dict) -> None:
    """--tile auto at 8 GB (1080p), 12 GB (1440p), 16 GB (4K): estimate against measured peak, and whether it fit;
    then 1080p untiled, for the tiling's time overhead."""
    base = baseline(s)
    attention = base["result"]["backend"] if base else (s.env.get("attention_auto") or "auto")
    common = [*s.common_args(), "--attention", attention, "--compile", "off",
              "--frames", str(s.settings.planner_frames)]
    for label, vram, size in s.settings.planner:
        row = s.bench("planner", f"{label} --vram {vram}", [*common, "--tile", "auto", "--vram", vram, "--size", size])
        if row.get("result"):
            row.update(planner_check(row["result"], vram))
            s.save()
    label, vram, size = s.settings.planner[0]
    untiled = s.bench("planner", f"{label} untiled", [*common, "--tile", "off", "--size", size])
    tiled = rec["items"][0]
    if untiled.get("result") and tiled.get("result"):
        untiled["tiled_over_untiled_time"] = round(tiled["result"]["seconds"] / untiled["result"]["seconds"], 3)
        s.save()


def planner_check(result: dict, vram: str) -> dict:
    budget = int(float(vram.removesuffix("GB")) * GIB)  # bench reads GB as GiB (infer.memory.parse_bytes)
    estimate, alloc, reserved = result["estimated_peak"], result.get("peak_allocated"), result.get("peak_reserved")
    return {"budget_bytes": budget,
            "error": None if alloc is None else round((alloc - estimate) / estimate, 4),
            "fits_allocated": None if alloc is None else alloc <= budget,
            "fits_reserved": None if reserved is None else reserved <= budget}


def section_profile(s: Suite, rec: dict) -> None:
    """Where the time goes at 1080p (LQ projection, DiT, decoder, colour fix, I/O), bf16 and the fastest recipe."""
    base = baseline(s)
    attention = base["result"]["backend"] if base else (s.env.get("attention_auto") or "auto")
    common = [*s.common_args(), "--attention", attention, "--compile", "off", "--profile-stages",
              "--size", s.settings.profile_size, "--frames", str(s.settings.profile_frames)]
    s.bench("profile", "bf16", common)
    best = fastest_recipe(s.doc)
    if best:  # with the statistics its recipes-section run had (a calibrated recipe may be the fastest)
        calibration = ["--calibration", "synthetic"] if "--calibration" in best.get("args", []) else []
        s.bench("profile", best["label"], [*common, "--recipe", best["label"], *calibration])


def fastest_recipe(doc: dict) -> dict | None:
    rows = [r for r in doc["sections"]["recipes"]["items"] if r.get("vs_bf16", {}).get("fps")]
    return max(rows, key=lambda r: r["vs_bf16"]["fps_steady"] or r["vs_bf16"]["fps"], default=None)


def section_cuda_tests(s: Suite, rec: dict) -> None:
    """The CUDA tests: every test file that uses requires_cuda or the cuda mark, `-k cuda` (the cuda mark, or
    'cuda' in the test's name: a few CUDA tests carry only the skipif). The dry run collects them only."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if re.search(r"requires_cuda|mark\.cuda", p.read_text(errors="replace")))
    argv = [s.opts.python, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-k", "cuda", *files]
    if s.opts.dry_run:
        argv.append("--collect-only")
    elif reason := s.budget_reason("cuda_tests"):
        rec.update(status="skipped", reason=reason)
        return
    done = s.run(argv, min(s.settings.timeout_s["cuda_tests"], s.section_left()))
    log = done.stdout + done.stderr
    write_text(s.out / "cuda-tests.log", " ".join(argv) + "\n\n" + log)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|"
                                               r"tests? collected)", log)}
    rec["info"] = {"files": files, "command": argv[1:], "exit_code": done.rc, "wall_s": done.wall_s,
                   "counts": counts, "summary": last_line(done.stdout),
                   "failures": [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))][:30]}
    if done.rc is None:
        rec.update(status="failed", reason=f"killed after {done.wall_s:.0f} s")
    elif done.rc not in (0, 5):
        rec.update(status="failed", reason=f"pytest exit code {done.rc}: {last_line(done.stdout)}")


def section_kernels(s: Suite, rec: dict) -> None:
    """The attention kernels alone at the paper's chunk-0 shape: sparse, flex, triton and the Triton tile sizes."""
    if reason := s.budget_reason("kernels"):
        rec.update(status="skipped", reason=reason)
        return
    heads, blocks, dim, keep = s.settings.kernel_shape
    done = s.tool("kernel-bench", "--device", s.settings.device, "--shape", f"{heads},{blocks},{dim},{keep}",
                  timeout=min(s.settings.timeout_s["kernels"], s.section_left()))
    info = json_line(done.stdout) if done.rc == 0 else None
    if info is None:
        rec.update(status="failed", reason="timed out" if done.rc is None else last_line(done.stderr))
        return
    rec["items"] += info["rows"]
    rec["info"] = {k: v for k, v in info.items() if k != "rows"}


def section_compile(s: Suite, rec: dict) -> None:
    """torch.compile (regional) for the backends that ran, fastest first."""
    rows = sorted((r for r in s.doc["sections"]["paper"]["items"] if r.get("result")),
                  key=lambda r: -(r.get("fps_steady") or r["result"]["fps"]))
    names = [r["label"] for r in rows] or [s.env.get("attention_auto") or "auto"]
    for name in names:
        estimate = max(s.estimate("compile"), next((r["wall_s"] for r in rows if r["label"] == name), 0) + 60)
        s.bench("compile", name, [*s.common_args(), "--attention", name, "--compile", "on",
                                  "--size", s.settings.paper_size, "--frames", str(s.settings.paper_frames)],
                estimate=estimate)


def section_full_pipeline(s: Suite, rec: dict) -> None:
    """The Full pipeline (Wan2.1 VAE decoder) at the paper's setting, bf16."""
    base = baseline(s)
    attention = base["result"]["backend"] if base else (s.env.get("attention_auto") or "auto")
    s.bench("full_pipeline", "Full bf16", [*s.common_args(), "--pipeline", "full", "--attention", attention,
                                           "--compile", "off", "--size", s.settings.paper_size,
                                           "--frames", str(s.settings.paper_frames)])


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Suite, dict], None]
    allowance_s: float  # seconds it may use when later sections need theirs; more when they are skipped
    what: str
    needs: Callable[[Suite], str | None] = lambda s: None  # a reason to skip it before it starts


def needs_option(option: str) -> Callable[[Suite], str | None]:
    return lambda s: None if option in s.bench_options else f"needs bench {option} ({WAITING_FOR[option]})"


CUDA_ONLY = {"compile"}  # too slow on the CPU to rehearse; the dry run still builds and checks their arguments
SECTIONS = [
    Section("environment", section_environment, 60, "packages, versions, kernels available on this device"),
    Section("weights", section_weights, 90, "random official-layout weights, v1.1 Tiny and the Full VAE file"),
    Section("paper", section_paper, 130, "Tiny, 768x1408 output, 101 frames, bf16, each attention backend"),
    Section("recipes", section_recipes, 140, "quantization recipes at the paper's setting, ratios to bf16"),
    Section("planner", section_planner, 100, "--tile auto at 8/12/16 GB: estimate vs measured peak"),
    Section("profile", section_profile, 60, "per-stage time at 1080p", needs_option("--profile-stages")),
    Section("cuda_tests", section_cuda_tests, 90, "tests that need CUDA (pytest -k cuda)"),
    Section("kernels", section_kernels, 45, "attention kernels alone at the chunk-0 shape, Triton tile sizes"),
    Section("compile", section_compile, 150, "torch.compile on, the paper's setting"),
    Section("full_pipeline", section_full_pipeline, 60, "Full pipeline (Wan2.1 VAE) at the paper's setting",
            needs_option("--pipeline")),
]


def bench_options(s: Suite) -> set[str]:
    done = s.run([s.opts.python, "-c", CLI, "bench", "--help"], 120)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout)) if done.rc == 0 else set()


def run_suite(s: Suite) -> int:
    selected = set(s.opts.sections.split(",")) if s.opts.sections else {x.name for x in SECTIONS}
    unknown = selected - {x.name for x in SECTIONS}
    if unknown:
        raise SystemExit(f"error: unknown section(s) {sorted(unknown)}; choose from {[x.name for x in SECTIONS]}")
    s.bench_options = bench_options(s)
    s.doc["bench_options"] = sorted(s.bench_options)
    s.doc["waiting_for"] = {k: v for k, v in WAITING_FOR.items() if k not in s.bench_options}
    if not s.bench_options:
        print("warning: `flashvsr-q bench --help` failed; every bench step will fail", file=sys.stderr)
    if s.opts.weights:
        s.weights = Path(s.opts.weights)
    for i, section in enumerate(SECTIONS):
        rec = s.doc["sections"][section.name]
        if section.name not in selected:
            rec.update(status="skipped", reason="not selected (--sections)")
            continue
        if section.name == "weights" and s.weights:
            rec.update(status="skipped", reason=f"--weights {s.weights} given")
            continue
        if reason := section.needs(s):
            rec.update(status="skipped", reason=reason)
            s.save()
            continue
        later = sum(x.allowance_s for x in SECTIONS[i + 1:] if x.name in selected and x.needs(s) is None)
        allowance = min(s.left(), max(section.allowance_s, s.left() - later))
        if allowance < 1:
            rec.update(status="skipped", reason="budget: no time left")
            s.save()
            continue
        s.section_deadline = time.monotonic() + allowance
        print(f"[{s.opts.budget - s.left():6.0f} s] == {section.name} (up to {allowance:.0f} s)", flush=True)
        t0 = time.monotonic()
        rec.update(status="running", reason=None)
        try:
            section.run(s, rec)
        except Stopped:
            rec.update(status="partial", reason="suite stopped (signal)")
            raise
        except Exception as exc:  # a bug in one section must not lose the others' results
            rec.update(status="failed", reason=f"suite error: {type(exc).__name__}: {exc}")
        rec["seconds"] = round(time.monotonic() - t0, 1)
        if rec["status"] == "running":
            rec.update(section_status(rec))
        s.save()
    s.doc["finished"] = True
    s.save()
    return 0


def section_status(rec: dict) -> dict:
    """ok / partial / skipped / failed from the rows, with a reason when nothing was measured."""
    rows = rec["items"]
    ok = [r for r in rows if r["status"] == "ok"]
    if rec.get("info") is not None and not rows:
        return {"status": "ok"}
    if not rows:
        return {"status": "skipped", "reason": "nothing to run"}
    if len(ok) == len(rows):
        return {"status": "ok"}
    if ok:
        return {"status": "partial", "reason": f"{len(rows) - len(ok)} of {len(rows)} steps not measured"}
    failed = [r for r in rows if r["status"] in ("failed", "timeout")]
    first = (failed or rows)[0]
    return {"status": "failed" if failed else "skipped", "reason": f"{first['label']}: {first['reason']}"}


# ---------------------------------------------------------------------------------------------------------------
# goals, Markdown, splicing into docs/benchmarks.md
# ---------------------------------------------------------------------------------------------------------------


def goals(doc: dict) -> list[dict]:
    """The issue's goals against what was measured (None: not measured)."""
    sec = doc["sections"]
    bf16 = [r for key in ("paper", "compile") for r in sec[key]["items"] if r.get("result")]
    best_fps = max((r.get("fps_steady") or 0 for r in bf16), default=None)
    fast = [r for r in sec["recipes"]["items"] if r.get("vs_bf16", {}).get("fps_steady")
            and re.search(r"int8|fp8", r["label"])]
    best_ratio = max((r["vs_bf16"]["fps_steady"] for r in fast), default=None)
    out = [{"goal": "bf16 Tiny 768x1408 FPS (after chunk 0), best backend", "target": f"> {GOAL_FPS:g}",
            "measured": best_fps, "met": None if not best_fps else best_fps > GOAL_FPS},
           {"goal": "best int8/fp8 recipe FPS / bf16 (after chunk 0)", "target": f">= {GOAL_RATIO:g}",
            "measured": best_ratio, "met": None if best_ratio is None else best_ratio >= GOAL_RATIO}]
    for r in sec["planner"]["items"]:
        if "budget_bytes" not in r:
            continue
        out.append({"goal": f"{r['label']}: peak reserved within the budget",
                    "target": f"<= {r['budget_bytes'] / GIB:g} GiB", "measured": gib(r["result"].get("peak_reserved")),
                    "met": r["fits_reserved"]})
        err = r["error"]
        out.append({"goal": f"{r['label']}: planner error (allocated vs estimate)", "target": "within 15 %",
                    "measured": None if err is None else f"{err:+.1%}",
                    "met": None if err is None else abs(err) <= GOAL_PLANNER_ERROR})
    if doc["dry_run"]:  # tiny CPU sizes: the numbers prove the plumbing, not the goals
        out = [{**g, "met": None} for g in out]
    return out


YES = {True: "yes", False: "NO", None: "–"}


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / GIB, 2)


def fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def table(head: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines; None cells print as '–'."""
    cells = [["–" if c is None else str(c) for c in row] for row in rows]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in cells]


def environment_lines(doc: dict) -> list[str]:
    info = doc["sections"]["environment"].get("info") or {}
    packages = info.get("packages") or {}
    found = ", ".join(f"{name} {p['version'] or ''}".strip() + ("" if p["import"].startswith("ok") else " (no import)")
                      for name, p in packages.items() if p["version"] or p["import"].startswith("ok"))
    missing = ", ".join(name for name, p in packages.items() if not p["version"] and not p["import"].startswith("ok"))
    kernels = "; ".join(f"{k}: {v}" for k, v in (info.get("kernels") or {}).items() if isinstance(v, str))
    if not info:
        return []
    return [f"Packages: {found or '–'}; missing: {missing or 'none'}. Kernel checks: {kernels or '–'}.", ""]


def markdown(doc: dict) -> str:
    """A block with begin/end markers that `splice` puts into docs/benchmarks.md; one block per device."""
    dev, sec, st = doc.get("device") or {}, doc["sections"], doc["settings"]
    name = dev.get("device_name") or "unknown device"
    dry = " (DRY RUN on the CPU: tiny sizes, not a measurement)" if doc["dry_run"] else ""
    lines = [f"<!-- gpu-suite:begin {slug(name)} -->", f"### {name}{dry}", "",
             f"`tools/gpu_suite.py`, {doc['started']}; torch {dev.get('torch')}, CUDA {dev.get('cuda')}, driver "
             f"{dev.get('driver') or '–'}, compute capability {dev.get('capability') or '–'}, Python "
             f"{dev.get('python')}; weights: {(doc.get('weights') or {}).get('source', 'random, in-process')}; "
             f"{doc['elapsed_s']:.0f} of {doc['budget_s']:.0f} s used{'' if doc['finished'] else ', STOPPED EARLY'}.",
             "", "FPS is over the whole clip; *after chunk 0* leaves out chunk 0's one-time costs (autotuning, "
             "compilation). Peaks are `torch.cuda.max_memory_allocated` / `_reserved` in GiB.", "",
             *environment_lines(doc)]
    rows = [r for key in ("paper", "compile") for r in sec[key]["items"] if r.get("result")]
    lines += [f"**Paper setting** (Tiny, {st['paper_size']} output, {st['paper_frames']} frames, bf16)", ""]
    lines += table(["attention", "compile", "FPS", "FPS after chunk 0", "first output (s)", "peak alloc",
                    "peak reserved"],
                   [[r["label"], "on" if r["result"]["config"]["compile"] else "off", fmt(r["result"]["fps"]),
                     fmt(r.get("fps_steady")), fmt(r["result"]["first_output_s"], ".1f"),
                     fmt(gib(r["result"].get("peak_allocated"))), fmt(gib(r["result"].get("peak_reserved")))]
                    for r in rows])
    rows = [r for r in sec["recipes"]["items"] if r.get("result")]
    lines += ["", "**Quantization recipes** (same setting; ratios to the first bf16 row)", ""]
    lines += table(["recipe", "attention", "FPS", "× bf16", "after chunk 0 × bf16", "peak alloc", "× bf16"],
                   [[r["label"], r["result"]["backend"], fmt(r["result"]["fps"]),
                     fmt(r.get("vs_bf16", {}).get("fps"), ".3f"), fmt(r.get("vs_bf16", {}).get("fps_steady"), ".3f"),
                     fmt(gib(r["result"].get("peak_allocated"))),
                     fmt(r.get("vs_bf16", {}).get("peak_allocated"), ".3f")] for r in rows])
    rows = [r for r in sec["planner"]["items"] if r.get("result")]
    lines += ["", f"**Planner** ({st['planner_frames']} frames, bf16)", ""]
    lines += table(["run", "output", "tiling", "estimate", "peak alloc", "peak reserved", "error", "fits", "FPS"],
                   [[r["label"], f"{r['result']['config']['width']}x{r['result']['config']['height']}",
                     r["result"]["tiling"], fmt(gib(r["result"]["estimated_peak"])),
                     fmt(gib(r["result"].get("peak_allocated"))), fmt(gib(r["result"].get("peak_reserved"))),
                     fmt(r.get("error"), "+.1%"), YES[r.get("fits_reserved")], fmt(r["result"]["fps"])] for r in rows])
    for r in rows:
        if "tiled_over_untiled_time" in r:
            lines += ["", f"Tiled / untiled time at {st['planner'][0][0]}: {r['tiled_over_untiled_time']:.3f} "
                      "(target <= 1.3)."]
    for r in (r for r in sec["profile"]["items"] if r.get("result")):
        stages = r["result"].get("stages") or {}
        lines += ["", f"**Per-stage time, {r['label']}**: " + ", ".join(f"{k} {v}" for k, v in stages.items())]
    rows = [r for r in sec["kernels"]["items"] if r.get("ms") is not None]
    if rows:
        lines += ["", "**Attention kernels alone** (chunk-0 shape)", ""]
        lines += table(["kernel", "ms", "TFLOP/s"], [[r["label"], fmt(r["ms"], ".3f"), fmt(r.get("tflops"), ".1f")]
                                                     for r in rows])
    tests = sec["cuda_tests"].get("info") or {}
    if tests:
        lines += ["", f"**CUDA tests**: {tests.get('summary') or '–'}"]
    lines += ["", "**Goals**", ""]
    lines += table(["goal", "target", "measured", "met"],
                   [[g["goal"], g["target"], fmt(g["measured"], ""), YES[g["met"]]] for g in doc["goals"]])
    skipped = [(k, v["reason"]) for k, v in sec.items() if v["status"] not in ("ok", "partial") and not v["items"]]
    skipped += [(f"{k}/{r['label']}", r["reason"]) for k, v in sec.items() for r in v["items"]
                if r.get("status") not in ("ok", None)]
    if skipped:
        lines += ["", "Not measured:", ""] + [f"- {k}: {why}" for k, why in skipped]
    lines.append(f"<!-- gpu-suite:end {slug(name)} -->")
    return "\n".join(lines)


def splice(block_file: Path, doc_file: Path) -> str:
    """Put the block of ``block_file`` into ``doc_file``: replace the block with the same markers, else append it.
    Nothing outside the markers changes."""
    block = block_file.read_text().strip()
    match = re.match(r"<!-- gpu-suite:begin (\S+) -->", block)
    if not match or not block.endswith(f"<!-- gpu-suite:end {match.group(1)} -->"):
        raise SystemExit(f"error: {block_file} holds no gpu-suite block (write it with tools/gpu_suite.py)")
    key = re.escape(match.group(1))
    text = doc_file.read_text()
    pattern = re.compile(rf"<!-- gpu-suite:begin {key} -->.*?<!-- gpu-suite:end {key} -->", re.S)
    new = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    write_text(doc_file, new.rstrip("\n") + "\n")
    return match.group(1)


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CHILD_COMMANDS:
        return CHILD_COMMANDS[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="tools/gpu_suite.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-suite-out", help="results.json, results.md, cuda-tests.log go here")
    parser.add_argument("--work", default="/tmp/flashvsr-q-gpu-suite", help="weights and bench outputs (large)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 540; 1200 with --dry-run, where a shared CPU is slow)")
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes")
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of {[s.name for s in SECTIONS]}")
    parser.add_argument("--weights", default=None, help="an official-layout folder to use instead of writing one")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the child processes")
    opts = parser.parse_args(argv)
    if opts.budget is None:
        opts.budget = 1200.0 if opts.dry_run else 540.0
    if not opts.dry_run and not cuda_present(opts.python):
        parser.error("no CUDA device visible; run with --dry-run to rehearse on the CPU")
    suite = Suite(opts, DRY if opts.dry_run else REAL)

    def stop(signum, _frame):
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        code = run_suite(suite)
    except Stopped as exc:
        suite.kill_child()
        for rec in suite.doc["sections"].values():
            if rec["status"] in ("pending", "running"):
                rec.update(status="skipped", reason=f"not reached: suite stopped ({exc})")
            for row in rec["items"]:
                if row.get("status") == "running":
                    row.update(status="skipped", reason=f"stopped mid-step ({exc})")
        code = 1
    suite.save()
    print(markdown(suite.doc))
    print(f"\nwrote {suite.out / 'results.json'} and {suite.out / 'results.md'}")
    return code


def cuda_present(python: str) -> bool:
    probe_cmd = "import torch; raise SystemExit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([python, "-c", probe_cmd], capture_output=True, timeout=120).returncode == 0


def child_splice(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gpu_suite.py splice", description="put a results.md block into a doc")
    p.add_argument("block", type=Path, help="results.md written by a run")
    p.add_argument("doc", type=Path, help="e.g. docs/benchmarks.md")
    a = p.parse_args(argv)
    print(f"spliced block {splice(a.block, a.doc)} into {a.doc}")
    return 0


CHILD_COMMANDS = {"splice": child_splice}

if __name__ == "__main__":
    sys.exit(main())
