"""Full-batch L-BFGS fits of the TCDecoder: first its designed picture path alone, then the whole decoder.

Why not Adam: the decoder's convolutions read thousands of strongly correlated inputs (the first one reads
784 x 3 x 3), so Adam's per-weight steps of about ``lr`` move a layer's output by ``fan_in x lr``: at a rate that
makes progress in a few hundred CPU steps, one step wrecks the designed upscaler it starts from (measured: loss
0.07 -> 0.27 in 30 steps). L-BFGS on a fixed batch uses curvature instead and improves the held-out PSNR steadily
(+1 dB in 90 s on the path alone). Each *round* draws a fresh batch of crops and runs ``iterations`` L-BFGS steps
on it with a strong-Wolfe line search; a new batch per round keeps the fit from memorising one batch.

Two stages, both MSE on decoded frames against HR:

1. **path**: the channels that :func:`~flashvsr_q.train.init.init_decoder_as_upscaler` designed (48, 13, 7 and 4
   wide per stage) form a narrow TCDecoder of their own. It is copied out (:class:`NarrowDecoder`), fitted with
   zero latents (the picture path needs no DiT), and copied back. Path outputs read only path channels, so the
   whole decoder computes exactly what the narrow one does, at a fraction of the cost per step.
2. **decoder**: every decoder weight, with the DiT's real latents as input, so the dormant channels and the latent
   inputs learn the part a linear path cannot do.

Crops are 64 px squares of two-latent windows (5 output frames) cut out of the training clips
(:func:`~flashvsr_q.data.clips.sample_batch`), drawn from ``(seed, round)`` so a fit is reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from flashvsr_q.attention import LCSASettings
from flashvsr_q.data.clips import ClipSpec, sample_batch
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.configs import SPATIAL_DOWN, TEMPORAL_DOWN
from flashvsr_q.model.streaming import FlashVSRStream, tensor_noise
from flashvsr_q.model.tc_decoder import TCDecoder
from flashvsr_q.train.forward import decode_parallel
from flashvsr_q.train.recipe import FitSettings

log = logging.getLogger(__name__)

PATH_WIDTHS = (48, 13, 7, 4)  # the designed path of init_decoder_as_upscaler, per decoder stage
FIRST_STEP = 2_000_000  # sampler steps used by the fits (the gradient steps use 0, 1, 2, ...)


class NarrowDecoder:
    """The first ``widths`` channels of every stage of ``decoder``, as a TCDecoder of their own.

    Construction zeroes, in ``decoder``, the weights by which a kept output reads a dropped input, so the kept
    channels depend on kept channels only; :meth:`write_back` copies the narrow weights into place.
    """

    def __init__(self, model: FlashVSR, widths: tuple[int, int, int, int] = PATH_WIDTHS):
        decoder = model.decoder
        self.decoder = TCDecoder(dataclasses.replace(model.config, decoder_channels=widths))
        self._pairs: list[tuple[nn.Conv2d, nn.Conv2d, list[int], list[int]]] = []
        with torch.no_grad():
            for (name, wide), narrow in zip(_convs(decoder), (m for _, m in _convs(self.decoder)), strict=True):
                rows, cols = _kept(name, wide, narrow)
                kept = set(cols)
                dropped = [j for j in range(wide.in_channels) if j not in kept]
                w = wide.weight[rows]
                w[:, dropped] = 0
                wide.weight[rows] = w
                narrow.weight.copy_(w[:, cols])
                if wide.bias is not None:
                    narrow.bias.copy_(wide.bias[rows])
                self._pairs.append((wide, narrow, rows, cols))

    @torch.no_grad()
    def write_back(self) -> None:
        for wide, narrow, rows, cols in self._pairs:
            w = wide.weight[rows]
            w[:, cols] = narrow.weight
            wide.weight[rows] = w
            if wide.bias is not None:
                wide.bias[rows] = narrow.bias


def _convs(decoder: TCDecoder):
    return [(name, m) for name, m in decoder.decoder.named_modules() if isinstance(m, nn.Conv2d)]


def _kept(name: str, wide: nn.Conv2d, narrow: nn.Conv2d) -> tuple[list[int], list[int]]:
    """Rows (outputs) and columns (inputs) of ``wide`` that ``narrow`` holds."""
    if wide.kernel_size == (1, 1):  # TGrow: ``stride`` blocks of outputs, one per time step
        stride = wide.out_channels // wide.in_channels
        per = narrow.out_channels // stride
        return [s * wide.in_channels + j for s in range(stride) for j in range(per)], list(range(narrow.in_channels))
    rows = list(range(narrow.out_channels))
    if name.endswith("conv.0"):  # MemBlock: cat([x, past])
        half, wide_half = narrow.in_channels // 2, wide.in_channels // 2
        return rows, list(range(half)) + [wide_half + j for j in range(half)]
    return rows, list(range(narrow.in_channels))


def crops(model: FlashVSR, spec: ClipSpec, seed: int, step: int, settings: FitSettings, real_latents: bool,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of decoder inputs: latents [N, T, C, c/8, c/8], cond [N, 3, 4T-3, c, c], HR [N, 3, 4T-3, c, c]."""
    batch = sample_batch(dataclasses.replace(spec, batch_size=settings.clips), seed, step)
    if real_latents:
        with torch.no_grad():
            out = FlashVSRStream(model, tensor_noise(batch["noise"]), LCSASettings(), decode=False).step(batch["lr"])
        latents, cond = out.latents.transpose(1, 2), out.lr
    else:
        n, _, frames, size, _ = batch["hr"].shape  # 4T - 3 output frames
        latents = torch.zeros(n, (frames + 3) // TEMPORAL_DOWN, model.config.latent_channels,
                              size // SPATIAL_DOWN, size // SPATIAL_DOWN)
        cond = batch["lr"][:, :, :frames]
    t, c, cells = settings.latents, settings.crop, (spec.size - settings.crop) // SPATIAL_DOWN + 1
    picked = ([], [], [])
    for i in range(settings.clips):
        s = int(torch.randint(0, latents.shape[1] - t + 1, (1,), generator=generator))
        y, x = (int(v) * SPATIAL_DOWN for v in torch.randint(0, cells, (2,), generator=generator))
        frames = slice(TEMPORAL_DOWN * s, TEMPORAL_DOWN * (s + t) - 3)  # the frames latents s..s+t-1 decode to
        picked[0].append(latents[i, s:s + t, :, y // SPATIAL_DOWN:(y + c) // SPATIAL_DOWN,
                                 x // SPATIAL_DOWN:(x + c) // SPATIAL_DOWN])
        picked[1].append(cond[i, :, frames, y:y + c, x:x + c])
        picked[2].append(batch["hr"][i, :, frames, y:y + c, x:x + c])
    return tuple(torch.stack(p) for p in picked)


def lbfgs_rounds(decoder: TCDecoder, draw: Callable[[int], tuple], settings: FitSettings, stage: str,
                 say: Callable[[str], None] = log.info) -> list[float]:
    """Fit ``decoder`` (all its parameters) by L-BFGS, a fresh batch ``draw(round)`` per round; returns the
    loss of each round's batch before its fit."""
    decoder.to(memory_format=torch.contiguous_format)  # L-BFGS flattens gradients with .view(-1)
    params = [p for p in decoder.parameters() if p.requires_grad]
    losses: list[float] = []
    start = time.monotonic()
    for r in range(settings.rounds):
        latents, cond, hr = draw(r)
        optimizer = torch.optim.LBFGS(params, lr=1, max_iter=settings.iterations, history_size=20,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            frames = decode_parallel(decoder, latents, cond).transpose(1, 2) * 2 - 1  # [N, 3, T, c, c]
            loss = (frames - hr).pow(2).mean()
            loss.backward()
            return loss

        losses.append(float(optimizer.step(closure).detach()))
        say(f"{stage} fit: round {r + 1}/{settings.rounds}, batch MSE before {losses[-1]:.5f} "
            f"({time.monotonic() - start:.0f} s)")
    return losses


def fit_path(model: FlashVSR, spec: ClipSpec, seed: int, settings: FitSettings,
             say: Callable[[str], None] = log.info, widths: tuple[int, int, int, int] = PATH_WIDTHS) -> list[float]:
    """Stage 1: fit the designed path (zero latents) and write it back into ``model.decoder``."""
    narrow = NarrowDecoder(model, widths)
    g = torch.Generator().manual_seed(seed)
    draw = lambda r: crops(model, spec, seed, FIRST_STEP + r, settings, False, g)  # noqa: E731
    losses = lbfgs_rounds(narrow.decoder, draw, settings, "path", say)
    narrow.write_back()
    return losses


def fit_decoder(model: FlashVSR, spec: ClipSpec, seed: int, settings: FitSettings,
                say: Callable[[str], None] = log.info) -> list[float]:
    """Stage 2: fit every decoder weight, the DiT's latents as input (DiT and LQ projection unchanged)."""
    g = torch.Generator().manual_seed(seed + 1)
    draw = lambda r: crops(model, spec, seed, FIRST_STEP + 100_000 + r, settings, True, g)  # noqa: E731
    return lbfgs_rounds(model.decoder, draw, settings, "decoder", say)

