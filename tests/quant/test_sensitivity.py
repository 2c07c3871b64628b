"""Sensitivity analysis: ranking, report files, budgeted mixed-precision recipes, and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import random_lr, random_model
from PIL import Image

from flashvsr_q.cli import main
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.model import save_official
from flashvsr_q.quant.calibration import TensorClips
from flashvsr_q.quant.ptq import quantize_model
from flashvsr_q.quant.recipes import load_recipe, parse_recipe, resolve_plan
from flashvsr_q.quant.sensitivity import (
    analyze_sensitivity,
    generate_recipe,
    group_layers,
    load_report,
    module_bytes,
    parse_size,
    plan_mixed_precision,
    write_report,
)

BROKEN = "dit.blocks.1.ffn.0"
BLOCK1 = r"dit\.blocks\.1\.((self_attn|cross_attn)\.(q|k|v|o)|ffn\.(0|2))"


def broken_model():
    """The test model with one outlier input column in ``BROKEN``: per-row int8 must spend its whole range on it."""
    model = random_model("test")
    with torch.no_grad():
        model.get_submodule(BROKEN).weight[:, 0] *= 100.0
    return model


@pytest.fixture(scope="module")
def analysis():
    torch.set_num_threads(1)
    model = broken_model()
    clips = list(TensorClips([random_lr(33, seed=7)]))
    report = analyze_sensitivity(model, "int8_weight_only", clips, grouping="layer", rank_by="latent",
                                 layers=BLOCK1)
    return model, report


def test_parse_size():
    assert parse_size("1.2GB") == 1_200_000_000
    assert parse_size("800MiB") == 800 * 2**20
    assert parse_size("512 kb") == 512_000
    assert parse_size("123456") == 123456
    with pytest.raises(FlashVSRError):
        parse_size("lots")


def test_groupings():
    fqns = [f"dit.blocks.{b}.{k}" for b in range(2) for k in ("self_attn.q", "ffn.0")]
    assert list(group_layers(fqns, "layer")) == fqns
    assert group_layers(fqns, "block") == {"dit.blocks.0": fqns[:2], "dit.blocks.1": fqns[2:]}
    assert group_layers(fqns, "kind") == {"self_attn.q": [fqns[0], fqns[2]], "ffn.0": [fqns[1], fqns[3]]}
    with pytest.raises(FlashVSRError):
        group_layers(fqns, "head")


def test_broken_layer_ranks_most_sensitive(analysis):
    model, report = analysis
    assert len(report.results) == 10 and report.grouping == "layer"
    assert report.ranked()[0].name == BROKEN
    for rank_by in ("latent", "sqnr", "psnr"):
        report.rank_by = rank_by
        assert report.ranked()[0].name == BROKEN, rank_by
    report.rank_by = "latent"
    worst, second = report.ranked()[:2]
    assert worst.latent_sqnr_db < second.latent_sqnr_db - 3
    assert report.all_quantized["latent_sqnr_db"] <= worst.latent_sqnr_db + 0.5
    # the model is left exactly as it was
    assert type(model.get_submodule(BROKEN).weight) is torch.nn.Parameter
    assert all(type(m.weight.data) is torch.Tensor for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_report_files(analysis, tmp_path):
    _, report = analysis
    paths = write_report(report, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert data["results"][0]["name"] == BROKEN and data["results"][0]["rank"] == 1
    assert load_report(tmp_path / "rep").ranked()[0].name == BROKEN
    markdown = paths["markdown"].read_text()
    assert f"| 1 | `{BROKEN}` |" in markdown and markdown.count("\n| ") == 11  # header + 10 rows
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "rep").glob(".*tmp*"))


@pytest.mark.parametrize("fallback", ["bf16", "int8_weight_only"])
def test_generated_recipe_respects_budget_and_validates(analysis, fallback):
    model, report = analysis
    report = copy.deepcopy(report)
    report.scheme = {"name": "nf4", "blocksize": 64, "double_quant": True}  # pretend a 4-bit run, same ranking
    from flashvsr_q.quant.schemes import get_scheme
    from flashvsr_q.quant.sensitivity import quantized_bytes

    for r in report.results:
        r.bytes_quantized = sum(quantized_bytes(model.get_submodule(f), get_scheme("nf4")) for f in r.layers)
    low = plan_mixed_precision(report, model, fallback, 10**12).min_bytes
    high = plan_mixed_precision(report, model, fallback, 10**12).max_bytes
    budget = low + (high - low) // 3
    text, mix = generate_recipe(report, model, fallback, budget)
    assert low <= mix.total_bytes <= budget and mix.promoted and len(mix.promoted) < len(report.results)
    assert mix.promoted[0] == BROKEN
    recipe = parse_recipe(text)
    plan = resolve_plan(recipe, model, "cpu")
    promoted = set(mix.promoted)
    for r in report.results:
        layer = plan.layers[r.name]
        expected = ("nf4" if r.name not in promoted else (None if fallback == "bf16" else fallback))
        assert (layer.scheme.name if layer.scheme else None) == expected, r.name
    # the estimate is the real size of the quantized bf16 model
    quantized = quantize_model(copy.deepcopy(model).to(torch.bfloat16), plan)
    assert module_bytes(quantized) == mix.total_bytes


def test_budget_limits(analysis):
    model, report = analysis
    low = plan_mixed_precision(report, model, "bf16", 10**12).min_bytes
    with pytest.raises(FlashVSRError, match="below the size"):
        generate_recipe(report, model, "bf16", low - 1)
    with pytest.raises(FlashVSRError, match="no layer is left to quantize"):
        generate_recipe(report, model, "bf16", 10**12)
    text, mix = generate_recipe(report, model, "bf16", low)  # exactly the all-quantized size: nothing promoted
    assert mix.promoted == [] and mix.total_bytes == low
    assert parse_recipe(text).keep[-1].startswith("(?!")


def test_static_scheme_needs_statistics():
    model = random_model("test")
    with pytest.raises(FlashVSRError, match="needs activation statistics"):
        analyze_sensitivity(model, "w8a8_int8_static", list(TensorClips([random_lr(33)])))


def test_cli_sensitivity_writes_report_and_recipe(tmp_path, capsys):
    save_official(broken_model(), tmp_path / "ckpt")
    frames = tmp_path / "lr_frames"  # LR footage (32x32 frames, used as is with --lr)
    frames.mkdir()
    for i in range(33):
        pixels = (random_lr(1, 32, 32, seed=i)[0, :, 0].permute(1, 2, 0) * 127.5 + 127.5).round().byte().numpy()
        Image.fromarray(pixels).save(frames / f"{i:03d}.png")
    out, recipe = tmp_path / "report", tmp_path / "mixed.yaml"
    common = ["--checkpoint", str(tmp_path / "ckpt"), "--footage", str(frames), "--lr", "--clips", "1",
              "--frames", "33", "--size", "128x128", "--device", "cpu"]
    argv = ["sensitivity", "--scheme", "int8_weight_only", "-o", str(out), "--grouping", "block",
            "--rank-by", "latent", "--budget", "2.02MB", "--recipe-out", str(recipe)] + common
    assert main(argv) == 0
    report = load_report(out)
    assert report.ranked()[0].name == "dit.blocks.1" and (out / "sensitivity.png").is_file()
    loaded = load_recipe(recipe)
    assert loaded.name == "mixed-int8-weight-only-bf16" and len(loaded.keep) == 2  # block 1 kept, the rest
    assert "wrote" in capsys.readouterr().out
    # bad input: a budget without --recipe-out, an unknown scheme, an existing recipe file; nothing is written
    assert main(["sensitivity", "--scheme", "int8_weight_only", "-o", str(tmp_path / "r2"), "--budget", "1GB"]
                + common) != 0
    assert main(["sensitivity", "--scheme", "int3", "-o", str(tmp_path / "r3")] + common) != 0
    assert main(argv[:4] + [str(tmp_path / "r4")] + argv[5:]) != 0  # --recipe-out exists already
    assert not any((tmp_path / name).exists() for name in ("r2", "r3", "r4"))
    assert "error: " in capsys.readouterr().err
