"""The training forward pass: one streaming chunk with gradients, decoded in parallel over time.

Inference runs :class:`~flashvsr_q.model.streaming.FlashVSRStream` with the TCDecoder stepping frame by frame
(TAEHV's sequential mode). For training the same chunk goes through :meth:`FlashVSRStream.forward_chunk` (the body
of ``step`` without ``no_grad``), and the decoder runs *all time steps of a layer at once*: a MemBlock's "past" is
its own input shifted by one time step, which is exactly what the sequential mode computes for a fresh decoder.
Each convolution then sees ``B*T`` frames in one call instead of ``T`` small calls (several times faster on CPU).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from flashvsr_q.attention import LCSASettings
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.configs import SPATIAL_DOWN, TEMPORAL_DOWN
from flashvsr_q.model.dit import DiTConditioning, WanDiT
from flashvsr_q.model.lq_proj import pixel_unshuffle_3d
from flashvsr_q.model.streaming import FlashVSRStream, tensor_noise
from flashvsr_q.model.tc_decoder import FRAMES_TO_TRIM, MemBlock, TCDecoder, TGrow


def conditioning_with_grad(model: FlashVSR) -> DiTConditioning:
    """:meth:`FlashVSR.conditioning` with gradients, so the time/text embeddings and prompt K/V train too."""
    return WanDiT.conditioning.__wrapped__(model.dit, model.prompt)


def decode_parallel(decoder: TCDecoder, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """TCDecoder on a whole first chunk at once; equals ``decoder(latents, cond, DecoderState())``.

    Args:
        latents: [B, T, C, h, w] DiT outputs x0 (NTCHW).
        cond: [B, 3, 4T - 3, 8h, 8w] upsampled LR frames in [-1, 1] aligned with the output frames.
    Returns:
        [B, 4T - 3, 3, 8h, 8w] frames, roughly in [0, 1].
    """
    pad = (-cond.shape[2]) % TEMPORAL_DOWN
    cond = torch.cat([cond[:, :, :1].expand(-1, -1, pad, -1, -1), cond], dim=2)
    cond = pixel_unshuffle_3d(cond, TEMPORAL_DOWN, SPATIAL_DOWN, SPATIAL_DOWN).transpose(1, 2)  # [B, T, 768, h, w]
    x = torch.cat([cond.to(latents.dtype), latents], dim=2)
    b, t = x.shape[:2]
    x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # [B*T, C, h, w], time fastest per item
    for layer in decoder.decoder:
        if isinstance(layer, MemBlock):
            seq = x.unflatten(0, (b, t))
            past = F.pad(seq[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0))  # zeros before the first time step
            x = layer(x, past.flatten(0, 1))
        elif isinstance(layer, TGrow):
            x = layer.conv(x).unflatten(0, (b, t))  # [B, T, s*C, h, w], earliest step first
            t *= layer.stride
            x = x.unflatten(2, (layer.stride, -1)).flatten(1, 2).flatten(0, 1)
        else:
            x = layer(x)
    return x.unflatten(0, (b, t))[:, FRAMES_TO_TRIM:]


def forward_first_chunk(model: FlashVSR, lr: torch.Tensor, noise: torch.Tensor, cond: DiTConditioning,
                        lcsa: LCSASettings = LCSASettings()) -> torch.Tensor:
    """Chunk 0 of a clip with gradients, exactly the inference computation.

    Args:
        lr: [B, 3, 25, H, W] upsampled LR frames in [-1, 1]; H, W multiples of 128.
        noise: [B, C, 6, H/8, W/8] latent noise.
    Returns:
        frames [B, 3, 21, H, W] in about [-1, 1] (before colour fix), aligned with LR frames 0..20.
    """
    stream = FlashVSRStream(model, tensor_noise(noise), lcsa, conditioning=cond, decode=False)
    out = stream.forward_chunk(lr)
    frames = decode_parallel(model.decoder, out.latents.transpose(1, 2), out.lr)
    return frames.transpose(1, 2) * 2 - 1


def trainable_groups(model: FlashVSR) -> dict[str, list[nn.Parameter]]:
    """Parameters by module: ``decoder``, ``lq_proj``, ``dit`` (the prompt is a buffer and stays fixed)."""
    return {"decoder": list(model.decoder.parameters()), "lq_proj": list(model.lq_proj.parameters()),
            "dit": list(model.dit.parameters())}
