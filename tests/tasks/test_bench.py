"""`flashvsr-q bench`: one tiny configuration in process, in a subprocess, and the report formats."""

from __future__ import annotations

import json

import pytest

from flashvsr_q.cli import main
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.tasks.bench import (
    BenchConfig,
    BenchOptions,
    configs_from_options,
    run_config,
    synthetic_frames,
    to_markdown,
)

KEYS = {"fps", "first_output_s", "peak_allocated", "peak_reserved", "peak_rss", "peak_rss_model",
        "peak_rss_first_output", "estimated_peak", "tiling", "frames_out", "environment", "backend", "dtype"}


def test_synthetic_frames_are_deterministic_and_moving():
    a, b = list(synthetic_frames(12, 8, 3, seed=1)), list(synthetic_frames(12, 8, 3, seed=1))
    assert all((x == y).all() for x, y in zip(a, b)) and a[0].shape == (8, 12, 3)
    assert (a[0] != a[1]).any()


def test_run_config_in_process():
    result = run_config(BenchConfig(model="test", width=8, height=8, frames=2, device="cpu", dtype="fp32"))
    assert KEYS <= set(result) and result["frames_out"] == 2 and result["fps"] > 0
    assert result["peak_allocated"] is None and result["peak_rss"] > 0  # no CUDA here
    assert result["peak_rss_model"] <= result["peak_rss_first_output"] <= result["peak_rss"]
    assert result["environment"]["torch"] and result["environment"]["cpu_threads"] >= 1
    table = to_markdown([result])
    assert table.count("\n| test |") == 1 and "torch" in table


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "test", "--size", "8x8", "--frames", "1", "--device", "cpu", "--dtype", "fp32",
                 "-o", str(out)]) == 0  # in a fresh subprocess
    results = json.loads(out.read_text())
    assert len(results) == 1 and KEYS <= set(results[0])
    assert out.with_suffix(".md").read_text().count("| test |") == 1
    assert "| test |" in capsys.readouterr().out


def test_configurations_are_the_cartesian_product():
    configs = configs_from_options(BenchOptions(tile="off,256x32", frames="100,400", size="64x64"))
    assert [(c.tile, c.frames) for c in configs] == [("off", 100), ("off", 400), ("256x32", 100), ("256x32", 400)]


def test_bad_configuration():
    with pytest.raises(FlashVSRError, match="multiple of the scale"):
        run_config(BenchConfig(model="test", width=10, height=8, frames=1, device="cpu"))
    with pytest.raises(FlashVSRError, match="unknown model config"):
        run_config(BenchConfig(model="huge", width=8, height=8, frames=1, device="cpu"))


def test_recipes_are_a_dimension_and_quantize_the_model():
    options = BenchOptions(recipe="none,int8-weight-only", size="8x8")
    assert [c.recipe for c in configs_from_options(options)] == [None, "int8-weight-only"]
    plain, int8 = (run_config(BenchConfig(model="test", width=8, height=8, frames=1, device="cpu", dtype="fp32",
                                          recipe=recipe)) for recipe in (None, "int8-weight-only"))
    assert int8["estimated_peak"] < plain["estimated_peak"]  # the planner counts the quantized weights
    assert "| test + int8-weight-only |" in to_markdown([int8])


def test_stage_profile_sums_to_the_run_and_calibrated_recipes_run_on_synthetic_statistics():
    plain = run_config(BenchConfig(model="test", width=64, height=64, frames=9, device="cpu", dtype="fp32",
                                   profile_stages=True))
    stages = plain["stages"]
    assert set(stages) == {"lq_proj", "dit", "decoder", "other"} and all(v >= 0 for v in stages.values())
    assert abs(sum(stages.values()) - plain["seconds"]) < 0.01 and stages["dit"] > 0
    with pytest.raises(FlashVSRError, match="needs calibration statistics"):
        run_config(BenchConfig(model="test", width=8, height=8, frames=1, device="cpu", dtype="fp32",
                               recipe="w8a8-int8-smoothquant"))
    calibrated = run_config(BenchConfig(model="test", width=8, height=8, frames=1, device="cpu", dtype="fp32",
                                        recipe="w8a8-int8-smoothquant", calibration="synthetic"))
    assert calibrated["frames_out"] == 1 and "stages" not in calibrated
