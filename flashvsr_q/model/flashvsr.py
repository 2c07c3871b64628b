"""The whole FlashVSR network: DiT + LQ projection + TCDecoder + the fixed prompt tensor (+ the Wan2.1 VAE decoder
of the Full pipeline, when one is attached)."""

from __future__ import annotations

import torch
import torch.nn as nn

from flashvsr_q.attention import AttentionBackend
from flashvsr_q.model.configs import FlashVSRConfig
from flashvsr_q.model.dit import DiTConditioning, WanDiT
from flashvsr_q.model.lq_proj import LQProjection
from flashvsr_q.model.tc_decoder import TCDecoder
from flashvsr_q.model.wan_vae import WanVAEDecoder

PIPELINES = ("tiny", "full")


class FlashVSR(nn.Module):
    """FlashVSR. Build on ``meta`` and load weights with ``assign=True`` to avoid copies.

    State dict: ``dit.*`` (official DiT keys), ``lq_proj.*`` (``LQ_proj_in.ckpt`` keys), ``decoder.*``
    (``TCDecoder.ckpt`` keys) and ``prompt`` ([1, text_len, text_dim], ``posi_prompt.pth``).

    Pipelines: ``tiny`` (the default) decodes latents with the TCDecoder; ``full`` with the Wan2.1 VAE decoder held
    in ``vae`` (``vae.conv2.*``, ``vae.decoder.*``: the decoder half of ``Wan2.1_VAE.pth``). Attaching one
    (``model.vae = decoder``) switches the model to Full; ``model.vae = None`` back to Tiny.

    Example:
        >>> import flashvsr_q as fq
        >>> model = fq.FlashVSR(fq.get_config("test"))          # random weights of a tiny preset
        >>> sorted(name for name, _ in model.named_children())
        ['decoder', 'dit', 'lq_proj']
    """

    def __init__(self, config: FlashVSRConfig):
        super().__init__()
        self.config = config
        self.dit = WanDiT(config)
        self.lq_proj = LQProjection(config)
        self.decoder = TCDecoder(config)
        self.register_buffer("prompt", torch.zeros(1, config.text_len, config.text_dim))
        self.vae: WanVAEDecoder | None
        self.register_module("vae", None)

    @property
    def pipeline(self) -> str:
        """``"full"`` when a Wan2.1 VAE decoder is attached, else ``"tiny"``."""
        return "tiny" if self.vae is None else "full"

    def set_attention(self, backend: AttentionBackend | str, device: torch.device | str | None = None):
        """Select the DiT self-attention backend by name (``auto`` picks and logs) or object; returns it."""
        return self.dit.set_attention(backend, device or self.prompt.device)

    def conditioning(self) -> DiTConditioning:
        """The per-model constants (t, t_mod, prompt K/V); compute once and share between streams/tiles."""
        return self.dit.conditioning(self.prompt)

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embedding.weight.device
