"""tools/gpu_suite.py: the dry run rehearses every section on the CPU, and the results always name every section.

tools/ is not installed, so the suite runs by path, against whatever flashvsr_q this interpreter imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "tools" / "gpu_suite.py"
SECTIONS = ["environment", "weights", "paper", "recipes", "planner", "profile", "cuda_tests", "kernels", "compile",
            "full_pipeline"]


def run_suite(tmp_path: Path, *args: str, timeout: float = 900) -> tuple[dict, str]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out), "--work", str(tmp_path / "w"),
                           *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def assert_every_section_accounted_for(doc: dict) -> None:
    assert doc["schema"] == "flashvsr-q-gpu-suite/1"
    assert list(doc["sections"]) == SECTIONS
    for name, sec in doc["sections"].items():
        assert sec["status"] in ("ok", "partial", "skipped", "failed"), name
        if sec["status"] in ("ok", "partial"):
            assert sec["items"] or sec["info"], name
        else:
            assert sec["reason"], name
        for row in sec["items"]:
            assert row.get("result") or row.get("ms") is not None or row["reason"], (name, row)


@pytest.mark.slow
def test_dry_run_rehearses_every_section(tmp_path):
    doc, md = run_suite(tmp_path)
    assert_every_section_accounted_for(doc)
    assert doc["finished"] and doc["dry_run"]
    sec = doc["sections"]
    env = sec["environment"]["info"]
    assert env["attention"]["sparse"] is None and env["attention_auto"] == "sparse"
    assert "int8-weight-only" in env["recipes"] and set(env["packages"]) >= {"torchao", "bitsandbytes", "triton"}
    # the official-layout files were written, and every bench step read them
    folder = tmp_path / "w" / "weights" / "test"
    assert (folder / "diffusion_pytorch_model_streaming_dmd.safetensors").is_file()
    assert (folder / "Wan2.1_VAE.pth").is_file()  # the Full pipeline's decoder, same folder as the release
    measured = [r for key in ("paper", "recipes", "planner") for r in sec[key]["items"] if r.get("result")]
    assert measured and all(r["result"]["config"]["checkpoint"] == str(folder) for r in measured)
    paper = {r["label"]: r for r in sec["paper"]["items"]}
    assert paper["sparse"]["status"] == "ok" and paper["sparse"]["result"]["frames_out"] == 29
    assert paper["sparse"]["fps_steady"] > 0
    assert paper["dense"]["status"] == "skipped"  # the fp32 reference is never timed
    int8 = next(r for r in sec["recipes"]["items"] if r["label"] == "int8-weight-only")
    assert int8["status"] == "ok" and int8["result"]["config"]["recipe"] == "int8-weight-only"
    assert int8["vs_bf16"]["fps"] > 0 and int8["result"]["backend"] == "sparse"
    planner = sec["planner"]["items"]
    assert [r["status"] for r in planner] == ["ok"] * 4 and all(r["result"]["estimated_peak"] > 0 for r in planner)
    assert planner[0]["result"]["config"]["vram"] == "8GB" and planner[-1]["result"]["config"]["tile"] == "off"
    # CUDA-only steps are planned with their arguments checked, not run; the CUDA tests are collected
    assert sec["compile"]["items"]
    assert all(r["reason"] == "no CUDA (dry run: planned only)" and "--compile" in r["args"]
               for r in sec["compile"]["items"])
    assert sec["cuda_tests"]["status"] == "ok" and sec["cuda_tests"]["info"]["counts"]["tests collected"] > 0
    # the per-stage profile: bench --profile-stages at 1080p (tiny here)
    profile = sec["profile"]  # bench --profile-stages exists now: the section runs
    assert profile["status"] == "ok", json.dumps(profile, default=str)[:3000]
    assert md.startswith("<!-- gpu-suite:begin ") and "<!-- gpu-suite:end " in md and "DRY RUN" in md


def test_without_budget_every_section_still_has_a_reason(tmp_path):
    doc, md = run_suite(tmp_path, "--budget", "0", timeout=300)
    assert_every_section_accounted_for(doc)
    for sec in doc["sections"].values():
        assert sec["status"] == "skipped" and ("budget" in sec["reason"] or "needs bench" in sec["reason"])
    assert "Not measured:" in md


def test_splice_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written text\n")

    def splice(device: str, body: str) -> None:
        block = tmp_path / f"{device}.md"
        block.write_text(f"<!-- gpu-suite:begin {device} -->\n{body}\n<!-- gpu-suite:end {device} -->\n")
        subprocess.run([sys.executable, str(SUITE), "splice", str(block), str(doc)], check=True, capture_output=True,
                       timeout=120)

    splice("gpu-a", "first")
    splice("gpu-b", "other card")
    splice("gpu-a", "second")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text\n")
    assert "first" not in text and text.count("second") == 1 and text.count("other card") == 1
    assert text.index("second") < text.index("other card")  # replaced in place, not appended again
