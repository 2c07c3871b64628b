"""PTQ + compressed checkpoints: every shipped recipe quantizes exactly its planned layers, survives a bit-exact
save -> load, and damaged or mismatched checkpoints are refused with a reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import random_lr, random_model, requires_cuda
from quant.quant_helpers import dit_output, sqnr

from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.errors import CheckpointError
from flashvsr_q.model import SeededNoise, run_clip, save_official
from flashvsr_q.quant import (
    CalibrationStats,
    LayerCalibration,
    RecipeError,
    load_compressed,
    load_recipe,
    quantize_model,
    quantize_official,
    resolve_plan,
    save_compressed,
)
from flashvsr_q.quant import checkpoint as ckpt
from flashvsr_q.quant.convrot import ConvRotLinear, ConvRotW4A8Linear
from flashvsr_q.quant.recipes import shipped_recipes
from flashvsr_q.quant.weight_only import is_weight_only

CPU_RECIPES = [n for n in sorted(shipped_recipes())
               if all(r.scheme.unavailable("cpu") is None for r in load_recipe(n).rules)]
DIT_SQNR_FLOOR = {"nf4": 25, "w4a8": 25, "int4-weight-only": 25}  # dB on the DiT output; 8-bit recipes: 35


def bf16_model(seed: int = 0):
    return random_model("test", seed=seed).to(torch.bfloat16)


def fake_calibration(plan, seed: int = 0) -> CalibrationStats:
    g = torch.Generator().manual_seed(seed)
    layers = {fqn: LayerCalibration(torch.rand(p.shape[1], generator=g) * 3 + 0.5,
                                    torch.rand(p.shape[1], generator=g) + 0.5) for fqn, p in plan.quantized.items()}
    return CalibrationStats(layers, source_hash="feed" * 16)


def quantized(name: str, seed: int = 0):
    model = bf16_model(seed)
    recipe = load_recipe(name)
    plan = resolve_plan(recipe, model, "cpu")
    calibration = fake_calibration(plan) if recipe.needs_calibration else None
    return quantize_model(model, plan, calibration), recipe, plan, calibration


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes or ConvRot module, or any parameter held as a tensor subclass (torchao)."""
    return isinstance(module, (ConvRotLinear, ConvRotW4A8Linear)) or is_weight_only(module) or (
        type(module).__module__.startswith("bitsandbytes")) or any(
        type(p.data) is not torch.Tensor for p in module.parameters(recurse=False))


@pytest.mark.parametrize("name", CPU_RECIPES)
def test_recipe_quantize_save_load_is_bit_exact(name, tmp_path):
    reference_model = bf16_model()
    reference_state = {k: v.clone() for k, v in reference_model.state_dict().items()}
    reference = dit_output(reference_model)

    model, recipe, plan, calibration = quantized(name)
    # exactly the planned layers changed type; every kept tensor is bit-identical to the float model
    for fqn, layer in plan.layers.items():
        if layer.scheme is None:
            if layer.kind in ("Parameter", "Buffer"):
                assert torch.equal(model.get_parameter(fqn) if layer.kind == "Parameter" else model.get_buffer(fqn),
                                   reference_state[fqn])
            else:
                module = model.get_submodule(fqn)
                assert not is_quantized(module)
                for key, value in module.state_dict().items():
                    assert torch.equal(value, reference_state[f"{fqn}.{key}"]), f"{fqn}.{key} changed"
        else:
            assert is_quantized(model.get_submodule(fqn)), f"{fqn} not quantized"
    out = dit_output(model)
    floor = DIT_SQNR_FLOOR.get(name, 35)
    assert floor < sqnr(reference, out) < 200, f"{name}: {sqnr(reference, out):.1f} dB"

    fingerprint = calibration.fingerprint() if calibration else None
    save_compressed(model, tmp_path / "ckpt", recipe, plan, fingerprint)
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["recipe"]["text"] == recipe.text
    assert manifest["layers"] == plan.layer_schemes()
    assert (manifest["calibration"] or {}).get("sha256") == fingerprint
    assert set(manifest["files"]) == set(ckpt.PARTS.values())

    loaded = load_compressed(tmp_path / "ckpt")
    assert torch.equal(dit_output(loaded), out)
    for fqn, layer in plan.layers.items():
        if layer.kind not in ("Parameter", "Buffer"):
            assert type(loaded.get_submodule(fqn)) is type(model.get_submodule(fqn))
    via_dispatch = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(dit_output(via_dispatch), out)


@pytest.mark.slow
def test_whole_clip_identical_after_reload(tmp_path):
    model, recipe, plan, _ = quantized("int8-weight-only")
    lr = random_lr(25, 128, 128).to(torch.bfloat16)
    frames, _ = run_clip(model, lr, noise=SeededNoise(0, 16, 16, 16))
    save_compressed(model, tmp_path / "q", recipe, plan)
    again, _ = run_clip(load_compressed(tmp_path / "q"), lr, noise=SeededNoise(0, 16, 16, 16))
    assert torch.equal(frames, again)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.Tensor]:
    model, recipe, plan, _ = quantized("int8-weight-only")
    save_compressed(model, tmp_path / "q", recipe, plan)
    return tmp_path / "q", dit_output(model)


def test_tampered_file_is_rejected(saved):
    path, _ = saved
    data = bytearray((path / "dit.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (path / "dit.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="dit.safetensors: SHA-256 does not match the manifest"):
        load_compressed(path)


def test_truncated_file_is_rejected(saved):
    path, _ = saved
    file = path / "lq_proj.safetensors"
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match=f"lq_proj.safetensors: {size - 100} bytes, the manifest says {size}"):
        load_compressed(path, verify=False)


def test_missing_file_and_bad_manifest(saved):
    path, _ = saved
    (path / "prompt.safetensors").unlink()
    with pytest.raises(CheckpointError, match="prompt.safetensors is missing"):
        load_compressed(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json: not valid JSON"):
        load_compressed(path)


def test_library_version_mismatch_is_named(saved):
    path, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["versions"]["torchao"] = "0.16.1"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"written with torchao 0\.16\.1, this environment has torchao 0\.18"):
        load_compressed(path)
    assert load_compressed(path, check_versions=False) is not None


def test_newer_format_is_refused(saved):
    path, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = ckpt.FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="newer than this flashvsr-q reads"):
        load_compressed(path)


def test_never_overwrites_and_leaves_nothing_half_written(tmp_path, saved, monkeypatch):
    path, _ = saved
    model, recipe, plan, _ = quantized("int8-weight-only")
    with pytest.raises(CheckpointError, match="already exists; refusing to overwrite"):
        save_compressed(model, path, recipe, plan)
    calls = []

    def failing_write(file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(file, *args, **kwargs)

    real_write = ckpt.write_safetensors
    monkeypatch.setattr(ckpt, "write_safetensors", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, tmp_path / "new", recipe, plan)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    save_compressed(model, path, recipe, plan, overwrite=True)
    assert load_compressed(path) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_other_dtype_relabels_quantized_weights(saved):
    path, out = saved
    model = load_compressed(path, dtype=torch.float32)
    assert model.dtype == torch.float32
    assert sqnr(out, dit_output(model)) > 30


def test_device_bound_packing_is_checked(tmp_path):
    model, recipe, plan, _ = quantized("int4-weight-only")
    save_compressed(model, tmp_path / "q", recipe, plan)
    with pytest.raises(CheckpointError, match="int4_weight_only weights are packed for cpu, cannot load them on cuda"):
        load_compressed(tmp_path / "q", device="cuda")


def test_streamed_official_quantization_equals_in_memory(tmp_path):
    save_official(random_model("test"), tmp_path / "official")
    recipe = load_recipe("int8-weight-only")
    streamed, plan = quantize_official(tmp_path / "official", recipe, dtype=torch.bfloat16)
    in_memory, _, _, _ = quantized("int8-weight-only")
    assert torch.equal(dit_output(streamed), dit_output(in_memory))
    assert all(p.device.type == "cpu" for p in streamed.parameters())
    assert len(plan.quantized) == 60  # 20 DiT block linears, the LQ projection's 3 layers, the decoder's 37 convs


def test_calibration_is_required_and_checked(tmp_path):
    model = bf16_model()
    recipe = load_recipe("w8a8-int8-smoothquant")
    plan = resolve_plan(recipe, model, "cpu")
    with pytest.raises(RecipeError, match="needs calibration statistics: run `flashvsr-q calibrate`"):
        quantize_model(model, plan, None)
    stats = fake_calibration(plan)
    del stats.layers["dit.blocks.1.ffn.2"]
    stats.layers["dit.blocks.0.ffn.0"].smoothing = None
    with pytest.raises(RecipeError, match=r"smoothing factors missing for 2 layer\(s\): dit.blocks.0.ffn.0, "
                                          r"dit.blocks.1.ffn.2"):
        quantize_model(model, plan, stats)
    assert not any(is_quantized(model.get_submodule(f)) for f in plan.quantized)  # nothing changed
    stats = fake_calibration(plan)
    stats.save(tmp_path / "stats.safetensors")
    loaded = CalibrationStats.load(tmp_path / "stats.safetensors")
    assert loaded.fingerprint() == stats.fingerprint() == "feed" * 16
    assert torch.equal(loaded.layers["dit.blocks.0.ffn.2"].smoothing, stats.layers["dit.blocks.0.ffn.2"].smoothing)
    quantize_model(model, plan, loaded)
    assert model.get_submodule("dit.blocks.0.ffn.2").weight.act_pre_scale is not None


def test_quantizing_twice_is_refused():
    model, _, plan, _ = quantized("int8-weight-only")
    with pytest.raises(RecipeError, match="already quantized"):
        quantize_model(model, plan)


def test_atomic_rename_only(tmp_path):
    # the checkpoint folder appears in one rename: no partially written folder is ever visible under its name
    model, recipe, plan, _ = quantized("fp8-storage")
    seen = []
    real_rename = os.rename

    def spy(src, dst):
        seen.append((Path(src).name, Path(dst).name))
        return real_rename(src, dst)

    os.rename = spy
    try:
        save_compressed(model, tmp_path / "fp8", recipe, plan)
    finally:
        os.rename = real_rename
    assert len(seen) == 1 and seen[0][1] == "fp8" and seen[0][0].startswith(".fp8.")


@requires_cuda
@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_recipe_round_trip_on_cuda(name, tmp_path):
    recipe = load_recipe(name)
    reasons = [r.scheme.unavailable("cuda") for r in recipe.rules if r.scheme.unavailable("cuda")]
    if reasons:
        pytest.skip(reasons[0])
    model = bf16_model().cuda()
    reference = dit_output(model)
    plan = resolve_plan(recipe, model, "cuda")
    calibration = fake_calibration(plan) if recipe.needs_calibration else None
    quantize_model(model, plan, calibration)
    out = dit_output(model)
    assert sqnr(reference, out) > DIT_SQNR_FLOOR.get(name, 30)
    save_compressed(model, tmp_path / "q", recipe, plan)
    assert torch.equal(dit_output(load_compressed(tmp_path / "q", device="cuda")), out)
