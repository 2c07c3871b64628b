"""Streaming FlashVSR over a clip, chunk by chunk (spec §2.4, §6).

Frame bookkeeping for an LR clip of F = 8k + 1 frames (already bicubic-upsampled to the output size):

    chunk 0:  LR frames [0, 25)            -> latents 0..5   -> output frames [0, 21)
    chunk c:  LR frames [8c+17, 8c+25)     -> latents 4+2c, 5+2c -> output frames [8c+13, 8c+21)

so the DiT sees 4 LR frames beyond the frames it outputs, and F - 4 frames come out. The KV cache keeps the last
3 groups of 2 latent frames (already RoPE-encoded); RoPE frame positions are absolute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.model.configs import SPATIAL_DOWN, TEMPORAL_DOWN
from flashvsr_q.model.dit import DiTConditioning, KVCache
from flashvsr_q.model.flashvsr import FlashVSR
from flashvsr_q.model.lq_proj import LQProjState
from flashvsr_q.model.tc_decoder import DecoderState
from flashvsr_q.model.wan_vae import FeatureCache

FIRST_CHUNK_LATENTS = 6
CHUNK_LATENTS = 2
LOOKAHEAD = 4  # LR frames consumed beyond the last output frame
FIRST_CHUNK_FRAMES = 1 + TEMPORAL_DOWN * FIRST_CHUNK_LATENTS  # 25 LR frames in
CHUNK_FRAMES = TEMPORAL_DOWN * CHUNK_LATENTS  # 8 LR frames in, 8 out
FIRST_CHUNK_OUTPUT = FIRST_CHUNK_FRAMES - LOOKAHEAD  # 21 frames out

# (first latent index, number of latents, device) -> noise [1, C, count, H/8, W/8]
NoiseFn = Callable[[int, int, torch.device], torch.Tensor]


def padded_length(num_frames: int) -> int:
    """The LR frame count F = 8k + 1 >= num_frames + 4 that the model runs (at least one chunk: F >= 25)."""
    need = max(num_frames + LOOKAHEAD, FIRST_CHUNK_FRAMES)
    return need + (-(need - 1)) % CHUNK_FRAMES


def chunk_lr_ranges(padded: int) -> list[tuple[int, int]]:
    """LR frame ranges [start, end) fed to each chunk for F = ``padded`` = 8k + 1 frames."""
    if padded < FIRST_CHUNK_FRAMES or (padded - 1) % CHUNK_FRAMES:
        raise ValueError(f"a FlashVSR clip has 8k+1 >= 25 frames, got {padded}")
    return [(0, FIRST_CHUNK_FRAMES)] + [
        (s, s + CHUNK_FRAMES) for s in range(FIRST_CHUNK_FRAMES, padded, CHUNK_FRAMES)
    ]


def latent_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"flashvsr-q-noise:{seed}:{index}".encode()).hexdigest()[:15], 16)


class SeededNoise:
    """Latent noise as a deterministic field over the whole (padded) frame.

    Latent frame j is drawn from its own generator seeded by (seed, j) at the full latent size, then cropped, so
    any chunking and any tiling see the same noise at the same place.
    """

    def __init__(self, seed: int, channels: int, height: int, width: int, crop: tuple[int, int, int, int] | None = None,
                 dtype: torch.dtype = torch.float32):
        self.seed, self.shape, self.dtype = seed, (channels, height, width), dtype
        self.crop = crop or (0, 0, height, width)  # (top, left, h, w) in latent pixels

    def __call__(self, start: int, count: int, device: torch.device) -> torch.Tensor:
        top, left, h, w = self.crop
        frames = [
            torch.randn(self.shape, generator=torch.Generator().manual_seed(latent_seed(self.seed, j)))[
                :, top : top + h, left : left + w]
            for j in range(start, start + count)
        ]
        return torch.stack(frames, dim=1)[None].to(device=device, dtype=self.dtype)


def tensor_noise(noise: torch.Tensor) -> NoiseFn:
    """Explicit noise [1, C, T, H/8, W/8] (e.g. another implementation's), sliced per chunk."""
    return lambda start, count, device: noise[:, :, start : start + count].to(device)


@dataclass
class ChunkOutput:
    """What one chunk produced.

    latents: x0 [B, C, f, H/8, W/8]; frames: [B, 3, T, H, W] in about [-1, 1], before colour fix (None if not
    decoded); lr: the matching LR frames [B, 3, T, H, W] (the colour-fix reference); first_frame: output index.
    """

    latents: torch.Tensor
    frames: torch.Tensor | None
    lr: torch.Tensor
    first_frame: int


@dataclass
class StreamState:
    """What one stream carries between chunks: KV caches, LQ-projection caches, the decoder's memory (TCDecoder
    MemBlocks in Tiny, the Wan VAE's causal cache in Full), the chunk counter and the last LR frames."""

    caches: list[KVCache]
    lq: LQProjState = field(default_factory=LQProjState)
    decoder: DecoderState = field(default_factory=DecoderState)
    chunk: int = 0
    lr_tail: torch.Tensor | None = None  # last 4 LR frames of the previous chunk (decoder conditioning)
    vae: FeatureCache = field(default_factory=FeatureCache)  # Full pipeline only


class FlashVSRStream:
    """One clip (or one spatial tile of a clip) streamed through FlashVSR; all state is explicit here.

    Usage::

        stream = FlashVSRStream(model, noise=SeededNoise(0, 16, H // 8, W // 8))
        for lr in chunks:               # [1, 3, 25, H, W] first, then [1, 3, 8, H, W], values in [-1, 1]
            out = stream.step(lr)       # out.frames: [1, 3, 21 or 8, H, W]
    """

    def __init__(self, model: FlashVSR, noise: NoiseFn, lcsa: LCSASettings = LCSASettings(),
                 conditioning: DiTConditioning | None = None, decode: bool = True):
        self.model, self.noise, self.lcsa, self.decode = model, noise, lcsa, decode
        self.cond = conditioning if conditioning is not None else model.conditioning()
        self.reset()

    def reset(self) -> None:
        self.state = StreamState(caches=self.model.dit.new_caches(self.lcsa.kv_len))

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> ChunkOutput:
        """Run the next chunk on its LR frames [B, 3, T, H, W] (T = 25 for chunk 0, then 8); H, W multiples of 128."""
        return self.forward_chunk(lr)

    def forward_chunk(self, lr: torch.Tensor) -> ChunkOutput:
        """:meth:`step` without ``no_grad``: the same computation, differentiable (training).

        State carried to the next chunk (KV cache, LQ caches, decoder memory) keeps its autograd history; a trainer
        that steps on across optimiser updates must detach it.
        """
        model, st = self.model, self.state
        first = st.chunk == 0
        expected = FIRST_CHUNK_FRAMES if first else CHUNK_FRAMES
        if lr.shape[2] != expected:
            raise ValueError(f"chunk {st.chunk} takes {expected} LR frames, got {lr.shape[2]}")
        lr = lr.to(model.dtype)
        clips = [lr[:, :, :1]] + list(lr[:, :, 1:].split(TEMPORAL_DOWN, dim=2)) if first else \
            list(lr.split(TEMPORAL_DOWN, dim=2))
        tokens = [t for t in (model.lq_proj(clip, st.lq) for clip in clips) if t is not None]
        count = len(tokens)
        offset = 0 if first else FIRST_CHUNK_LATENTS + CHUNK_LATENTS * (st.chunk - 1)
        noise = self.noise(offset, count, lr.device).to(model.dtype)
        h, w = lr.shape[-2] // SPATIAL_DOWN, lr.shape[-1] // SPATIAL_DOWN
        if noise.shape[2:] != (count, h, w):
            raise ValueError(f"noise of shape {tuple(noise.shape)} for {count} latents of {h}x{w}")
        velocity = model.dit(noise, torch.cat(tokens, dim=1), self.cond, st.caches, offset, self.lcsa)
        latents = noise - velocity
        # the decoder is conditioned on the LR frames aligned with the frames it outputs
        cond = lr[:, :, :FIRST_CHUNK_OUTPUT] if first else torch.cat([st.lr_tail, lr[:, :, :LOOKAHEAD]], dim=2)
        frames = None
        if self.decode and model.vae is not None:  # Full: the Wan VAE, its causal cache carried across chunks
            frames = model.vae.decode(latents, st.vae).clamp_(-1, 1)  # clamped, as the official decode
        elif self.decode:
            frames = model.decoder(latents.transpose(1, 2), cond, st.decoder).transpose(1, 2) * 2 - 1
        first_frame = 0 if first else FIRST_CHUNK_OUTPUT + CHUNK_FRAMES * (st.chunk - 1)
        st.lr_tail = lr[:, :, -LOOKAHEAD:]
        st.chunk += 1
        return ChunkOutput(latents, frames, cond, first_frame)


def run_clip(model: FlashVSR, lr: torch.Tensor, noise: NoiseFn, lcsa: LCSASettings = LCSASettings(),
             on_chunk: Callable[[ChunkOutput], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-clip convenience over :class:`FlashVSRStream` (tests, conformance, small clips).

    Args:
        lr: [1, 3, F, H, W] upsampled LR video in [-1, 1], F = 8k + 1 >= 25.
    Returns:
        (frames [1, 3, F - 4, H, W] before colour fix, latents [1, C, 2k, H/8, W/8]).
    """
    stream = FlashVSRStream(model, noise, lcsa)
    frames, latents = [], []
    for start, end in chunk_lr_ranges(lr.shape[2]):
        out = stream.step(lr[:, :, start:end])
        if on_chunk is not None:
            on_chunk(out)
        frames.append(out.frames)
        latents.append(out.latents)
    return torch.cat(frames, dim=2), torch.cat(latents, dim=2)
