"""Schemes: registry, JSON round trip, per-layer SQNR floors against the float layer, SmoothQuant exactness."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from helpers import requires_cuda
from quant.quant_helpers import sqnr

from flashvsr_q.errors import BackendUnavailable
from flashvsr_q.quant import SCHEMES, LayerCalibration, get_scheme
from flashvsr_q.quant.schemes import scheme_from_dict

# dB, per layer, random Gaussian weights and activations (torchao's tests use 20 dB for int8 configs)
SQNR_FLOOR = {"int8_weight_only": 40, "w8a8_int8": 33, "w8a8_int8_static": 30, "fp8_weight_only": 28,
              "w8a8_fp8": 25, "bnb_int8": 40, "nf4": 17, "int4_weight_only": 20, "w4a8_int": 18,
              "w8a8_int8_convrot": 36, "w4a8_int8_convrot": 20, "conv_weight_only": 40}
CPU_SCHEMES = [name for name in sorted(SCHEMES) if SCHEMES[name]().unavailable("cpu") is None]


def layer_and_input(seed: int = 0, in_features: int = 256, out_features: int = 512):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features).to(torch.bfloat16)
    x = torch.randn(2, 64, in_features, dtype=torch.bfloat16)
    return linear, x


def calibration_for(x: torch.Tensor, smoothing: torch.Tensor | None = None) -> LayerCalibration:
    return LayerCalibration(x.abs().flatten(0, -2).amax(0).float(), smoothing)


def test_registry_holds_every_scheme_of_the_brief():
    assert set(SQNR_FLOOR) == set(SCHEMES)
    with pytest.raises(ValueError, match="unknown scheme 'int3'; choose one of bnb_int8"):
        get_scheme("int3")


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_json_round_trip(name):
    scheme = SCHEMES[name]()
    data = json.loads(json.dumps(scheme.to_dict()))
    assert scheme_from_dict(data) == scheme
    assert data["name"] == name


@pytest.mark.parametrize("name", CPU_SCHEMES)
def test_sqnr_floor_per_layer(name):
    linear, x = layer_and_input()
    reference = linear(x)
    scheme = SCHEMES[name]()
    calibration = calibration_for(x) if scheme.needs_calibration else None
    quantized = scheme.quantize(linear, calibration)
    out = quantized(x)
    assert out.shape == reference.shape and out.dtype == torch.bfloat16
    assert sqnr(reference, out) > SQNR_FLOOR[name], f"{name}: {sqnr(reference, out):.1f} dB"
    if scheme.library == "torchao":
        assert quantized is linear and type(linear.weight.data) is not torch.Tensor
    else:
        assert type(quantized).__name__ in ("Linear8bitLt", "Linear4bit", "ConvRotLinear", "ConvRotW4A8Linear",
                                            "WeightOnlyLinear")  # conv_weight_only works on any weight


def test_int8_beats_30_db_on_an_official_size_ffn_row_block():
    # 1536 -> 512 slice of an FFN-shaped layer: per-row int8 is far above the 30 dB floor
    linear, x = layer_and_input(1, 1536, 512)
    reference = linear(x)
    assert sqnr(reference, SCHEMES["int8_weight_only"]().quantize(linear)(x)) > 40


def test_static_scheme_needs_statistics():
    linear, x = layer_and_input()
    with pytest.raises(ValueError, match="needs activation statistics"):
        SCHEMES["w8a8_int8_static"]().quantize(linear, None)


@pytest.mark.parametrize("name", ["w8a8_int8", "w8a8_int8_static"])
def test_smoothquant_factors_are_exact_and_help_outlier_channels(name):
    linear, x = layer_and_input(2)
    x[..., :4] *= 40  # a few outlier input channels, as in transformer activations
    reference = linear(x)
    absmax = x.abs().flatten(0, -2).amax(0).float()
    w_absmax = linear.weight.abs().amax(0).float()
    smoothing = (absmax.sqrt() / w_absmax.sqrt()).clamp_min(1e-5)  # alpha = 0.5
    plain_layer, _ = layer_and_input(2)
    plain = SCHEMES[name]().quantize(plain_layer, calibration_for(x))(x)
    smoothed_layer = SCHEMES[name]().quantize(linear, calibration_for(x, smoothing))
    smoothed = smoothed_layer(x)
    assert smoothed_layer.weight.act_pre_scale is not None
    assert sqnr(reference, smoothed) > sqnr(reference, plain) + 3


def test_smoothing_refused_by_schemes_without_it():
    linear, x = layer_and_input()
    with pytest.raises(ValueError, match="does not support SmoothQuant"):
        SCHEMES["fp8_weight_only"]().quantize(linear, calibration_for(x, torch.ones(256)))


def test_require_names_reason_and_nearest():
    with pytest.raises(BackendUnavailable, match="w8a8_fp8 cannot run on cpu: .*nearest scheme that runs here"):
        SCHEMES["w8a8_fp8"]().require("cpu")
    SCHEMES["int8_weight_only"]().require("cpu")


def test_scheme_options_are_validated():
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128"):
        get_scheme("int4_weight_only", group_size=100)
    with pytest.raises(ValueError, match="granularity must be one of"):
        get_scheme("int8_weight_only", granularity="per_block").quantize(layer_and_input()[0])
    assert get_scheme("nf4", blocksize=128).label() == "nf4(blocksize=128)"


@requires_cuda
@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_sqnr_floor_on_cuda(name):
    scheme = SCHEMES[name]()
    if scheme.unavailable("cuda"):
        pytest.skip(scheme.unavailable("cuda"))
    linear, x = layer_and_input()
    linear, x = linear.cuda(), x.cuda()
    reference = linear(x)
    calibration = calibration_for(x) if scheme.needs_calibration else None
    out = scheme.quantize(linear, calibration)(x)
    assert sqnr(reference, out) > SQNR_FLOOR[name]
