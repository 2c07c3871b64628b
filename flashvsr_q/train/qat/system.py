"""Quantization-aware fine-tuning (QAT): a fake-quantized student distilled from the unquantized model, in Lightning.

torchao's prepare -> train -> convert, with fake and real quantization derived from the same recipe scheme:

    recipe = load_qat_recipe("recipes/qat-w4a8.yaml")         # a PTQ recipe (the deployed schemes) + a `qat:` section
    teacher = load_checkpoint(DIR, dtype=torch.float32)
    plan = resolve_plan(recipe.quant, teacher, "cpu")           # the per-layer plan that export applies
    student = prepare_student(copy.deepcopy(teacher), plan, recipe.train)  # FakeQuantizedLinear (+ LoRA), subset
    trainer.fit(QATSystem(student, teacher, recipe.loss, recipe.optim), datamodule=QATDataModule(...))
    convert_student(student, plan)                               # LoRA merged, fake quant removed, real PTQ applied
    save_compressed(student, OUT, recipe.quant, plan)            # the PTQ checkpoint format (load_checkpoint)

:func:`run_qat` does all of it with checkpointing and resume (``flashvsr-q qat``); :func:`compare_ptq_qat` measures
the teacher, plain PTQ and the QAT export on held-out clips.

Fake quantization mirrors the deployed kernels exactly (bit width, symmetric/asymmetric, granularity, eps): the
fake-quantized weight equals the dequantized PTQ weight bit for bit (tests/quant/test_qat.py). torchao cannot infer
fake quantizers from the int8 configs and has no symmetric per-token activation quantizer, so the configs below
are explicit, and symmetric per-token activations quantize ``x.reshape(-1, C)`` row by row.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from torch.nn.utils import parametrize

from flashvsr_q.attention import LCSASettings
from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import write_json
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.dit import DiTBlock
from flashvsr_q.model.streaming import FlashVSRStream, StreamState, chunk_lr_ranges, tensor_noise
from flashvsr_q.model.tc_decoder import DecoderState, MemBlock, TCDecoder
from flashvsr_q.quant.checkpoint import save_compressed
from flashvsr_q.quant.ptq import quantize_model
from flashvsr_q.quant.recipes import QuantPlan, Recipe, RecipeError, load_recipe, parse_recipe, resolve_plan
from flashvsr_q.quant.schemes import Scheme
from flashvsr_q.train.forward import conditioning_with_grad, decode_parallel
from flashvsr_q.train.qat.data import DEGRADATIONS, QATDataModule, clip_psnr, heldout_clips, recovery_table
from flashvsr_q.train.recipe import build_settings
from flashvsr_q.train.run import LossHistory, StopAfter, progress_callbacks
from flashvsr_q.train.system import warmup_cosine

log = logging.getLogger(__name__)
LAST = "last.ckpt"
TRAIN_MODES = ("all", "quantized", "layers", "norms", "lora")

# ---------------------------------------------------------------------------------------------------------------
# the recipe: a PTQ recipe (what is deployed) plus a `qat:` section (how to fine-tune)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSettings:
    """Crops of ``size`` output pixels (multiple of 128), ``chunks`` streaming chunks per clip (2: chunk 0 and a
    cache-warm chunk), ``degradation`` bicubic | realbasicvsr | none (footage is LR: pure distillation)."""

    size: int = 128
    chunks: int = 2
    batch_size: int = 1
    degradation: str = "bicubic"
    val_clips: int = 2
    num_workers: int = 0


@dataclass(frozen=True)
class LossSettings:
    """Weights of the distillation terms (student vs teacher). ``kind`` l1 | mse for the distances.

    ``output``: decoded frames; ``temporal``: frame-to-frame differences of the decoded frames; ``ground_truth``:
    decoded frames vs HR (optional supervision); ``latent``: the DiT's x0 latents (the decoder's input);
    ``features``: every DiT block's output (MSE normalised by the teacher's feature energy). The decoder is shared
    with the teacher and costs most of a CPU step, so the decoded terms can run every ``decode_every`` steps (the
    latent and feature terms run on every step).
    """

    kind: str = "l1"
    output: float = 1.0
    temporal: float = 0.0
    ground_truth: float = 0.0
    latent: float = 0.0
    features: float = 0.0
    decode_every: int = 1

    @property
    def decoded(self) -> bool:
        return bool(self.output or self.temporal or self.ground_truth)


@dataclass(frozen=True)
class TrainSettings:
    """What trains: ``all`` parameters of the DiT, the ``quantized`` linears, the ``layers`` whose parameter names
    fully match the regex ``layers``, the ``norms`` (norm weights, adaLN modulation tables, biases), or ``lora``:
    rank-``lora_rank`` adapters on the quantized linears (base weights frozen), merged into the weights before convert.

    The LQ projection and the decoder are kept in float by every shipped recipe and shared with the teacher: they
    stay frozen (``layers`` may still name them). AdamW's first steps move every weight by about ``lr``, which on
    the LQ projection's wide causal convolutions (fan-in 768 x 27) shifted the DiT input 20x more than the whole
    w4a8 quantization error did.
    """

    mode: str = "all"
    layers: str = ""
    lora_rank: int = 8
    lora_alpha: float = 8.0


@dataclass(frozen=True)
class OptimSettings:
    """AdamW, linear warm-up then cosine decay to ``min_lr_ratio`` x ``lr``."""

    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class RunSettings:
    """Length and bookkeeping: validation and checkpoints every N steps, CPU threads, training attention backend."""

    max_steps: int = 200
    val_every: int = 50
    checkpoint_every: int = 25
    threads: int = 2
    attention: str = "dense"
    max_minutes: float | None = None


@dataclass(frozen=True)
class QATSettings:
    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def replace(self, **changes) -> QATSettings:
        """A copy with ``section__field`` entries changed (``run__max_steps=4``)."""
        out = self
        for key, value in changes.items():
            section, name = key.split("__", 1)
            out = dataclasses.replace(out, **{section: dataclasses.replace(getattr(out, section), **{name: value})})
        return out


@dataclass(frozen=True)
class QATRecipe:
    """``quant``: the PTQ recipe whose schemes are fake-quantized, then applied; ``settings``: the ``qat:`` section."""

    name: str
    quant: Recipe
    settings: QATSettings
    text: str = ""
    source: str = "<string>"


def load_qat_recipe(path: str | os.PathLike) -> QATRecipe:
    """Read a QAT recipe: ``name``, ``quantize`` (a shipped PTQ recipe name or a path, resolved next to the file)
    or the PTQ recipe fields inline, and a ``qat:`` section (every key optional; unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"QAT recipe {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "qat" not in data:
        raise RecipeError(f"{path}: a QAT recipe is a mapping with a `qat:` section")
    settings = build_settings(QATSettings, data.pop("qat") or {}, "qat")
    name = str(data.pop("name", path.stem))
    ref = data.pop("quantize", None)
    if ref is not None:
        if data:
            raise RecipeError(f"{path}: with `quantize: {ref}` the PTQ fields come from that recipe; "
                              f"remove {', '.join(sorted(data))}")
        local = path.parent / str(ref)
        quant = load_recipe(local if local.is_file() else ref)
    else:
        quant = parse_recipe(yaml.safe_dump({"name": name, **data}, sort_keys=False), source=str(path))
    check_settings(settings, quant)
    return QATRecipe(name, quant, settings, text, str(path))


def check_settings(settings: QATSettings, quant: Recipe) -> None:
    fail = lambda msg: RecipeError(f"qat: {msg}")  # noqa: E731
    if settings.data.size % 128:
        raise fail(f"data.size must be a multiple of 128, got {settings.data.size}")
    if settings.data.chunks < 1 or settings.data.degradation not in DEGRADATIONS:
        raise fail(f"data.chunks must be >= 1 and data.degradation one of {', '.join(DEGRADATIONS)}")
    if settings.loss.kind not in ("l1", "mse"):
        raise fail(f"loss.kind must be l1 or mse, got {settings.loss.kind!r}")
    if settings.loss.decode_every < 1 or not (settings.loss.decoded or settings.loss.latent or settings.loss.features):
        raise fail("loss: decode_every must be >= 1 and at least one term needs a weight")
    if settings.loss.decode_every > 1 and not (settings.loss.latent or settings.loss.features):
        raise fail("loss.decode_every > 1 leaves steps without a loss: give latent or features a weight")
    if settings.loss.ground_truth and settings.data.degradation == "none":
        raise fail("loss.ground_truth needs HR frames: use a degradation other than none")
    if settings.train.mode not in TRAIN_MODES:
        raise fail(f"train.mode must be one of {', '.join(TRAIN_MODES)}, got {settings.train.mode!r}")
    if settings.train.mode == "layers":
        try:
            re.compile(settings.train.layers)
        except re.error as exc:
            raise fail(f"train.layers is not a valid regex ({exc})") from None
    for rule in quant.rules:
        if rule.scheme.name not in QUANTIZED_AT_EXPORT:
            fake_quantize_configs(rule.scheme)  # unsupported schemes fail here, before any training


# ---------------------------------------------------------------------------------------------------------------
# fake quantization that matches the deployed schemes
# ---------------------------------------------------------------------------------------------------------------


class PerTokenSymmetricFakeQuantizer(nn.Module):
    """Symmetric per-token int fake quantization of activations ``[..., C]`` (torchao's ``IntxFakeQuantizer`` only
    has asymmetric per-token): each row of ``x.reshape(-1, C)`` goes through torchao's per-channel path, the math of
    ``Int8Tensor.from_hp(x, PerRow())`` that the w8a8 kernels apply to activations."""

    def __init__(self, config):
        super().__init__()
        from torchao.quantization import PerAxis
        from torchao.quantization.qat import IntxFakeQuantizeConfig
        from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer

        self.config = config
        self.enabled = True
        self.rows = IntxFakeQuantizer(IntxFakeQuantizeConfig(config.dtype, PerAxis(0), is_symmetric=True,
                                                             scale_precision=config.scale_precision, eps=config.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return self.rows(x.reshape(-1, x.shape[-1])).reshape(x.shape)


# Weight-only convolutions (the LQ projection's and the TCDecoder's, in the whole-model recipes) are not fine-tuned:
# they stay float and frozen while the DiT trains, and are quantized by their PTQ scheme at export.
QUANTIZED_AT_EXPORT = ("conv_weight_only",)


def fake_quantized(plan: QuantPlan) -> dict:
    """The planned layers QAT fake-quantizes and fine-tunes: all but those quantized only at export."""
    return {fqn: layer for fqn, layer in plan.quantized.items() if layer.scheme.name not in QUANTIZED_AT_EXPORT}


def fake_quantize_configs(scheme: Scheme, dtype: torch.dtype = torch.float32):
    """(activation config or None, weight config) reproducing ``scheme``'s quantization for weights in ``dtype``.

    Raises:
        FlashVSRError: for a scheme whose numerics no torchao fake quantizer reproduces exactly (bitsandbytes
            int8 divides by 127 and NF4 uses a lookup table; the int4 tile-packed/opaque layouts use tinygemm
            qparams; static activations need calibrated scales). The message names the QAT-able schemes.
    """
    from torchao.quantization import PerAxis, PerGroup, PerRow, PerTensor
    from torchao.quantization.qat import Float8FakeQuantizeConfig, IntxFakeQuantizeConfig

    int8_eps = torch.finfo(torch.float32).eps  # Int8Tensor.from_hp clamps scales at fp32 eps, whatever the dtype
    granularity = getattr(scheme, "granularity", "per_row")
    if scheme.name in ("int8_weight_only", "w8a8_int8") and granularity == "per_row":
        weight = IntxFakeQuantizeConfig(torch.int8, PerAxis(0), is_symmetric=True, scale_precision=torch.float32,
                                        eps=int8_eps)
        act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=True, scale_precision=torch.float32,
                                     eps=int8_eps) if scheme.name == "w8a8_int8" else None
        return act, weight
    if scheme.name in ("fp8_weight_only", "w8a8_fp8"):
        gran = PerRow() if granularity == "per_row" else PerTensor()
        weight = Float8FakeQuantizeConfig(torch.float8_e4m3fn, gran)
        act = Float8FakeQuantizeConfig(torch.float8_e4m3fn, gran) if scheme.name == "w8a8_fp8" else None
        return act, weight
    if scheme.name == "w4a8_int":  # Int8DynamicActivationIntxWeightConfig: int4 symmetric groups, int8 asym tokens
        weight = IntxFakeQuantizeConfig(torch.int4, PerGroup(scheme.group_size), is_symmetric=True,
                                        scale_precision=dtype)
        act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False, scale_precision=dtype)
        return act, weight
    raise FlashVSRError(f"scheme {scheme.label()} has no exact fake quantizer for QAT; QAT supports "
                        f"int8_weight_only / w8a8_int8 (per_row), fp8_weight_only, w8a8_fp8, w4a8_int "
                        f"(use w4a8_int for 4-bit weights)")


class LowRankDelta(nn.Module):
    """Weight parametrization ``W + (alpha / r) B A`` (LoRA); B starts at zero so training starts at ``W``."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.lora_b @ self.lora_a).to(weight.dtype) * self.scaling


def prepare_student(model: FlashVSR, plan: QuantPlan, train: TrainSettings = TrainSettings(),
                    dtype: torch.dtype = torch.float32) -> FlashVSR:
    """Insert fake quantization for every planned layer (in place) and choose what trains; returns ``model``.

    Args:
        plan: resolved against this (float) model; its schemes become ``FakeQuantizedLinear`` modules.
        train: the trainable subset (and LoRA settings).
        dtype: the compute dtype of the export (fake-quant scale precision follows it where the kernel's does).
    """
    from torchao.quantization import PerToken, quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    for fqn, layer in fake_quantized(plan).items():
        act, weight = fake_quantize_configs(layer.scheme, dtype)
        quantize_(model, QATConfig(activation_config=act, weight_config=weight, step="prepare"),
                  filter_fn=lambda module, name, fqn=fqn: name == fqn)
        module = model.get_submodule(fqn)
        if isinstance(act, IntxFakeQuantizeConfig) and isinstance(act.granularity, PerToken) and act.is_symmetric:
            module.activation_fake_quantizer = PerTokenSymmetricFakeQuantizer(act)
        if train.mode == "lora":
            parametrize.register_parametrization(
                module, "weight", LowRankDelta(module.out_features, module.in_features, train.lora_rank,
                                               train.lora_alpha))
    select_trainable(model, plan, train)
    return model


def select_trainable(model: FlashVSR, plan: QuantPlan, train: TrainSettings) -> list[str]:
    """Set ``requires_grad`` per :class:`TrainSettings`; returns the names of the trainable parameters."""
    quantized = tuple(f"{fqn}." for fqn in fake_quantized(plan))
    rules = {
        "all": lambda name: name.startswith("dit."),
        "quantized": lambda name: name.startswith(quantized),
        "layers": lambda name: re.fullmatch(train.layers, name) is not None,
        "norms": lambda name: re.search(r"(^|\.)(norm\w*|modulation)(\.|$)", name) is not None
        or name.endswith(".bias"),
        "lora": lambda name: ".lora_" in name,
    }
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(rules[train.mode](name))
        if p.requires_grad:
            chosen.append(name)
    if not chosen:
        raise FlashVSRError(f"train.mode {train.mode} {train.layers!r} selects no parameter of the model")
    return chosen


@torch.no_grad()
def convert_student(model: FlashVSR, plan: QuantPlan, calibration=None, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> FlashVSR:
    """Merge LoRA adapters, swap ``FakeQuantizedLinear`` back to ``nn.Linear``, cast, and apply the real PTQ scheme
    of every planned layer through :func:`~flashvsr_q.quant.ptq.quantize_model` (in place); returns ``model``."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from torchao.quantization.qat.linear import FakeQuantizedLinear


    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    quantize_(model, QATConfig(step="convert"), filter_fn=lambda m, _: isinstance(m, FakeQuantizedLinear))
    model.requires_grad_(False)
    model.to(device=device, dtype=dtype)
    return quantize_model(model, plan, calibration)


# ---------------------------------------------------------------------------------------------------------------
# the streaming forward and the loss
# ---------------------------------------------------------------------------------------------------------------


def detach_state(state: StreamState) -> None:
    """Cut the autograd history of the state carried to the next chunk (KV caches, LQ and decoder memory)."""
    for cache in state.caches:
        cache.k = None if cache.k is None else cache.k.detach()
        cache.v = None if cache.v is None else cache.v.detach()
    for name in ("cache1", "cache2"):
        value = getattr(state.lq, name)
        setattr(state.lq, name, None if value is None else value.detach())
    state.decoder.memory = {k: v.detach() for k, v in state.decoder.memory.items()}
    state.lr_tail = None if state.lr_tail is None else state.lr_tail.detach()


def decode_first_chunk(decoder: TCDecoder, latents: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                 DecoderState]:
    """:func:`~flashvsr_q.train.forward.decode_parallel` (all time steps of a layer at once) plus the streaming
    state the sequential decoder would hold afterwards: each MemBlock's input at its last time step.

    Args:
        latents: [B, T, C, h, w]; cond: [B, 3, 4T - 3, 8h, 8w] LR frames aligned with the output.
    Returns:
        frames [B, 4T - 3, 3, 8h, 8w] roughly in [0, 1], and the :class:`DecoderState` for the next chunk.
    """

    state, batch = DecoderState(calls=1), latents.shape[0]

    def keep(index):
        return lambda module, args, out: state.memory.__setitem__(index, args[0].unflatten(0, (batch, -1))[:, -1])

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(decoder.decoder)
               if isinstance(layer, MemBlock)]
    try:
        frames = decode_parallel(decoder, latents, cond)
    finally:
        for handle in handles:
            handle.remove()
    return frames, state


def stream_frames(model: FlashVSR, lr: torch.Tensor, noise: torch.Tensor, cond, lcsa: LCSASettings,
                  decode: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run a clip chunk by chunk exactly as inference does (chunk 0, then cache-warm chunks), with gradients inside
    each chunk and the carried state (KV caches, LQ and decoder memory) detached between chunks. Chunk 0 is decoded
    with all time steps of a decoder layer at once (the same values as the sequential decoder, faster).

    Args:
        lr: [B, 3, F, H, W] upsampled LR in [-1, 1], F = 8k + 1 >= 25; noise: [B, C, 2k, H/8, W/8].
        decode: False skips the decoder (latent / feature losses only).
    Returns:
        (frames [B, 3, F - 4, H, W] in about [-1, 1] before colour fix, or None; latents x0 [B, C, 2k, H/8, W/8]).
    """
    stream = FlashVSRStream(model, tensor_noise(noise), lcsa, conditioning=cond, decode=False)
    frames, latents = [], []
    for start, end in chunk_lr_ranges(lr.shape[2]):
        first = stream.state.chunk == 0
        out = stream.forward_chunk(lr[:, :, start:end])
        latents.append(out.latents)
        if decode:
            if first:
                decoded, stream.state.decoder = decode_first_chunk(model.decoder, out.latents.transpose(1, 2), out.lr)
            else:
                decoded = model.decoder(out.latents.transpose(1, 2), out.lr, stream.state.decoder)
            frames.append(decoded.transpose(1, 2) * 2 - 1)
        detach_state(stream.state)
    return (torch.cat(frames, dim=2) if decode else None), torch.cat(latents, dim=2)


@contextlib.contextmanager
def block_outputs(model: FlashVSR, enabled: bool = True):
    """Collect every DiT block's output (all chunks, in order) while the context is open."""
    outputs: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda m, a, out: outputs.append(out))
               for block in model.dit.blocks] if enabled else []
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], settings: LossSettings,
                      hr: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The weighted terms and their sum (``loss``).

    Args:
        student, teacher: ``latents`` [B, C, L, h, w], optionally ``frames`` [B, 3, T, H, W] in [-1, 1] (the decoded
            terms run when both have them) and ``features`` (lists of block outputs, same order).
        hr: [B, 3, T, H, W] ground truth in [-1, 1] for the ``ground_truth`` term.
    """
    dist = F.l1_loss if settings.kind == "l1" else F.mse_loss
    weights = {"output": settings.output, "temporal": settings.temporal, "ground_truth": settings.ground_truth,
               "latent": settings.latent, "features": settings.features}
    terms = {}
    s, t = student.get("frames"), teacher.get("frames")
    if s is not None and t is not None:
        terms["output"] = dist(s, t)
        if settings.temporal:
            terms["temporal"] = dist(s.diff(dim=2), t.diff(dim=2))
        if settings.ground_truth and hr is not None:
            terms["ground_truth"] = dist(s, hr)
    if settings.latent:
        terms["latent"] = dist(student["latents"], teacher["latents"])
    if settings.features and student.get("features"):
        terms["features"] = torch.stack([F.mse_loss(a, b) / (b.pow(2).mean() + 1e-6) for a, b in
                                         zip(student["features"], teacher["features"], strict=True)]).mean()
    terms["loss"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of frames in [-1, 1] (clamped), peak-to-peak 2."""
    mse = (x.clamp(-1, 1).float() - y.clamp(-1, 1).float()).pow(2).mean()
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------------------------
# the Lightning system
# ---------------------------------------------------------------------------------------------------------------


class QATSystem(L.LightningModule):
    """Distils a fake-quantized ``student`` from the frozen ``teacher`` on batches ``{"lr", "noise"[, "hr"]}`` of
    :class:`~flashvsr_q.train.qat.data.QATDataModule`.

    Args:
        student: the model after :func:`prepare_student` (trained in place).
        teacher: the unquantized model (frozen, eval; not written to checkpoints).
        loss: loss weights.
        optim: optimiser and schedule.
        total_steps: length of the cosine schedule.
        attention: DiT self-attention backend while training (``dense``: exact LCSA, differentiable).
        lcsa: sparse-attention settings (the inference defaults).
    """

    def __init__(self, student: FlashVSR, teacher: FlashVSR, loss: LossSettings = LossSettings(),
                 optim: OptimSettings = OptimSettings(), total_steps: int = 1000, attention: str = "dense",
                 lcsa: LCSASettings = LCSASettings()):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.student.train()
        self.teacher.requires_grad_(False).eval()
        self.loss_settings, self.optim, self.total_steps, self.lcsa = loss, optim, total_steps, lcsa
        self.strict_loading = False  # checkpoints hold the student only
        for model in (student, teacher):
            model.set_attention(attention, "cpu")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        settings = self.loss_settings
        decode = settings.decoded and self.global_step % settings.decode_every == 0
        student, teacher = self._run(batch, decode, bool(settings.features))
        terms = distillation_loss(student, teacher, settings, batch.get("hr"))
        size = batch["lr"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=False, batch_size=size)
        return terms["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        student, _ = stream_frames(self.student, batch["lr"], batch["noise"], self.student.conditioning(), self.lcsa)
        teacher, _ = stream_frames(self.teacher, batch["lr"], batch["noise"], self.teacher.conditioning(), self.lcsa)
        metrics = {"val/psnr_vs_teacher": psnr(student, teacher)}
        if "hr" in batch:
            metrics["val/psnr_vs_gt"] = psnr(student, batch["hr"])
            metrics["val/teacher_psnr_vs_gt"] = psnr(teacher, batch["hr"])
        self.log_dict(metrics, on_epoch=True, batch_size=1, sync_dist=True)

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        schedule = lambda step: warmup_cosine(step, o.warmup_steps, self.total_steps, o.min_lr_ratio)  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def _run(self, batch: dict[str, torch.Tensor], decode: bool, features: bool) -> tuple[dict, dict]:
        """Teacher (no grad) and student on the same LR and noise: {"frames", "latents", "features"} each."""
        out = {}
        for role, model in (("teacher", self.teacher), ("student", self.student)):
            grad = role == "student"
            with torch.set_grad_enabled(grad), block_outputs(model, features) as blocks:
                cond = conditioning_with_grad(model) if grad else model.conditioning()
                frames, latents = stream_frames(model, batch["lr"], batch["noise"], cond, self.lcsa, decode)
            out[role] = {"frames": frames, "latents": latents, "features": blocks}
        return out["student"], out["teacher"]


# ---------------------------------------------------------------------------------------------------------------
# the whole run: fit (checkpointed, resumable, one or many devices), convert, export
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class QATResult:
    """What :func:`run_qat` did; ``model_dir`` is None on the non-zero ranks of a multi-process run."""

    steps: int
    wall_seconds: float
    losses: list[tuple[int, float]]
    validation: dict[str, float]
    model_dir: Path | None
    checkpoint: Path


def load_teacher(checkpoint: str | os.PathLike | None) -> FlashVSR:
    """The unquantized model of ``checkpoint`` (any layout ``load_checkpoint`` reads) in fp32 on the CPU."""
    model = load_checkpoint(checkpoint, dtype=torch.float32, device="cpu")
    quantized = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                 and not (type(m.weight.data) is torch.Tensor and m.weight.is_floating_point())]
    if quantized:
        raise FlashVSRError(f"{checkpoint} holds quantized layers ({quantized[0]}, ...); QAT starts from the float "
                            f"model: pass the original checkpoint")
    return model.requires_grad_(False).eval()


class SaveLast(Callback):
    """Write ``last.ckpt`` when training ends (also when stopped by time between the periodic checkpoints), inside
    the training processes, so spawned DDP workers save their full state too."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)


def make_strategy(strategy: str, accelerator: str):
    """``auto``, ``ddp``, ``ddp_spawn`` as Lightning knows them; ``fsdp`` shards the DiT block by block."""
    if strategy != "fsdp":
        return strategy
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise FlashVSRError("--strategy fsdp needs CUDA GPUs; use ddp (or ddp_spawn) on CPUs")
    from lightning.pytorch.strategies import FSDPStrategy


    # use_orig_params: the frozen teacher and frozen student parameters live beside the trained ones
    return FSDPStrategy(auto_wrap_policy={DiTBlock}, use_orig_params=True, sharding_strategy="FULL_SHARD")


def run_qat(recipe: QATRecipe, checkpoint: str | os.PathLike | None, footage: list, out_dir: str | os.PathLike, *,
            steps: int | None = None, resume: bool = False, accelerator: str = "auto", devices: int | str = 1,
            num_nodes: int = 1, strategy: str = "auto", precision: str | None = None, holdout: tuple[str, ...] = (),
            val_footage: tuple = (), dtype: torch.dtype | None = None, max_minutes: float | None = None,
            progress: bool = True) -> QATResult:
    """Fine-tune ``checkpoint`` under ``recipe`` into ``out_dir`` and export the quantized model.

    Output folder::

        OUT/lightning/last.ckpt   resumable Lightning checkpoint (student, optimiser, scheduler, step); --resume
        OUT/logs/version_N/       metrics.csv per invocation: losses, learning rate, validation PSNR
        OUT/model/                the converted model in the PTQ checkpoint format (``load_checkpoint(OUT/model)``)
        OUT/qat-summary.json      steps, wall time, last validation, recipe

    Args:
        steps: overrides ``run.max_steps`` (the total, also when resuming).
        accelerator, devices, num_nodes, strategy, precision: Lightning's; ``strategy`` ddp runs one process per
            device (multi-GPU, multi-node, or CPU processes with gloo), ``fsdp`` shards (CUDA).
        holdout, val_footage: validation footage (see :class:`~flashvsr_q.train.qat.data.QATDataModule`).
        dtype: compute dtype of the export (default bf16 on CUDA, fp32 on CPU).
        max_minutes: bound on this invocation (stops after a whole step, checkpoints; resume carries on).
    """
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger


    settings = recipe.settings if steps is None else recipe.settings.replace(run__max_steps=steps)
    out_dir = Path(out_dir)
    last = out_dir / "lightning" / LAST
    if resume and not last.is_file():
        raise FlashVSRError(f"nothing to resume: {last} does not exist")
    if not resume and last.is_file():
        raise FlashVSRError(f"{out_dir} already holds a QAT run ({last}); pass --resume or choose another folder")
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    dtype = dtype or (torch.bfloat16 if gpu else torch.float32)
    export_device = "cuda" if gpu else "cpu"
    if not gpu:
        torch.set_num_threads(settings.run.threads)
    L.seed_everything(settings.seed, workers=True, verbose=False)

    # 1. teacher, plan (checked against the export device before any training), student, system, data
    teacher = load_teacher(checkpoint)
    plan = resolve_plan(recipe.quant, teacher, export_device)
    student = prepare_student(copy.deepcopy(teacher), plan, settings.train, dtype)
    system = QATSystem(student, teacher, settings.loss, settings.optim, total_steps=settings.run.max_steps,
                       attention=settings.run.attention)
    d = settings.data
    data = QATDataModule(footage, size=d.size, chunks=d.chunks, batch_size=d.batch_size, degradation=d.degradation,
                         latent_channels=teacher.config.latent_channels, seed=settings.seed, holdout=holdout,
                         val_footage=val_footage, val_clips=d.val_clips, max_steps=settings.run.max_steps,
                         num_workers=d.num_workers)

    # 2. trainer
    history = LossHistory()
    callbacks = [history, SaveLast(last), LearningRateMonitor(logging_interval="step"),
                 ModelCheckpoint(dirpath=last.parent, filename="step{step:06d}", auto_insert_metric_name=False,
                                 every_n_train_steps=settings.run.checkpoint_every, save_last=True, save_top_k=1)]
    minutes = max_minutes if max_minutes is not None else settings.run.max_minutes
    if minutes is not None:
        callbacks.append(StopAfter(minutes))
    validate = d.val_clips > 0
    extra, lightning_bar = progress_callbacks(progress, "qat")
    callbacks += extra
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=make_strategy(strategy, accelerator),
        precision=precision or ("bf16-mixed" if gpu else "32-true"), max_steps=settings.run.max_steps, max_epochs=-1,
        gradient_clip_val=settings.optim.grad_clip or None, log_every_n_steps=1, callbacks=callbacks,
        val_check_interval=min(settings.run.val_every, settings.run.max_steps) if validate else None,
        check_val_every_n_epoch=None, limit_val_batches=1.0 if validate else 0, num_sanity_val_steps=0,
        logger=CSVLogger(out_dir, name="logs"), enable_progress_bar=lightning_bar,
        enable_model_summary=progress, default_root_dir=out_dir)

    # 3. fit (restores student, optimiser, scheduler and step), checkpoint, convert and export on rank 0
    start = time.monotonic()
    trainer.fit(system, datamodule=data, ckpt_path=str(last) if resume else None)
    wall = time.monotonic() - start
    step = int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])
    validation = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not trainer.is_global_zero:
        return QATResult(step, wall, history.losses, validation, None, last)
    model_dir = out_dir / "model"
    convert_student(system.student.cpu() if export_device == "cpu" else system.student, plan, dtype=dtype,
                    device=export_device)
    save_compressed(system.student, model_dir, export_recipe(recipe), plan, overwrite=True)
    result = QATResult(step, wall, history.losses, validation, model_dir, last)
    _write_summary(out_dir / "qat-summary.json", recipe, settings, result)
    return result


def export_recipe(recipe: QATRecipe) -> Recipe:
    """The PTQ recipe as the manifest records it: named after the QAT recipe, with the QAT recipe appended as YAML
    comments (the text still parses as the PTQ recipe)."""
    comment = "\n".join(f"# {line}" for line in recipe.text.splitlines())
    text = f"{recipe.quant.text.rstrip()}\n# --- fine-tuned by QAT ({recipe.source}):\n{comment}\n"
    return dataclasses.replace(recipe.quant, name=recipe.name, text=text, source=recipe.source)


def _write_summary(path: Path, recipe: QATRecipe, settings: QATSettings, result: QATResult) -> None:
    previous = json.loads(path.read_text()) if path.is_file() else {}
    tail = [loss for _, loss in result.losses[-20:]]
    summary = {"steps": result.steps,
               "wall_seconds": round(previous.get("wall_seconds", 0) + result.wall_seconds, 1),
               "invocations": previous.get("invocations", 0) + 1,
               "final_loss_mean_last_20": sum(tail) / len(tail) if tail else None,
               "validation": result.validation, "recipe": recipe.name, "quant_recipe": recipe.quant.name,
               "settings": dataclasses.asdict(settings), "torch": torch.__version__, "lightning": L.__version__}
    write_json(path, summary)


def compare_ptq_qat(recipe: QATRecipe, checkpoint: str | os.PathLike | None, qat_model: str | os.PathLike,
                    chunks: int = 2, seed: int = 0) -> tuple[str, dict, dict]:
    """Teacher (fp32), plain PTQ of the teacher under the same recipe, and the QAT export, streamed over
    :func:`~flashvsr_q.train.qat.data.heldout_clips`; returns (Markdown table, per-clip PSNR, recovery summary)."""

    teacher = load_teacher(checkpoint)
    ptq = quantize_model(copy.deepcopy(teacher), resolve_plan(recipe.quant, teacher, "cpu"))
    qat = load_checkpoint(qat_model, dtype=torch.float32, device="cpu")
    results = clip_psnr({"teacher": teacher, "ptq": ptq, "qat": qat}, heldout_clips(chunks), seed=seed)
    table, summary = recovery_table(results)
    return table, results, summary
