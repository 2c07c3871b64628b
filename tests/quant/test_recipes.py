"""Recipes: every shipped YAML validates and resolves; malformed or mismatched recipes fail with the reason."""

from __future__ import annotations

import pytest
import torch

from flashvsr_q.errors import BackendUnavailable, FlashVSRError
from flashvsr_q.model import FlashVSR, get_config
from flashvsr_q.quant import SCHEMES, RecipeError, load_recipe, model_layers, parse_recipe, resolve_plan
from flashvsr_q.quant.recipes import compact_names, shipped_recipes
from flashvsr_q.shipped import recipes_dir

SHIPPED = sorted(shipped_recipes())
KEEP = r"""
keep:
  - 'prompt'
  - 'dit\.patch_embedding'
  - 'dit\.(text|time)_embedding\.\d+'
  - 'dit\.time_projection\.\d+'
  - 'dit\.blocks\.\d+\.modulation'
  - 'dit\.blocks\.\d+\.(self_attn|cross_attn)\.norm_(q|k)'
  - 'dit\.blocks\.\d+\.norm3'
  - 'dit\.head\.(head|modulation)'
  - 'lq_proj\..*'
  - 'decoder\..*'
"""
HEADER = "kind: quantization\nname: t\ndescription: test\ngpu: any\nexpected_memory: {dit_gb: 1}\n"


def meta_model(name: str = "test") -> FlashVSR:
    with torch.device("meta"):
        return FlashVSR(get_config(name))


def recipe_text(rules: str, keep: str = KEEP, extra: str = "") -> str:
    return HEADER + extra + keep + "rules:\n" + rules


BLOCK_RULES = ("  - {pattern: 'dit\\.blocks\\.\\d+\\.(self_attn|cross_attn)\\.(q|k|v|o)', scheme: int8_weight_only}\n"
               "  - {pattern: 'dit\\.blocks\\.\\d+\\.ffn\\.(0|2)', scheme: int8_weight_only}\n")


def test_the_expected_recipes_ship():
    expected = {"int8-weight-only", "w8a8-int8", "w8a8-int8-smoothquant", "fp8-storage", "w8a8-fp8", "nf4", "w4a8",
                "int4-weight-only"}
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("config", ["test", "flashvsr-v1.1"])
def test_shipped_recipe_resolves(name, config):
    recipe = load_recipe(name)
    assert recipe.gpu and recipe.description and "dit_gb" in recipe.expected_memory
    assert recipe.expected_memory["dit_gb"] is None or 0 < recipe.expected_memory["dit_gb"] < 2.84
    model = meta_model(config)
    reasons = {s.unavailable("cpu") for r in recipe.rules if (s := r.scheme).unavailable("cpu")}
    if reasons:  # GPU-only: refused on CPU, naming the recipes that run there
        with pytest.raises(BackendUnavailable, match="recipes that run on cpu: .*int8-weight-only"):
            resolve_plan(recipe, model, "cpu")
        return
    plan = resolve_plan(recipe, model, "cpu")
    layers = model_layers(model)
    assert list(plan.layers) == list(layers)
    # the DiT block linears are quantized, and the LQ projection and TCDecoder too unless the recipe says why not;
    # the keep list covers every other layer
    linears = {f for f in layers if ".blocks." in f and f.rsplit(".", 2)[-2:][0] in ("self_attn", "cross_attn", "ffn")
               and layers[f][0] == "Linear"}
    assert len(linears) == 10 * model.config.num_layers
    whole = {f for f in layers if f.startswith(("lq_proj.conv", "lq_proj.linear", "decoder."))}
    outside = set(plan.quantized) - linears
    assert linears <= set(plan.quantized)
    assert outside == whole or (outside == whole - {"lq_proj.linear_layers.0"} and "kept bf16" in recipe.text) or (
        not outside and "kept float on purpose" in recipe.text), name
    for fqn in ("prompt", "dit.patch_embedding", "dit.time_projection.1", "dit.blocks.0.modulation",
                "dit.head.head", "dit.head.modulation", "lq_proj.norm1"):
        assert plan.layers[fqn].scheme is None
    assert plan.recipe.needs_calibration == (recipe.calibration == "required")


def test_gpu_only_recipe_names_the_recipes_that_run_on_cpu_and_the_gpu_flag():
    with pytest.raises(BackendUnavailable) as err:
        resolve_plan(load_recipe("w8a8-fp8"), meta_model(), "cpu")
    message = str(err.value)
    assert message.startswith("recipe w8a8-fp8 cannot run on cpu: w8a8_fp8:") and "8.9" in message
    assert "pass --device cuda" in message and "\n" not in message
    here = message.split("recipes that run on cpu: ")[1].split(", ")
    assert "w8a8-int8" in here and "int8-weight-only" in here and "w8a8-fp8" not in here
    model = meta_model()
    for name in here:  # every recipe it names does resolve on the CPU
        resolve_plan(load_recipe(name), model, "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_schemes_without_cuda():
    for name in ("w8a8_fp8", "w8a8_int8", "int4_weight_only"):
        assert "no CUDA device" in SCHEMES[name]().unavailable("cuda")
    assert SCHEMES["int4_weight_only"]().unavailable("mps") == "no int4 kernel for mps"


def test_plan_prints_compact_groups_before_any_change():
    model = meta_model("flashvsr-v1.1")
    text = resolve_plan(load_recipe("int8-weight-only"), model, "cpu").format()
    assert "dit.blocks.{0-29}.{self_attn,cross_attn}.{q,k,v,o}" in text
    assert "dit.blocks.{0-29}.ffn.{0,2}" in text
    assert "340 quantized" in text and "int8_weight_only" in text and "conv_weight_only" in text and "keep" in text
    assert all(p.device.type == "meta" for p in model.parameters())


def test_compact_names():
    names = [f"dit.blocks.{i}.ffn.{j}" for i in range(30) for j in (0, 2)] + ["dit.blocks.31.ffn.0"]
    assert compact_names(names) == ["dit.blocks.{0-29,31}.ffn.0", "dit.blocks.{0-29}.ffn.2"]
    assert compact_names(["a.q", "a.k", "b"]) == ["a.{q,k}", "b"]


FFN = r"dit\.blocks\.\d+\.ffn\.(0|2)"


@pytest.mark.parametrize(("rules", "extra", "keep", "fragments"), [
    (f"  - {{pattern: '{FFN}', scheme: int9}}\n", "", KEEP,
     [f"rule 1 ({FFN}): unknown scheme 'int9'; choose one of bnb_int8, conv_weight_only, fp8_weight_only"]),
    (BLOCK_RULES + "  - {pattern: 'dit\\.blocks\\.\\d+\\.ffn\\.1', scheme: nf4}\n", "", KEEP,
     [r"rule 3 pattern 'dit\.blocks\.\d+\.ffn\.1' matches no layer of this model"]),
    (BLOCK_RULES + "  - {pattern: 'dit\\.blocks\\.0\\.ffn\\.0', scheme: nf4}\n", "", KEEP,
     ["rule 3 pattern", "only matches layers already claimed by earlier entries (e.g. dit.blocks.0.ffn.0 by"]),
    (BLOCK_RULES, "", KEEP.replace("  - 'dit\\.blocks\\.\\d+\\.norm3'\n", ""),
     ["2 layer(s) neither kept nor quantized: dit.blocks.0.norm3, dit.blocks.1.norm3"]),
    (BLOCK_RULES, "", KEEP + "  - 'dit\\.nothing'\n", [r"keep pattern 'dit\.nothing' matches no layer"]),
    ("  - {pattern: 'dit\\.patch_embedding', scheme: int8_weight_only}\n" + BLOCK_RULES, "",
     KEEP.replace("  - 'dit\\.patch_embedding'\n", ""),
     ["rule 1 puts dit.patch_embedding (Conv3d [64, 16, 1, 2, 2]) under int8_weight_only", "nn.Linear only"]),
    ("  - {pattern: 'dit\\.blocks\\.\\d+\\.modulation', scheme: nf4}\n" + BLOCK_RULES, "",
     KEEP.replace("  - 'dit\\.blocks\\.\\d+\\.modulation'\n", ""),
     ["dit.blocks.0.modulation (Parameter [1, 6, 64]) under nf4", "nn.Linear only"]),
    (f"  - {{pattern: '{FFN}', scheme: nf4, options: {{bits: 3}}}}\n", "", KEEP,
     ["scheme 'nf4' has no option bits; options: blocksize, double_quant"]),
    ("  - {pattern: 'dit\\.blocks\\.(\\d+', scheme: nf4}\n", "", KEEP, ["invalid regex"]),
    (f"  - {{pattern: '{FFN}', scheme: w8a8_int8_static}}\n", "", KEEP,
     ["scheme w8a8_int8_static needs activation statistics: set calibration: required"]),
    (BLOCK_RULES, "smoothquant: {alpha: 0.5}\n", KEEP, ["smoothquant needs calibration statistics"]),
    (f"  - {{pattern: '{FFN}', scheme: nf4}}\n", "calibration: required\nsmoothquant: {alpha: 0.5}\n", KEEP,
     ["scheme nf4 cannot apply SmoothQuant factors"]),
    (BLOCK_RULES, "smoothquant: {alpha: 2}\ncalibration: required\n", KEEP, ["alpha must be in [0, 1]"]),
    (BLOCK_RULES, "smoothquant: {alpha: 0.5, overrides: {'dit\\.blocks\\.0\\..*': 1.5}}\ncalibration: required\n",
     KEEP, [r"smoothquant.overrides 'dit\.blocks\.0\..*' must be in [0, 1], got 1.5"]),
    (BLOCK_RULES, "smoothquant: {alpha: 0.5, overrides: [0.8]}\ncalibration: required\n", KEEP,
     ["smoothquant.overrides: must be a mapping"]),
    (BLOCK_RULES, "smoothquant: {alpha: 0.5, overrides: {'dit\\.(': 0.8}}\ncalibration: required\n", KEEP,
     ["invalid regex"]),
    (BLOCK_RULES, "smoothquant: {alpha: 0.5, overrides: {'lq_proj\\..*': 0.8}}\ncalibration: required\n", KEEP,
     [r"smoothquant.overrides pattern 'lq_proj\..*' matches no layer that is smoothed"]),
    (BLOCK_RULES, "smoothquant: {alpha: 0.5, beta: 1}\ncalibration: required\n", KEEP,
     ["smoothquant: must be a mapping with an optional alpha and per-layer overrides"]),
    (BLOCK_RULES, "bits: 4\n", KEEP, ["unknown field bits"]),
])
def test_invalid_recipes_are_rejected_with_the_reason(rules, extra, keep, fragments):
    with pytest.raises(RecipeError) as err:
        resolve_plan(parse_recipe(recipe_text(rules, keep, extra)), meta_model(), "cpu")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_fp8_refuses_shapes_torchao_would_skip():
    with torch.device("meta"):
        odd = torch.nn.Linear(24, 64)
    assert "divisible by 16" in SCHEMES["fp8_weight_only"]().check_layer(odd)
    assert SCHEMES["int8_weight_only"]().check_layer(odd) is None


def test_missing_fields_and_files():
    with pytest.raises(RecipeError, match="missing gpu, expected_memory"):
        parse_recipe("kind: quantization\nname: x\ndescription: y\nkeep: []\nrules: []\n")
    with pytest.raises(RecipeError, match="not a quantization recipe"):
        load_recipe(recipes_dir() / "train-small.yaml")
    with pytest.raises(RecipeError, match="no recipe 'int3'.*int8-weight-only"):
        load_recipe("int3")
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe("name: [unclosed")
    assert issubclass(RecipeError, FlashVSRError)
