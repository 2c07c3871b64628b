"""A recipe rule on ``vae.*`` quantizes the Full pipeline's Wan VAE convolutions (weight-only int8), and the decoded
frames stay close to the float decoder's; one recipe serves both pipelines."""

from __future__ import annotations

import pytest
import torch
from helpers import random_model

from flashvsr_q.checkpoints import load_checkpoint, split_recipe
from flashvsr_q.model import WAN_VAE_FILE, WAN_VAE_PRESETS, WanVAEStream, save_official, save_wan_vae
from flashvsr_q.model.wan_vae import CausalConv3d
from flashvsr_q.model.wan_vae_file import synthetic_wan_vae_state
from flashvsr_q.quant import load_recipe, parse_recipe
from flashvsr_q.quant.weight_only import is_weight_only

# every layer of the FlashVSR model as stored; the VAE's norms kept, its convolutions (3-D and 2-D) in int8
VAE_INT8 = r"""
kind: quantization
name: vae-int8
description: int8 weight-only Wan VAE convolutions; everything else as stored
gpu: any CUDA GPU or CPU
expected_memory: {}
keep:
  - 'dit\..*'
  - 'lq_proj\..*'
  - 'decoder\..*'
  - prompt
  - 'vae\..*\.(residual\.[03]|norm|head\.0)'
rules:
  - {pattern: 'vae\..*', scheme: conv_weight_only}
"""


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae-quant")
    save_official(random_model("test"), path)
    save_wan_vae(synthetic_wan_vae_state(WAN_VAE_PRESETS["small"], 0), path / WAN_VAE_FILE)
    return path


def test_vae_rule_quantizes_the_vae_convs_and_stays_close(full_checkpoint):
    recipe = parse_recipe(VAE_INT8)
    plans = []
    model = load_checkpoint(full_checkpoint, dtype=torch.float32, pipeline="full", recipe=recipe,
                            on_plan=plans.append)
    reference = load_checkpoint(full_checkpoint, dtype=torch.float32, pipeline="full")
    convs = {name for name, m in reference.vae.named_modules() if isinstance(m, (CausalConv3d, torch.nn.Conv2d))}
    quantized = {name for name, m in model.vae.named_modules() if is_weight_only(m)}
    assert quantized == convs and len(convs) == 39  # every 3-D and 2-D convolution of the decoder
    assert [len(p.quantized) for p in plans] == [0, len(convs)]  # the model's plan keeps all, the VAE's quantizes
    assert all(n.startswith("vae.") for n in plans[1].layers)
    assert type(model.dit.blocks[0].ffn[0].weight) is torch.nn.Parameter  # the rest as stored
    latents = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    float_frames = WanVAEStream(reference.vae).decode(latents)
    int8_frames = WanVAEStream(model.vae).decode(latents)
    rel = ((int8_frames - float_frames).norm() / float_frames.norm()).item()
    psnr = 10 * torch.log10(4 / (int8_frames - float_frames).square().mean()).item()  # frames span [-1, 1]
    assert 0 < rel < 5e-2 and psnr > 35  # measured on these random weights (39 int8 convs): 2.5e-2, PSNR 44.6 dB


def test_one_recipe_serves_both_pipelines(full_checkpoint):
    recipe = parse_recipe(VAE_INT8)
    main, vae = split_recipe(recipe)
    assert [r.pattern for r in main.rules] == [] and [r.pattern for r in vae.rules] == [r"vae\..*"]
    assert load_checkpoint(full_checkpoint, dtype=torch.float32, recipe=recipe).vae is None  # Tiny: not used
    # a recipe without VAE entries quantizes the model as in Tiny and leaves the VAE in the compute dtype
    shipped = load_recipe("int8-weight-only")
    assert split_recipe(shipped)[1] is None
    model = load_checkpoint(full_checkpoint, dtype=torch.float32, pipeline="full", recipe=shipped)
    assert type(model.dit.blocks[0].ffn[0].weight) is not torch.nn.Parameter
    assert model.vae is not None and not any(is_weight_only(m) for m in model.vae.modules())
