"""QAT: fake quantization equals the deployed schemes, convert equals PTQ, streaming equals inference, the loss
falls, runs resume with their optimiser state, and DDP over two CPU processes exports the same checkpoint format."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import random_lr, random_model
from PIL import Image

from flashvsr_q.attention import LCSASettings
from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.model import SeededNoise, run_clip
from flashvsr_q.model.loading import save_official
from flashvsr_q.quant.checkpoint import load_compressed, read_manifest
from flashvsr_q.quant.recipes import load_recipe, parse_recipe, resolve_plan
from flashvsr_q.quant.schemes import get_scheme
from flashvsr_q.train.qat.data import make_example
from flashvsr_q.train.qat.system import (
    LossSettings,
    OptimSettings,
    QATSystem,
    TrainSettings,
    convert_student,
    fake_quantize_configs,
    fake_quantized,
    load_qat_recipe,
    prepare_student,
    run_qat,
    stream_frames,
)

QAT_RECIPE = "recipes/qat-w4a8.yaml"


def lively_model(seed: int = 0):
    """The ``test`` preset with a decoder whose output depends on the latents (the random one is nearly constant)."""
    model = random_model("test", seed)
    with torch.no_grad():
        for module in model.decoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        model.decoder.decoder[-1].weight.mul_(0.01)
        model.decoder.decoder[-1].bias.fill_(0.5)
    return model


def tiny_recipe(tmp_path, **changes):
    """The shipped QAT recipe, shortened for tests (``section__field=value`` overrides)."""
    recipe = load_qat_recipe(QAT_RECIPE)
    defaults = dict(run__checkpoint_every=1, run__val_every=100, data__val_clips=0, data__chunks=1,
                    loss__output=0.0, loss__temporal=0.0, loss__latent=1.0, loss__decode_every=1)
    return dataclass_replace(recipe, recipe.settings.replace(**{**defaults, **changes}))


def dataclass_replace(recipe, settings):
    import dataclasses

    return dataclasses.replace(recipe, settings=settings)


@pytest.fixture
def footage(tmp_path_factory):
    """One photo (a still animated with camera motion): the cheapest real footage."""
    folder = tmp_path_factory.mktemp("footage")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(base).resize((600, 400), Image.BICUBIC).save(folder / "photo.png")
    return [str(folder / "photo.png")]


@pytest.fixture
def float_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    save_official(lively_model(), folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# fake quantization == deployed quantization
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,options", [("w4a8_int", {"group_size": 32}), ("int8_weight_only", {}),
                                          ("w8a8_int8", {}), ("fp8_weight_only", {})])
def test_fake_quantization_equals_the_deployed_scheme(name, options):
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    torch.manual_seed(0)
    scheme = get_scheme(name, **options)
    linear = nn.Linear(256, 64)
    deployed = scheme.quantize(copy.deepcopy(linear))
    act, weight = fake_quantize_configs(scheme)
    holder = nn.Sequential(copy.deepcopy(linear))  # quantize_ swaps children, not the root
    quantize_(holder, QATConfig(activation_config=act, weight_config=weight, step="prepare"))
    fake = holder[0]
    # the same integer grid: the fake-quantized weight is the dequantized PTQ weight, bit for bit
    assert torch.equal(fake.weight_fake_quantizer(linear.weight.detach()), deployed.weight.dequantize())
    x = torch.randn(2, 40, 256) * torch.linspace(0.1, 3, 256)  # per-channel spread, as in DiT activations
    if act is not None and act.is_symmetric and type(act.granularity).__name__ == "PerToken":
        from flashvsr_q.train.qat.system import PerTokenSymmetricFakeQuantizer

        fake.activation_fake_quantizer = PerTokenSymmetricFakeQuantizer(act)
    with torch.no_grad():
        expected, got = deployed(x), fake(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_unsupported_schemes_fail_before_training():
    for name in ("nf4", "bnb_int8", "int4_weight_only", "w8a8_int8_static"):
        with pytest.raises(FlashVSRError, match="no exact fake quantizer"):
            fake_quantize_configs(get_scheme(name))
    with pytest.raises(FlashVSRError, match="no exact fake quantizer"):
        fake_quantize_configs(get_scheme("w8a8_int8", granularity="per_tensor"))


def test_recipe_loads_and_rejects_unknown_keys(tmp_path):
    recipe = load_qat_recipe(QAT_RECIPE)
    assert recipe.quant.name == "w4a8" and recipe.settings.data.chunks == 2
    # the DiT in w4a8; the LQ projection's linear in int8, its convolutions and the decoder weight-only
    assert {r.scheme.name for r in recipe.quant.rules} == {"w4a8_int", "int8_weight_only", "conv_weight_only"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nquantize: w4a8\nqat:\n  loss:\n    outputt: 1.0\n")
    with pytest.raises(FlashVSRError, match="outputt"):
        load_qat_recipe(bad)
    inline = tmp_path / "nf4.yaml"
    inline.write_text(load_recipe("nf4").text + "\nqat: {}\n")
    with pytest.raises(FlashVSRError, match="nf4"):
        load_qat_recipe(inline)


@pytest.mark.parametrize("mode", ["all", "lora"])
def test_convert_equals_direct_ptq_of_the_same_float_weights(mode):
    teacher = random_model("test")
    plan = resolve_plan(load_recipe("w4a8"), teacher, "cpu")
    student = prepare_student(copy.deepcopy(teacher), plan, TrainSettings(mode=mode, lora_rank=4))
    with torch.no_grad():  # stand-in for training: move every trainable parameter
        for p in student.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    assert all((".lora_" in n) == (mode == "lora") for n, p in student.named_parameters() if p.requires_grad)
    reference = copy.deepcopy(teacher)
    with torch.no_grad():  # the float weights QAT ended with (LoRA merged)
        for name, module in student.named_modules():
            if isinstance(module, nn.Linear):
                target = reference.get_submodule(name)
                target.weight.copy_(module.weight)
                target.bias.copy_(module.bias)
        for name, p in student.named_parameters():
            if "parametrizations" not in name and ".lora_" not in name:
                reference.get_parameter(name).copy_(p)
    from flashvsr_q.quant.ptq import quantize_model

    quantize_model(reference, plan)
    convert_student(student, plan)
    got, want = student.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        if hasattr(value, "qdata"):
            assert type(got[key]) is type(value), key
            for part in ("qdata", "scale", "zero_point"):
                assert torch.equal(getattr(got[key], part), getattr(value, part)), (key, part)
        else:
            assert torch.equal(got[key], value), key


# ---------------------------------------------------------------------------------------------------------------
# the training forward and loss
# ---------------------------------------------------------------------------------------------------------------


def fp32_reorder_tolerance(reference: torch.Tensor, ulps: int = 256) -> float:
    """Absolute tolerance for fp32 results that differ only in summation order: `ulps` ulps at the largest value."""
    return ulps * torch.finfo(torch.float32).eps * reference.abs().max().item()


def test_streaming_forward_equals_inference():
    model = lively_model()
    lr = random_lr(33, 128, 128)
    noise = SeededNoise(0, 16, 16, 16)
    with torch.no_grad():
        frames, latents = run_clip(model, lr, noise)
        got, got_latents = stream_frames(model, lr, noise(0, 8, torch.device("cpu")), model.conditioning(),
                                         LCSASettings())
    assert frames.std() > 0.05  # a decoder that actually depends on its input
    # The two paths are the same fp32 arithmetic summed in a different order through every layer, so they agree to
    # a few hundred ulps of the largest value, not to a fixed 1e-5 (torch 2.14 misses that by 1.7e-6 on 11 values).
    torch.testing.assert_close(got, frames, atol=fp32_reorder_tolerance(frames), rtol=0)
    torch.testing.assert_close(got_latents, latents, atol=fp32_reorder_tolerance(latents), rtol=0)


def test_loss_decreases_on_a_fixed_batch():
    from flashvsr_q.train.qat.system import distillation_loss

    torch.manual_seed(0)
    teacher = lively_model()
    plan = resolve_plan(load_recipe("w4a8"), teacher, "cpu")
    student = prepare_student(copy.deepcopy(teacher), plan, TrainSettings(mode="quantized"))
    with torch.no_grad():  # start further away than the quantization error alone
        for fqn in fake_quantized(plan):
            weight = student.get_submodule(fqn).weight
            weight.add_(0.03 * torch.randn_like(weight))
    loss = LossSettings(output=1.0, temporal=0.5, latent=1.0, features=0.1)
    system = QATSystem(student, teacher, loss, OptimSettings(lr=1e-3, warmup_steps=1))
    clip = np.random.default_rng(0).integers(0, 255, (25, 128, 128, 3), dtype=np.uint8)
    batch = {k: v[None] for k, v in make_example(clip, "bicubic", 0, 16, 1).items()}
    optimizer = system.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(8):
        terms = distillation_loss(*system._run(batch, decode=True, features=True), loss)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert set(terms) == {"output", "temporal", "latent", "features", "loss"}
    assert losses[-1] < 0.65 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())
    trained = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trained == {f"{fqn}.{leaf}" for fqn in fake_quantized(plan) for leaf in ("weight", "bias")}
    assert set(fake_quantized(plan)) < set(plan.quantized)  # the weight-only convolutions: float, frozen, PTQ


# ---------------------------------------------------------------------------------------------------------------
# runs: checkpoints, resume, export, DDP
# ---------------------------------------------------------------------------------------------------------------


def _optimizer_step(ckpt) -> int:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return int(next(iter(state["optimizer_states"][0]["state"].values()))["step"]), state


def test_interrupt_and_resume_continue_from_the_last_checkpoint(tmp_path, footage, float_checkpoint):
    from flashvsr_q.cli import main

    recipe = tmp_path / "qat.yaml"
    recipe.write_text("name: qat-test\nquantize: w4a8\nqat:\n  data: {val_clips: 0, chunks: 1}\n"
                      "  loss: {output: 0.0, temporal: 0.0, latent: 1.0, features: 0.1}\n"
                      "  run: {checkpoint_every: 1}\n")
    out = tmp_path / "run"
    args = ["qat", "--recipe", str(recipe), "--checkpoint", str(float_checkpoint), "--footage", *footage,
            "-o", str(out), "--accelerator", "cpu", "--no-progress"]
    assert main([*args, "--steps", "2"]) == 0
    step, first = _optimizer_step(out / "lightning" / "last.ckpt")
    assert first["global_step"] == 2 and step == 2
    assert not any(k.startswith("teacher.") for k in first["state_dict"])  # the frozen teacher is not saved
    assert main([*args, "--steps", "4"]) == 2  # the folder holds a run: refuse without --resume
    assert main([*args, "--steps", "4", "--resume"]) == 0
    step, second = _optimizer_step(out / "lightning" / "last.ckpt")
    assert second["global_step"] == 4 and step == 4  # Adam's step count carried on: its state was restored
    assert second["lr_schedulers"][0]["last_epoch"] == 4
    summary = json.loads((out / "qat-summary.json").read_text())
    assert summary["invocations"] == 2 and summary["steps"] == 4
    model = load_checkpoint(out / "model", dtype=torch.float32)
    assert type(model.dit.blocks[0].ffn[0].weight).__name__ == "IntxUnpackedToInt8Tensor"


def test_ddp_on_two_cpu_processes_exports_the_ptq_checkpoint_format(tmp_path, footage, float_checkpoint):
    recipe = tiny_recipe(tmp_path)
    result = run_qat(recipe, float_checkpoint, footage, tmp_path / "ddp", steps=2, accelerator="cpu", devices=2,
                     strategy="ddp_spawn", progress=False)
    assert result.steps == 2
    manifest = read_manifest(result.model_dir)
    assert manifest["recipe"]["name"] == "qat-w4a8"
    assert parse_recipe(manifest["recipe"]["text"]).rules == recipe.quant.rules  # still the deployed PTQ recipe
    assert {label.split("(")[0] for label in manifest["layers"].values() if label} == {
        "w4a8_int", "int8_weight_only", "conv_weight_only"}  # the deployed recipe, whole model
    model = load_compressed(result.model_dir, dtype=torch.float32)
    assert type(model.dit.blocks[1].self_attn.q.weight).__name__ == "IntxUnpackedToInt8Tensor"
    teacher = load_checkpoint(float_checkpoint, dtype=torch.float32)
    # the DDP-trained weights came back to the exporting process: they moved away from the teacher's
    moved = (model.dit.blocks[0].ffn[0].weight.dequantize() - teacher.dit.blocks[0].ffn[0].weight).abs().max()
    assert moved > 0
    with torch.no_grad():
        frames, _ = run_clip(model, random_lr(25, 128, 128), SeededNoise(0, 16, 16, 16))
    assert torch.isfinite(frames).all()


def test_parse_recipe_roundtrip_inline(tmp_path):
    """A QAT recipe can carry the PTQ fields inline instead of ``quantize:``."""
    text = load_recipe("w4a8").text
    path = tmp_path / "inline.yaml"
    path.write_text(text + "\nqat:\n  run: {max_steps: 7}\n")
    recipe = load_qat_recipe(path)
    assert recipe.settings.run.max_steps == 7
    assert recipe.quant.rules == parse_recipe(text).rules
