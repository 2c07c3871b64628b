"""Architecture configs: one frozen dataclass and a registry of exact-name presets.

The official presets reproduce FlashVSR v1 / v1.1 (Wan2.1-T2V-1.3B DiT, spec §4.1). ``small`` is the project's
own shipped model and ``test`` the unit-test size; both run exactly the same code at smaller widths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

LQVariant = Literal["v1", "v1.1"]

# Geometry fixed by the architecture, whatever the width: the VAE latent is /8 in space and /4 in time,
# the DiT patch is (1, 2, 2), so one token covers 16x16 output pixels and 4 frames.
SPATIAL_DOWN = 8
TEMPORAL_DOWN = 4
TOKEN_PX = 16
LQ_IN_CHANNELS = 3 * TOKEN_PX * TOKEN_PX  # 768: PixelUnshuffle3d(1, 16, 16) of RGB
DECODER_COND_CHANNELS = 3 * TEMPORAL_DOWN * SPATIAL_DOWN * SPATIAL_DOWN  # 768: PixelUnshuffle3d(4, 8, 8) of RGB


@dataclass(frozen=True)
class FlashVSRConfig:
    """Widths and depths of the three FlashVSR modules.

    Args:
        name: preset name, recorded in checkpoints and reports.
        lq_variant: ``"v1"`` (Buffer_LQ4x_Proj, own-tail cache quirk) or ``"v1.1"`` (Causal_LQ4x_Proj).
        dim, ffn_dim, num_heads, num_layers: the DiT transformer (head_dim = dim / num_heads).
        latent_channels: channels of the VAE latent (noise and x0).
        text_dim, text_len: shape of the fixed prompt tensor ``[1, text_len, text_dim]``.
        freq_dim: size of the sinusoidal timestep embedding.
        lq_channels: output channels of the two causal convolutions of the LQ projection.
        decoder_channels: TCDecoder stage widths, coarse to fine.
        eps: epsilon of every norm in the DiT.
    """

    name: str
    lq_variant: LQVariant = "v1.1"
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    latent_channels: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    lq_channels: tuple[int, int] = (2048, 3072)
    decoder_channels: tuple[int, int, int, int] = (512, 256, 128, 128)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.lq_variant not in ("v1", "v1.1"):
            raise ValueError(f"lq_variant must be 'v1' or 'v1.1', got {self.lq_variant!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 12:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 12 for the 3-D RoPE split")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")
        for field in ("ffn_dim", "num_layers", "latent_channels", "text_dim", "text_len"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_channels(self) -> int:
        """Channels of one patch of the head's output: pt * py * px * latent_channels."""
        return 4 * self.latent_channels

    def replace(self, **changes) -> FlashVSRConfig:
        """A copy with some fields changed (e.g. ``num_layers=2`` for the conformance DiT)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FlashVSRConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        data = dict(data)
        for key in ("lq_channels", "decoder_channels"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


PRESETS: dict[str, FlashVSRConfig] = {
    "flashvsr-v1": FlashVSRConfig(name="flashvsr-v1", lq_variant="v1"),
    "flashvsr-v1.1": FlashVSRConfig(name="flashvsr-v1.1", lq_variant="v1.1"),
    # The shipped demonstration model: fits in < 10 MB in the official file layout.
    "small": FlashVSRConfig(
        name="small", lq_variant="v1.1", dim=128, ffn_dim=384, num_heads=2, num_layers=4, text_dim=64, text_len=16,
        freq_dim=64, lq_channels=(24, 48), decoder_channels=(48, 32, 24, 24),
    ),
    # Unit-test size: every code path, in milliseconds.
    "test": FlashVSRConfig(
        name="test", lq_variant="v1.1", dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8,
        freq_dim=32, lq_channels=(16, 32), decoder_channels=(32, 16, 16, 16),
    ),
}


def get_config(name: str) -> FlashVSRConfig:
    """The preset called exactly ``name``; an unknown name lists the valid ones.

    Example:
        >>> import flashvsr_q as fq
        >>> fq.get_config("flashvsr-v1.1").num_layers
        30
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(PRESETS)}") from None
