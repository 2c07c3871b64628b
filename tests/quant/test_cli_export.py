"""`flashvsr-q quantize` / `inspect` end to end on a synthetic official checkpoint, and the fp8 official export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import random_model
from quant.quant_helpers import dit_output, sqnr
from safetensors import safe_open

from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.cli import main
from flashvsr_q.errors import CheckpointError
from flashvsr_q.model import OFFICIAL_FILES, save_official
from flashvsr_q.quant.export import E4M3_MAX, export_fp8_official, read_fp8_official
from flashvsr_q.tasks.inspect import inspect_checkpoint


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "test-model"
    save_official(random_model("test"), path)
    return path


def test_quantize_then_inspect(official, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", "--recipe", "int8-weight-only", "--checkpoint", str(official), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plan: recipe int8-weight-only" in printed and "dit.blocks.{0-1}.ffn.{0,2}" in printed
    assert (out / "manifest.json").is_file()

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for fragment in ("compressed checkpoint, model test (2 blocks)", "recipe int8-weight-only", "torchao 0.18",
                     "int8_weight_only", "21 layers", "conv_weight_only",
                     "dit.blocks.{0-1}.{self_attn,cross_attn}.{q,k,v,o}",
                     "dit.safetensors", "sha256", "total"):
        assert fragment in text, fragment
    info = inspect_checkpoint(out)
    assert all(f["status"] == "ok" for f in info["files"])
    assert info["total_bytes"] == sum(p.stat().st_size for p in out.iterdir() if p.name != "manifest.json")

    model = load_checkpoint(out)
    reference = load_checkpoint(official, dtype=torch.bfloat16)
    assert sqnr(dit_output(reference), dit_output(model)) > 35


def test_inspect_official_folder_and_json(official, capsys):
    assert main(["inspect", str(official), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "official" and info["model"] == "test"
    dit = next(f for f in info["files"] if f["file"] == OFFICIAL_FILES["dit"])
    assert dit["dtypes"] == {"float32": 69} and len(dit["sha256"]) == 64


def test_inspect_flags_a_damaged_checkpoint(official, tmp_path, capsys):
    out = tmp_path / "nf4"
    assert main(["quantize", "--recipe", "nf4", "--checkpoint", str(official), "-o", str(out), "--quiet"]) == 0
    with open(out / "decoder.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    assert main(["inspect", str(out)]) == 1
    captured = capsys.readouterr()
    assert "SHA-256 MISMATCH" in captured.out and "decoder.safetensors failed verification" in captured.err


@pytest.mark.parametrize(("args", "message"), [
    (["--recipe", "int3"], "no recipe 'int3'"),
    (["--recipe", "w8a8-fp8"], "recipes that run on cpu: "),
    (["--recipe", "w8a8-int8-smoothquant"], "needs calibration statistics"),
    (["--recipe", "int8-weight-only", "--calibration", "missing.safetensors"], "do not exist"),
])
def test_bad_input_exits_non_zero_and_writes_nothing(official, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["quantize", *args, "--checkpoint", str(official), "-o", str(out), "--quiet"])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoint_and_existing_output(official, tmp_path, capsys):
    assert main(["quantize", "--recipe", "nf4", "--checkpoint", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) != 0
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    assert main(["quantize", "--recipe", "nf4", "--checkpoint", str(official), "-o", str(tmp_path / "o")]) != 0
    assert "already exists" in capsys.readouterr().err
    assert list((tmp_path / "o").iterdir()) == []


def test_cli_in_a_subprocess(official, tmp_path):
    out = tmp_path / "w4a8"
    cmd = [sys.executable, "-m", "flashvsr_q.cli", "quantize", "--recipe", "w4a8", "--checkpoint", str(official),
           "-o", str(out), "--dry-run"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "w4a8_int" in result.stdout and not out.exists()  # dry run: plan only


# --- fp8 official export -----------------------------------------------------------------------------------------


def test_fp8_export_layout_and_values(tmp_path):
    model = random_model("test").to(torch.bfloat16)
    export_fp8_official(model, tmp_path / "fp8")
    assert {p.name for p in (tmp_path / "fp8").iterdir()} == set(OFFICIAL_FILES.values()) | {"flashvsr-q-config.json"}
    dit = model.dit.state_dict()
    with safe_open(str(tmp_path / "fp8" / OFFICIAL_FILES["dit"]), framework="pt") as f:
        keys = set(f.keys())
        assert keys == set(dit) | {"scaled_fp8"} | {k.replace(".weight", ".scale_weight") for k in dit
                                                    if k.endswith(".weight") and (".ffn." in k or "_attn.q" in k or
                                                    "_attn.k." in k or "_attn.v" in k or "_attn.o" in k)}
        weight, scale = f.get_tensor("blocks.0.ffn.0.weight"), f.get_tensor("blocks.0.ffn.0.scale_weight")
        assert weight.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == ()
        assert float(weight.float().abs().max()) == E4M3_MAX  # per-tensor scale uses the full e4m3 range
        # the ComfyUI rule: weight = fp8.float() * scale_weight
        assert sqnr(dit["blocks.0.ffn.0.weight"], weight.float() * scale) > 28
        assert torch.equal(f.get_tensor("blocks.0.modulation"), dit["blocks.0.modulation"])
        assert f.get_tensor("scaled_fp8").dtype == torch.float8_e4m3fn
    back = read_fp8_official(tmp_path / "fp8")
    assert sqnr(dit_output(model), dit_output(back)) > 25
    with pytest.raises(CheckpointError, match="already exists"):
        export_fp8_official(model, tmp_path / "fp8")


def test_fp8_export_from_cli_and_quantized_models(official, tmp_path):
    assert main(["quantize", "--export", "fp8-official", "--checkpoint", str(official), "-o", str(tmp_path / "e")]) == 0
    assert read_fp8_official(tmp_path / "e").config.name == "test"
    from flashvsr_q.quant import load_recipe, quantize_model, resolve_plan

    for name in ("int8-weight-only", "nf4", "w4a8"):  # an export can start from a quantized model
        model = random_model("test").to(torch.bfloat16)
        reference = dit_output(model)
        quantize_model(model, resolve_plan(load_recipe(name), model))
        export_fp8_official(model, tmp_path / name)
        assert sqnr(reference, dit_output(read_fp8_official(tmp_path / name))) > 22


def test_quantize_says_what_is_missing_before_any_plan(tmp_path, capsys):
    """A recipe that needs statistics is refused before its plan is printed (dry run too), with the command to run;
    a CUDA device without CUDA is refused at once."""
    for extra in ([], ["--dry-run"]):
        assert main(["quantize", "--recipe", "w8a8-int8-smoothquant", "-o", str(tmp_path / "q"), *extra]) == 2
        captured = capsys.readouterr()
        assert "plan:" not in captured.out and "flashvsr-q calibrate --recipe w8a8-int8-smoothquant" in captured.err
    if not torch.cuda.is_available():
        assert main(["quantize", "--recipe", "int8-weight-only", "-o", str(tmp_path / "q"), "--device", "cuda"]) == 2
        assert "CUDA is not available here" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
