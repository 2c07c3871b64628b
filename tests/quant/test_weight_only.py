"""Weight-only int8 / int4 convolutions (LQ projection, TCDecoder): codes, modules, checkpoints, whole-model recipes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import random_lr, random_model
from quant.quant_helpers import sqnr

from flashvsr_q.model import LQProjState
from flashvsr_q.model.lq_proj import CausalConv3d
from flashvsr_q.model.streaming import SeededNoise, run_clip
from flashvsr_q.quant import get_scheme, load_compressed, load_recipe, quantize_model, resolve_plan, save_compressed
from flashvsr_q.quant.export import export_fp8_official, read_fp8_official
from flashvsr_q.quant.weight_only import (
    dequantize_codes,
    float_state_dict,
    is_weight_only,
    pack_int4,
    quantize_codes,
    unpack_int4,
)


def test_int4_packing_round_trips_every_code():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # [3, 32]
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)
    assert torch.equal(unpack_int4(packed), q)
    assert int(packed[0, 0]) == (0x8 | (0x9 << 4))  # -8 in the low nibble, -7 in the high one


@pytest.mark.parametrize(("bits", "group", "floor"), [(8, 0, 40.0), (8, 64, 41.0), (4, 64, 19.0), (4, 16, 21.0)])
def test_codes_error_is_bounded_and_mse_clipping_never_hurts(bits, group, floor):
    w = torch.randn(48, 32, 2, 4, generator=torch.Generator().manual_seed(0))
    errors = {}
    for clip in ("absmax", "mse"):
        codes, scale = quantize_codes(w, bits, group, clip)
        w_hat = dequantize_codes(codes, scale, bits, torch.float32).reshape(w.shape)
        errors[clip] = float((w - w_hat).square().sum())
        if clip == "absmax":  # round to nearest inside the range: half a step at most
            step = scale.repeat_interleave(w[0].numel() // scale.shape[1], dim=1).reshape(w.shape)
            assert bool(((w - w_hat).abs() <= step / 2 + 1e-6).all())
    assert errors["mse"] <= errors["absmax"]
    assert 10 * torch.log10(w.square().sum() / errors["mse"]) > floor


def test_quantized_conv_keeps_its_class_forward_and_cache():
    conv = CausalConv3d(8, 16).to(torch.float32)
    reference = copy.deepcopy(conv)
    quantized = get_scheme("conv_weight_only", bits=4, group_size=32).quantize(conv)
    assert quantized is conv and isinstance(conv, CausalConv3d) and is_weight_only(conv)
    assert "weight" not in dict(conv.named_parameters()) and set(conv.state_dict()) == {"qweight", "weight_scale",
                                                                                          "bias"}
    x, cache = torch.randn(1, 8, 4, 6, 6), torch.randn(1, 8, 2, 6, 6)
    with torch.no_grad():
        reference.weight.copy_(conv.weight)  # the dequantized weight: the same computation, exactly
        assert torch.equal(conv(x, cache), reference(x, cache))
        assert torch.equal(conv(x), reference(x))
    assert get_scheme("conv_weight_only").check_layer(conv) == "already quantized"
    assert "Conv1d/2d/3d only" in get_scheme("conv_weight_only").check_layer(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("recipe", ["int8-weight-only", "nf4"])
def test_whole_model_recipe_round_trips_bit_exactly(recipe, tmp_path):
    model = random_model("test").to(torch.bfloat16)
    reference = copy.deepcopy(model)
    plan = resolve_plan(load_recipe(recipe), model, "cpu")
    quantize_model(model, plan)
    assert is_weight_only(model.lq_proj.conv2) and is_weight_only(model.decoder.decoder[1])
    assert model.lq_proj.conv2.bits == (4 if recipe == "nf4" else 8)
    save_compressed(model, tmp_path / "q", load_recipe(recipe), plan)
    loaded = load_compressed(tmp_path / "q", dtype=torch.bfloat16)
    assert type(loaded.lq_proj.conv2).__name__ == "WeightOnlyCausalConv3d"
    for a, b in ((model.lq_proj.conv2, loaded.lq_proj.conv2), (model.decoder.decoder[26], loaded.decoder.decoder[26])):
        assert torch.equal(a.weight, b.weight) and a.weight.dtype == torch.bfloat16

    lr = random_lr(frames=25)
    outputs = {}
    for name, m in (("float", reference), ("quantized", model), ("loaded", loaded)):
        noise = SeededNoise(0, m.config.latent_channels, 16, 16)
        outputs[name] = run_clip(m, lr.to(torch.bfloat16), noise)[0].float()
    assert torch.equal(outputs["quantized"], outputs["loaded"])
    assert sqnr(outputs["float"], outputs["quantized"]) > 20
    # the LQ projection alone, streamed with its cache: int8 close, int4 reasonable
    state_ref, state_q = LQProjState(), LQProjState()
    clip = lr[:, :, :1].to(torch.bfloat16)
    reference.lq_proj(clip, state_ref), model.lq_proj(clip, state_q)
    clip = lr[:, :, 1:5].to(torch.bfloat16)
    floor = 18 if recipe == "nf4" else 30
    assert sqnr(reference.lq_proj(clip, state_ref), model.lq_proj(clip, state_q)) > floor


def test_float_formats_get_dequantized_parts(tmp_path):
    model = random_model("test").to(torch.bfloat16)
    quantize_model(model, resolve_plan(load_recipe("int8-weight-only"), model, "cpu"))
    state = float_state_dict(model.lq_proj)
    assert set(state) == set(random_model("test").lq_proj.state_dict())
    assert all(type(v) is torch.Tensor for v in state.values())
    assert torch.equal(state["conv2.weight"], model.lq_proj.conv2.weight)
    export_fp8_official(model, tmp_path / "fp8")
    back = read_fp8_official(tmp_path / "fp8", dtype=torch.bfloat16)
    assert torch.equal(back.lq_proj.conv2.weight, model.lq_proj.conv2.weight)
    assert torch.equal(back.decoder.decoder[1].weight, model.decoder.decoder[1].weight)


def test_conv_forward_matches_functional_conv_in_bf16():
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(torch.bfloat16)
    get_scheme("conv_weight_only").quantize(conv)
    x = torch.randn(1, 16, 5, 5, dtype=torch.bfloat16)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
