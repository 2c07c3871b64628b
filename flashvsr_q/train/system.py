"""The Lightning system that trains a FlashVSR model end to end (LQ projection + DiT + TCDecoder).

The model is a plain :class:`~flashvsr_q.model.FlashVSR` passed in; this module only holds the training step,
the loss and the optimiser. One step = the first streaming chunk (25 LR frames -> 21 output frames) of each clip
in the batch, computed exactly as at inference (:func:`~flashvsr_q.train.forward.forward_first_chunk`).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.streaming import FlashVSRStream, tensor_noise
from flashvsr_q.train.forward import conditioning_with_grad, decode_parallel, forward_first_chunk, trainable_groups
from flashvsr_q.train.recipe import LossSettings, OptimSettings


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def video_loss(frames: torch.Tensor, hr: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """Charbonnier on frames [B, 3, T, H, W] vs HR, plus a temporal term on consecutive-frame differences."""
    loss = charbonnier(frames, hr, settings.charbonnier_eps)
    if settings.temporal_weight:
        loss = loss + settings.temporal_weight * (frames.diff(dim=2) - hr.diff(dim=2)).abs().mean()
    return loss


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class FlashVSRTrainingSystem(L.LightningModule):
    """Trains ``model`` on batches ``{"lr", "hr", "noise"}`` from :class:`~flashvsr_q.data.clips.ClipDataModule`.

    Args:
        model: the network (trained in place; fp32).
        optim: learning rates, schedule, decoder-only warm-up.
        loss: loss weights.
        total_steps: length of the cosine schedule.
        attention: DiT self-attention backend while training (``dense``: exact LCSA and differentiable).
        lcsa: sparse-attention settings (the inference defaults).
    """

    def __init__(self, model: FlashVSR, optim: OptimSettings = OptimSettings(), loss: LossSettings = LossSettings(),
                 total_steps: int = 1000, attention: str = "dense", lcsa: LCSASettings = LCSASettings()):
        super().__init__()
        self.model = model
        self.optim, self.loss_settings, self.total_steps, self.lcsa = optim, loss, total_steps, lcsa
        self.model.set_attention(attention, "cpu")
        self.model.decoder.to(memory_format=torch.channels_last)  # ~1.3x faster small-channel convs on CPU

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        decoder_only = self.global_step < self.optim.decoder_only_steps
        with torch.set_grad_enabled(not decoder_only):
            cond = conditioning_with_grad(self.model)
        frames = self._forward(batch, cond, decoder_only)  # [B, 3, 21, H, W]
        loss = video_loss(frames, batch["hr"], self.loss_settings)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch["lr"].shape[0])
        self.log("train/l1", (frames.detach() - batch["hr"]).abs().mean(), on_step=True, on_epoch=False,
                 batch_size=batch["lr"].shape[0])
        return loss

    def _forward(self, batch, cond, decoder_only: bool) -> torch.Tensor:
        if not decoder_only:
            return forward_first_chunk(self.model, batch["lr"], batch["noise"], cond, self.lcsa)
        # decoder warm-up: the DiT/LQ path runs without autograd, only the decoder is differentiated
        with torch.no_grad():
            out = FlashVSRStream(self.model, tensor_noise(batch["noise"]), self.lcsa, cond, decode=False).step(
                batch["lr"])
        return decode_parallel(self.model.decoder, out.latents.transpose(1, 2), out.lr).transpose(1, 2) * 2 - 1

    def configure_optimizers(self):
        o = self.optim
        groups = trainable_groups(self.model)
        params = [*fan_in_groups(groups["decoder"], o.decoder_lr, o.fan_in_ref, "decoder"),
                  *fan_in_groups(groups["lq_proj"] + groups["dit"], o.lr, o.fan_in_ref, "dit+lq_proj")]
        optimizer = torch.optim.AdamW(params, betas=o.betas, weight_decay=o.weight_decay)
        decoder = lambda step: warmup_cosine(step, o.warmup_steps, self.total_steps, o.min_lr_ratio)  # noqa: E731
        rest = lambda step: 0.0 if step < o.decoder_only_steps else warmup_cosine(  # noqa: E731
            step - o.decoder_only_steps, o.warmup_steps, self.total_steps - o.decoder_only_steps, o.min_lr_ratio)
        lambdas = [decoder if g["name"].startswith("decoder") else rest for g in params]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fan_in_groups(params: list[torch.nn.Parameter], lr: float, reference: int, name: str) -> list[dict]:
    """Parameter groups with ``lr * min(1, reference / fan_in)``.

    Adam moves every weight by about ``lr`` per step whatever its gradient's size, so a layer's output moves by up
    to ``fan_in * lr`` when its inputs are correlated (pixels are). The decoder's first conv reads 784 x 3 x 3 inputs
    and the LQ projection's 768 x 4 x 3 x 3: at a plain ``lr`` one step wrecks the picture. Scaling by 1 / fan_in
    keeps the per-step output change of every layer about the same (biases and norms: fan_in 1).
    """
    by_scale: dict[float, list[torch.nn.Parameter]] = {}
    for p in params:
        fan_in = p[0].numel() if p.dim() > 1 else 1
        by_scale.setdefault(min(1.0, reference / fan_in), []).append(p)
    return [{"params": ps, "lr": lr * scale, "name": f"{name}@{scale:.3g}"} for scale, ps in sorted(by_scale.items())]
