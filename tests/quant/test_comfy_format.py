"""ComfyUI-native DiT files: keys, sidecars, dtypes, shapes and the float set against the shared notes (§1.3, §1.6,
§1.7); every Linear read back through comfy-kitchen's reference equals ours within the format's rounding; export ->
import runs like the checkpoint it came from; foreign and damaged files are refused with one line."""

from __future__ import annotations

import copy
import json
import struct

import pytest
import torch
import torch.nn.functional as F
from helpers import random_model
from quant.quant_helpers import dit_output, sqnr

from flashvsr_q.model import FlashVSR, FlashVSRConfig
from flashvsr_q.quant import CalibrationStats, LayerCalibration, load_recipe, quantize_model, resolve_plan
from flashvsr_q.quant.comfy import (
    PREFIX,
    QUANTIZED,
    ComfyFormatError,
    apply_comfy,
    from_comfy,
    read_comfy,
    read_sidecar,
    sidecar,
    to_comfy,
    write_comfy,
)

ck = pytest.importorskip("comfy_kitchen")
CONVROT = {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 64}  # the test model's K: 64, 128
INT8 = {"format": "int8_tensorwise", "full_precision_matrix_mult": True}


@pytest.fixture(scope="module")
def model():
    return random_model("test").to(torch.bfloat16)


def calibration(model: FlashVSR, big: str = "dit.blocks.0.ffn.2") -> CalibrationStats:
    """Per-channel abs-max; one layer's activations exceed the e4m3 range (448)."""
    g = torch.Generator().manual_seed(0)
    layers = {}
    for name, m in model.dit.named_modules():
        if QUANTIZED.fullmatch(name):
            absmax = torch.rand(m.in_features, generator=g) * 10 + 1
            if f"dit.{name}" == big:
                absmax[3] = 1000.0
            layers[f"dit.{name}"] = LayerCalibration(absmax)
    return CalibrationStats(layers)


def header(path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def quantized_model(model, recipe: str) -> FlashVSR:
    q = copy.deepcopy(model)
    quantize_model(q, resolve_plan(load_recipe(recipe), q, "cpu"))
    return q


# ---------------------------------------------------------------------------------------------------------------
# the written file, against the notes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["int8-convrot", "int8", "fp8", "bf16"])
@pytest.mark.parametrize("prefix", [False, True])
def test_file_layout_matches_the_notes(model, fmt, prefix, tmp_path):
    stats = calibration(model) if fmt == "fp8" else None
    path = write_comfy(tmp_path / "dit.safetensors", to_comfy(model, fmt, prefix, calibration=stats))
    head = header(path)
    assert "__metadata__" not in head  # sidecars only, no header metadata
    keys = {k.removeprefix(PREFIX) for k in head}
    assert all(k.startswith(PREFIX) for k in head) == prefix
    official = set(model.dit.state_dict())
    linears = {k.rpartition(".")[0] for k in official if QUANTIZED.fullmatch(k.rpartition(".")[0])}
    assert len(linears) == 20  # 2 blocks x (4 self + 4 cross + 2 ffn)
    extra = {"int8-convrot": {"weight_scale", "comfy_quant"}, "int8": {"weight_scale", "comfy_quant"},
             "fp8": {"weight_scale", "comfy_quant"}, "bf16": set()}[fmt]
    optional = {"dit.blocks.0.ffn.2".removeprefix("dit.") + ".input_scale"} if fmt == "fp8" else set()
    assert keys == official | {f"{n}.{leaf}" for n in linears for leaf in extra} | optional
    dtype_of = lambda k: head[(PREFIX if prefix else "") + k]["dtype"]  # noqa: E731
    shape_of = lambda k: head[(PREFIX if prefix else "") + k]["shape"]  # noqa: E731
    for key in official:
        owner = key.rpartition(".")[0]
        if owner in linears and key.endswith(".weight") and fmt != "bf16":
            continue
        assert dtype_of(key) == "BF16", key  # the float set: embeddings, head, modulations, norms, biases
    tensors = read_comfy(path, model.config)
    for name in linears:
        n, k = model.dit.get_submodule(name).weight.shape
        if fmt in ("int8-convrot", "int8"):
            assert dtype_of(f"{name}.weight") == "I8" and shape_of(f"{name}.weight") == [n, k]
            assert dtype_of(f"{name}.weight_scale") == "F32" and shape_of(f"{name}.weight_scale") == [n, 1]
            assert dtype_of(f"{name}.comfy_quant") == "U8"
            assert tensors.layers[name].conf == (CONVROT if fmt == "int8-convrot" else INT8)
        elif fmt == "fp8":
            assert dtype_of(f"{name}.weight") == "F8_E4M3" and shape_of(f"{name}.weight") == [n, k]
            assert dtype_of(f"{name}.weight_scale") == "F32" and shape_of(f"{name}.weight_scale") == []
            assert tensors.layers[name].conf == {"format": "float8_e4m3fn"}
    if fmt == "fp8":
        assert dtype_of("blocks.0.ffn.2.input_scale") == "F32" and shape_of("blocks.0.ffn.2.input_scale") == []
        assert float(tensors.layers["blocks.0.ffn.2"].input_scale) == pytest.approx(1000 / 448)
    assert tensors.format == fmt and tensors.prefixed == prefix
    for kept in ("patch_embedding.weight", "text_embedding.0.weight", "time_projection.1.weight", "head.head.weight",
                 "head.modulation", "blocks.0.modulation", "blocks.0.norm3.weight"):
        assert kept in tensors.floats


def test_sidecar_is_utf8_json_bytes():
    t = sidecar(CONVROT)
    assert t.dtype == torch.uint8 and t.ndim == 1
    assert json.loads(t.numpy().tobytes()) == CONVROT
    assert read_sidecar(sidecar({"format": "int8_tensorwise", "params": {"convrot": True}}))["convrot"] is True


def test_fp8_needs_calibration_and_unknown_format_is_refused(model):
    with pytest.raises(ComfyFormatError, match="comfy fp8 needs calibration statistics"):
        to_comfy(model, "fp8")
    with pytest.raises(ComfyFormatError, match="unknown ComfyUI export format 'int4'"):
        to_comfy(model, "int4")
    with pytest.raises(ComfyFormatError, match="already quantized .*ConvRotLinear"):
        to_comfy(quantized_model(model, "w8a8-int8-convrot"), "fp8", calibration=calibration(model))


# ---------------------------------------------------------------------------------------------------------------
# round trip through comfy-kitchen's reference
# ---------------------------------------------------------------------------------------------------------------


def test_int8_convrot_layers_equal_comfy_kitchen(model, tmp_path):
    ours = quantized_model(model, "w8a8-int8-convrot")
    file = read_comfy(write_comfy(tmp_path / "d.safetensors", to_comfy(ours, "int8-convrot")), model.config)
    g = torch.Generator().manual_seed(1)
    for name, layer in file.layers.items():
        module = ours.dit.get_submodule(name)
        x = torch.randn(2, 9, module.in_features, generator=g).to(torch.bfloat16)
        theirs = ck.int8_linear(x, layer.weight, layer.weight_scale, layer.bias, torch.bfloat16, convrot=True,
                                convrot_groupsize=layer.group)
        assert torch.equal(module(x), theirs), name  # the same int8 tensors, the same arithmetic
        dequantized = ck.backends.eager.quantization.dequantize_int8_convrot_weight(layer.weight, layer.weight_scale,
                                                                                    layer.group)
        assert torch.allclose(dequantized, module.dequantized_weight(), atol=1e-6)


def test_int8_weight_only_layers_equal_comfy_kitchen(model, tmp_path):
    ours = quantized_model(model, "int8-weight-only")
    file = read_comfy(write_comfy(tmp_path / "d.safetensors", to_comfy(ours, "int8")), model.config)
    g = torch.Generator().manual_seed(2)
    for name, layer in file.layers.items():
        module = ours.dit.get_submodule(name)
        weight = ck.dequantize_int8_simple(layer.weight, layer.weight_scale)  # full_precision_matrix_mult
        assert torch.equal(layer.weight, module.weight.qdata)  # torchao's int8 copied, not requantized
        assert torch.equal(weight.to(torch.bfloat16), module.weight.dequantize())
        x = torch.randn(2, 9, module.in_features, generator=g).to(torch.bfloat16)
        theirs = F.linear(x, weight.to(torch.bfloat16), layer.bias)
        assert sqnr(theirs, module(x)) > 45, name  # bf16 matmul rounding only


def test_fp8_layers_equal_comfy_kitchen(model, tmp_path):
    stats = calibration(model)
    file = read_comfy(write_comfy(tmp_path / "d.safetensors", to_comfy(model, "fp8", calibration=stats)),
                      model.config)
    imported = apply_comfy(copy.deepcopy(model.dit), file)
    g = torch.Generator().manual_seed(3)
    for name, layer in file.layers.items():
        float_layer = model.dit.get_submodule(name)
        x = torch.randn(2, 9, float_layer.in_features, generator=g).to(torch.bfloat16) * 20
        scale = layer.input_scale if layer.input_scale is not None else torch.tensor(1.0)
        x8 = ck.backends.eager.quantization.quantize_per_tensor_fp8(x.float(), scale)
        w = ck.backends.eager.quantization.dequantize_per_tensor_fp8(layer.weight, layer.weight_scale, torch.float32)
        theirs = (F.linear(x8.float(), w) * scale).to(torch.bfloat16) + layer.bias
        ours = imported.get_submodule(name)(x)
        assert sqnr(theirs, ours) > 45, name  # the order of the two scale multiplications differs
        assert sqnr(float_layer(x), ours) > 20, name


def test_bf16_is_a_same_keys_resave(model):
    tensors = to_comfy(model, "bf16")
    state = model.dit.state_dict()
    assert set(tensors) == set(state)
    assert all(torch.equal(tensors[k], state[k].to(torch.bfloat16)) for k in state)


def test_export_then_import_runs_like_the_checkpoint(model, tmp_path):
    ours = quantized_model(model, "w8a8-int8-convrot")
    path = write_comfy(tmp_path / "dit.safetensors", to_comfy(ours, "int8-convrot", prefix=True))
    file = read_comfy(path, model.config)
    assert "int8-convrot" in file.describe() and "20 quantized Linears" in file.describe()
    fresh = copy.deepcopy(model)
    with torch.device("meta"):
        fresh.dit = FlashVSR(model.config).dit
    apply_comfy(fresh.dit, file, torch.bfloat16, "cpu")
    fresh.dit._rope_tables = None
    assert torch.equal(dit_output(fresh), dit_output(ours))
    assert sqnr(dit_output(model), dit_output(fresh)) > 35


# ---------------------------------------------------------------------------------------------------------------
# foreign and damaged files
# ---------------------------------------------------------------------------------------------------------------


def meta_dit(**changes) -> dict[str, torch.Tensor]:
    """The float DiT state dict of an architecture, on meta (shapes only)."""
    with torch.device("meta"):
        return dict(FlashVSR(FlashVSRConfig(name="x", **changes)).dit.state_dict())


@pytest.mark.parametrize("case, message", [
    ("wan14b", r"a Wan-style DiT with dim 5120, ffn 13824, 40 blocks; FlashVSR's DiT has dim 1536"),
    ("i2v", r"a Wan I2V/VACE DiT"),
    ("lq_merged", r"LQ projection merged in \(a FlashVSR\+-style single file\)"),
    ("unknown_format", r"blocks.0.ffn.0.comfy_quant names unknown format 'int3_magic'"),
    ("nvfp4", r"uses ComfyUI format nvfp4, which flashvsr-q does not run"),
    ("secourses", r"SECourses' own dialect"),
    ("scaled_fp8", r"legacy scaled_fp8 file"),
    ("sidecar_on_conv", r"patch_embedding carries a comfy_quant sidecar but is not a Linear"),
    ("mixed_prefix", r"some keys carry model.diffusion_model."),
    ("lost_sidecar", r"blocks.0.ffn.0.weight is torch.int8 .* without its comfy_quant sidecar"),
    ("vae", r"not a DiT"),
])
def test_foreign_files_are_refused_with_one_line(model, case, message):
    tensors = to_comfy(model, "int8-convrot")
    config = model.config
    if case == "wan14b":
        tensors, config = meta_dit(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), None
    elif case == "i2v":
        tensors["img_emb.proj.1.weight"] = torch.zeros(4, 4)
    elif case == "lq_merged":
        tensors["LQ_proj_in.conv1.weight"] = torch.zeros(4, 4)
    elif case == "unknown_format":
        tensors["blocks.0.ffn.0.comfy_quant"] = sidecar({"format": "int3_magic"})
    elif case == "nvfp4":
        tensors["blocks.0.ffn.0.comfy_quant"] = sidecar({"format": "nvfp4"})
    elif case == "secourses":
        tensors["blocks.0.ffn.0.int8_convrot_groupsize"] = torch.tensor([256], dtype=torch.int32)
    elif case == "scaled_fp8":
        tensors["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    elif case == "sidecar_on_conv":
        tensors["patch_embedding.comfy_quant"] = sidecar({"format": "int8_tensorwise"})
    elif case == "mixed_prefix":
        tensors = {(PREFIX + k if i % 2 else k): v for i, (k, v) in enumerate(tensors.items())}
    elif case == "lost_sidecar":
        del tensors["blocks.0.ffn.0.comfy_quant"]
    elif case == "vae":
        tensors = {"decoder.conv1.weight": torch.zeros(4, 4), "encoder.conv1.weight": torch.zeros(4, 4)}
    with pytest.raises(ComfyFormatError, match=message) as info:
        from_comfy(tensors, config=config, source="x.safetensors")
    assert "\n" not in str(info.value)


def test_official_size_is_the_default_architecture():
    tensors = meta_dit(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
    file = from_comfy(tensors)  # the float official layout (a Wan2.1-T2V-1.3B DiT has the same structure)
    assert file.format == "fp32" and file.num_layers == 30 and not file.layers


def test_truncated_and_missing_files_are_refused(model, tmp_path):
    path = write_comfy(tmp_path / "dit.safetensors", to_comfy(model, "int8-convrot"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ComfyFormatError, match=r"not a readable safetensors file \(.*truncated\?\)"):
        read_comfy(path, model.config)
    with pytest.raises(ComfyFormatError, match="does not exist"):
        read_comfy(tmp_path / "none.safetensors")
    (tmp_path / "gguf.safetensors").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ComfyFormatError, match="not a readable safetensors file"):
        read_comfy(tmp_path / "gguf.safetensors")


def test_the_written_file_is_atomic(model, tmp_path):
    write_comfy(tmp_path / "dit.safetensors", to_comfy(model, "bf16"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dit.safetensors"]
