"""ConvRot: the regular Hadamard, the rotated int8 linear against float (rounding bound) and against comfy-kitchen
(bit for bit), its advantage on activations with outlier channels, calibrated clipping, the schemes and recipes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from helpers import random_model, requires_cuda
from quant.quant_helpers import dit_output, sqnr

from flashvsr_q.errors import BackendUnavailable
from flashvsr_q.quant import (
    LayerCalibration,
    RecipeError,
    get_scheme,
    load_compressed,
    load_recipe,
    parse_recipe,
    quantize_model,
    resolve_plan,
    save_compressed,
)
from flashvsr_q.quant.convrot import (
    ConvRotLinear,
    ConvRotW4A8Linear,
    group_for,
    hadamard,
    int8_linear_reference,
    mse_row_scales,
    quantize_weight,
    rotate,
    rotated_channel_weights,
)

ck = pytest.importorskip("comfy_kitchen")


def outlier_input(k: int = 1024, seed: int = 0) -> torch.Tensor:
    """Gaussian tokens with four channels 60x larger on every token (the channel outliers of DiT activations)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 64, k, generator=g)
    x[..., [5, 300, 700, 901]] *= 60
    return x


# ---------------------------------------------------------------------------------------------------------------
# the rotation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4, 16, 64, 256])
def test_hadamard_is_regular_symmetric_and_orthogonal(size):
    h = hadamard(size, torch.float64)
    assert torch.equal(h, h.T)
    assert torch.allclose(h @ h, torch.eye(size, dtype=torch.float64), atol=1e-12)
    assert torch.all(h.abs() == 1 / size**0.5)
    row_sums = h.sum(dim=1)
    assert torch.allclose(row_sums, row_sums[0].expand(size))  # regular: every row sums to the same value
    assert not torch.all(h[:, 0] == h[0, 0])  # not Sylvester's all-ones first column
    if size == 16:
        h4 = hadamard(4, torch.float64)
        assert torch.allclose(h, torch.kron(h4, h4))


def test_hadamard_is_comfy_kitchens():
    from comfy_kitchen.tensor.int8_utils import _build_hadamard

    assert torch.equal(hadamard(256), _build_hadamard(256, "cpu", torch.float32))


@pytest.mark.parametrize("size", [2, 8, 32, 128, 100])
def test_group_must_be_a_power_of_4(size):
    with pytest.raises(ValueError, match="power of 4"):
        hadamard(size)


def test_group_for_takes_the_largest_dividing_power_of_4():
    assert group_for(1536) == 256 and group_for(8960) == 256  # every FlashVSR DiT Linear
    assert group_for(384) == 64 and group_for(64) == 64 and group_for(24) == 4 and group_for(6) == 0
    assert group_for(1024, 1024) == 1024


def test_rotation_is_its_own_inverse_and_keeps_products():
    x, w = torch.randn(5, 512, dtype=torch.float64), torch.randn(7, 512, dtype=torch.float64)
    assert torch.allclose(rotate(rotate(x, 256), 256), x, atol=1e-12)
    assert torch.allclose(rotate(x, 256) @ rotate(w, 256).T, x @ w.T, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# the int8 linear
# ---------------------------------------------------------------------------------------------------------------


def test_weights_and_outputs_are_comfy_kitchens_bit_for_bit():
    torch.manual_seed(0)
    linear = nn.Linear(512, 96)
    q, scale = quantize_weight(linear.weight, 256)
    ck_q, ck_scale = ck.backends.eager.quantization.quantize_int8_convrot_weight(linear.weight.detach(), 256)
    assert torch.equal(q, ck_q) and torch.equal(scale, ck_scale)
    module = ConvRotLinear.from_linear(linear.to(torch.bfloat16), 256)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(3, 7, 512).to(dtype)
        bias = module.bias.to(dtype)
        ours = int8_linear_reference(x, module.weight, module.weight_scale, bias, 256)
        theirs = ck.int8_linear(x, module.weight, module.weight_scale, bias, dtype, convrot=True, convrot_groupsize=256)
        assert torch.equal(ours, theirs)


def test_rotated_int8_linear_is_within_the_rounding_bound():
    torch.manual_seed(1)
    linear = nn.Linear(768, 128)
    module = ConvRotLinear.from_linear(linear, 256)
    x = torch.randn(2, 40, 768)
    y = module(x)
    # y - x W^T = (x_r - x^_r) w_r + x^_r (w_r - w^_r): each factor is off by at most half its scale step
    xr, wr = rotate(x.reshape(-1, 768), 256), rotate(linear.weight.detach(), 256)
    s_x = xr.abs().amax(dim=1, keepdim=True) / 127
    s_w = module.weight_scale.reshape(1, -1)
    x_hat = (xr / s_x).round() * s_x
    bound = s_x / 2 * wr.abs().sum(dim=1).reshape(1, -1) + s_w / 2 * x_hat.abs().sum(dim=1, keepdim=True)
    err = (y - linear(x)).reshape(-1, 128).abs()
    assert torch.all(err <= bound * 1.0001 + 1e-5)
    assert err.max() > 0.01 * bound.max()  # the bound is not vacuous for this check


def test_convrot_beats_plain_w8a8_on_outlier_channels():
    torch.manual_seed(0)
    linear = nn.Linear(1024, 256)
    x = outlier_input()
    reference = linear(x)
    rotated = sqnr(reference, get_scheme("w8a8_int8_convrot").quantize(copy.deepcopy(linear))(x))
    per_row = sqnr(reference, get_scheme("w8a8_int8").quantize(copy.deepcopy(linear))(x))
    per_tensor = sqnr(reference, get_scheme("w8a8_int8", granularity="per_tensor").quantize(copy.deepcopy(linear))(x))
    # per-token int8 spends its range on the outlier channels; the rotation spreads them over their group
    assert rotated > per_row + 10 and per_row > per_tensor
    assert rotated > 38


def test_mse_clipping_lowers_the_weighted_error_and_helps_heavy_tailed_weights():
    torch.manual_seed(0)
    weight = torch.distributions.StudentT(3).sample((256, 1024)) * 0.02
    x = outlier_input()
    absmax = x.abs().flatten(0, -2).amax(0)
    w_rot = rotate(weight, 256)
    c = rotated_channel_weights(absmax, 256)
    assert torch.allclose(c[:256], absmax[:256].pow(2).mean().expand(256))

    def weighted_error(scale):
        return ((w_rot - scale * (w_rot / scale).round().clamp(-128, 127)).square() * c.float()).sum(dim=1)

    absmax_scale = w_rot.abs().amax(dim=1, keepdim=True) / 127
    mse_scale = mse_row_scales(w_rot, c)
    assert torch.all(weighted_error(mse_scale) <= weighted_error(absmax_scale))
    assert weighted_error(mse_scale).sum() < 0.99 * weighted_error(absmax_scale).sum()
    assert torch.all(mse_scale <= absmax_scale) and torch.any(mse_scale < absmax_scale)

    linear = nn.Linear(1024, 256)
    linear.weight.data = weight
    reference = linear(x)
    out = {clip: sqnr(reference, get_scheme("w8a8_int8_convrot", clip=clip).quantize(
        copy.deepcopy(linear), LayerCalibration(absmax))(x)) for clip in ("absmax", "mse", "mse_calibrated")}
    assert out["mse_calibrated"] >= out["mse"] >= out["absmax"]


# ---------------------------------------------------------------------------------------------------------------
# schemes, recipes, checkpoints
# ---------------------------------------------------------------------------------------------------------------


def test_scheme_options_and_device_checks():
    scheme = get_scheme("w8a8_int8_convrot", clip="mse_calibrated")
    assert scheme.needs_calibration and not get_scheme("w8a8_int8_convrot").needs_calibration
    assert scheme.label() == "w8a8_int8_convrot(clip=mse_calibrated)"
    for bad in ({"group_size": 128}, {"clip": "percentile"}):
        with pytest.raises(ValueError):
            get_scheme("w8a8_int8_convrot", **bad)
    assert "no int8 matmul for mps" in get_scheme("w8a8_int8_convrot").unavailable("mps")
    assert "no W4A8 kernel for mps" in get_scheme("w4a8_int8_convrot").unavailable("mps")
    with pytest.raises(BackendUnavailable, match="cannot run on mps"):
        get_scheme("w4a8_int8_convrot").require("mps")
    assert "not a multiple of 16" in get_scheme("w8a8_int8_convrot").check_layer(nn.Linear(24, 8))


def test_w4a8_convrot_runs_on_comfy_kitchen():
    torch.manual_seed(0)
    linear = nn.Linear(1024, 256).to(torch.bfloat16)
    x = outlier_input().to(torch.bfloat16)
    module = get_scheme("w4a8_int8_convrot").quantize(copy.deepcopy(linear))
    assert isinstance(module, ConvRotW4A8Linear) and module.qdata.shape == (256, 512)
    assert sqnr(linear(x), module(x)) > 18


def test_calibrated_recipe_needs_statistics():
    model = random_model("test").to(torch.bfloat16)
    recipe = load_recipe("w8a8-int8-convrot-calibrated")
    plan = resolve_plan(recipe, model, "cpu")
    with pytest.raises(RecipeError, match="needs calibration statistics"):
        quantize_model(model, plan, None)
    text = recipe.text.replace("calibration: required", "calibration: none")
    with pytest.raises(RecipeError, match="needs activation statistics: set calibration: required"):
        parse_recipe(text)


def test_recipe_uses_the_largest_group_each_layer_allows():
    model = random_model("small").to(torch.bfloat16)
    reference = dit_output(model)
    quantize_model(model, resolve_plan(load_recipe("w8a8-int8-convrot"), model, "cpu"))
    assert model.dit.blocks[0].ffn[2].group == 64 and model.dit.blocks[0].self_attn.q.group == 64  # K 384 / 128
    assert sqnr(reference, dit_output(model)) > 35


def test_w4a8_convrot_checkpoint_round_trip(tmp_path):
    text = load_recipe("w8a8-int8-convrot").text.replace("w8a8_int8_convrot", "w4a8_int8_convrot").replace(
        "clip: absmax", "w4_group_size: 16")
    recipe = parse_recipe(text)
    model = random_model("test").to(torch.bfloat16)
    plan = resolve_plan(recipe, model, "cpu")
    quantize_model(model, plan)
    out = dit_output(model)
    save_compressed(model, tmp_path / "q", recipe, plan)
    loaded = load_compressed(tmp_path / "q")
    assert isinstance(loaded.dit.blocks[1].ffn[0], ConvRotW4A8Linear)
    assert loaded.dit.blocks[1].ffn[0].s_rel.dtype == torch.float8_e4m3fn
    assert torch.equal(dit_output(loaded), out)


@requires_cuda
def test_cuda_kernels_match_the_reference_within_rounding():
    # comfy-kitchen's fused rotate+quantize (group 256) and cuBLASLt int8 GEMM against the PyTorch path
    torch.manual_seed(0)
    module = ConvRotLinear.from_linear(nn.Linear(1536, 512).to(torch.bfloat16), 256).cuda()
    x = outlier_input(1536).to("cuda", torch.bfloat16)
    fast = module(x)
    reference = int8_linear_reference(x, module.weight, module.weight_scale, module.bias, 256)
    assert fast.dtype == torch.bfloat16 and sqnr(reference, fast) > 40
