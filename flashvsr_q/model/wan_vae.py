"""The Wan2.1 video VAE decoder of the "Full" FlashVSR pipeline (spec §7.2), streamed and spatially tiled.

Why our own module and not diffusers' ``AutoencoderKLWan``: its public ``decode`` clears the causal feature cache at
the start and end of every call, so carrying the cache from one chunk of latents to the next would mean driving its
private ``_feat_map`` / ``_conv_idx`` / ``first_chunk`` internals; its tiling also blends differently (crop and
1-D ramps) from the official mask-weighted average, and it would add a large dependency for about 250 lines of
network. So the cache is an explicit object here, as the TCDecoder's state is.

The network (keys as in ``Wan2.1_VAE.pth``; widths for the official base 96):

    latent z [B, 16, t, h, w] -> z * std + mean -> conv2 (1x1x1) -> decoder.conv1 (3x3x3, 16 -> 384)
    -> middle: Res(384), per-frame single-head attention, Res(384)
    -> 4 stages of 3 Res blocks (384, 384, 192, 96 wide); time x2 + space x2 after stages 0 and 1,
       space x2 after stage 2 -> RMSNorm, SiLU, conv 96 -> 3 -> frames [B, 3, T, 8h, 8w]

Every 3-D convolution is causal in time: it sees the last two input frames of the previous latent step (zeros
before the first), which :class:`FeatureCache` holds. Latents are decoded one at a time, as the official code
does, so chunk by chunk and all at once are the same computation: the first latent gives 1 frame, every later
one 4 (T latents -> 4T - 3 frames on the first call, 4T on later ones, the TCDecoder's arithmetic).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Per-channel statistics of the Wan2.1 latent space (the official WanVideoVAE constants): DiT outputs are
# normalised latents, the decoder wants z * std + mean.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
CACHE_FRAMES = 2  # input frames each causal conv keeps for the next step (its temporal kernel is 3)
SPATIAL_UP = 8


@dataclass(frozen=True)
class WanVAEConfig:
    """Widths of the Wan2.1 VAE (encoder and decoder share them).

    Args:
        name: preset name.
        base_dim: width of the finest stage (96 official).
        z_dim: latent channels (16).
        dim_mult: stage width multipliers, fine to coarse ((1, 2, 4, 4) official; four stages give x8 in space).
        num_res_blocks: residual blocks per encoder stage; the decoder has one more per stage.
        temporal_downsample: which encoder downsamplings also halve time (the decoder mirrors it).
    """

    name: str
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    def __post_init__(self) -> None:
        if len(self.dim_mult) != 4 or len(self.temporal_downsample) != 3:
            raise ValueError("the Wan VAE has 4 stages (dim_mult) and 3 resamplings (temporal_downsample)")
        if self.base_dim < 1 or self.z_dim != len(LATENT_MEAN) or self.num_res_blocks < 1:
            raise ValueError(f"invalid Wan VAE config {self}")

    @property
    def decoder_dims(self) -> list[int]:
        """Decoder widths: the middle, then the four stages coarse to fine."""
        return [self.base_dim * m for m in (self.dim_mult[-1], *self.dim_mult[::-1])]

    def replace(self, **changes) -> WanVAEConfig:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------


class FeatureCache:
    """What the decoder carries from one latent step to the next (one per stream, or per spatial tile).

    ``frames[key]``: the last :data:`CACHE_FRAMES` input frames of the causal conv named ``key`` (fewer after the
    first step); ``steps``: latent frames decoded so far.
    """

    def __init__(self) -> None:
        self.frames: dict[str, torch.Tensor] = {}
        self.steps = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.frames.values())

    def to(self, device: torch.device | str) -> FeatureCache:
        """Move the cached frames (in place), e.g. to the CPU between uses of a tile's cache."""
        self.frames = {k: v.to(device) for k, v in self.frames.items()}
        return self


class CausalConv3d(nn.Conv3d):
    """Conv3d with 'same' spatial zero padding and causal time: kernel_t - 1 past frames, none ahead.

    ``key`` names it in a :class:`FeatureCache`; it is set by :class:`WanVAEDecoder`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int, int]):
        super().__init__(in_channels, out_channels, kernel)
        kt, kh, kw = self.kernel_size
        self.front = kt - 1
        self.spatial_pad = (kw // 2, kw // 2, kh // 2, kh // 2)
        self.key = ""

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        front = self.front
        if past is not None and front:
            x = torch.cat([past.to(x.device), x], dim=2)
            front -= past.shape[2]  # zeros stand in for frames before the first
        return super().forward(F.pad(x, (*self.spatial_pad, front, 0)))

    def step(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Convolve this step's frames ``x`` [B, C, t, H, W] after the cached ones, and cache the newest."""
        past = cache.frames.get(self.key)
        if x.shape[2] >= CACHE_FRAMES or past is None:
            tail = x[:, :, -CACHE_FRAMES:].clone()  # a copy, so the cache does not pin the whole activation
        else:
            tail = torch.cat([past[:, :, x.shape[2] - CACHE_FRAMES:].to(x.device), x], dim=2)
        out = self(x, past)
        cache.frames[self.key] = tail
        return out


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma; ``gamma`` is [C, 1, 1, 1] for videos and [C, 1, 1] for frames."""

    def __init__(self, dim: int, video: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1, 1) if video else (1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """x -> shortcut(x) + conv(SiLU(norm(conv(SiLU(norm(x)))))); indices 0..6 match the official keys."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(),  # index 5 is the (inactive) dropout of the original
            CausalConv3d(out_dim, out_dim, 3),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        skip = self.shortcut(x)
        for layer in self.residual:
            x = layer.step(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + skip


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (no attention across time), plus the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 3 * c, h * w).transpose(1, 2)  # [bt, hw, 3c]
        q, k, v = (part.unsqueeze(1) for part in qkv.chunk(3, dim=-1))  # [bt, 1, hw, c] each
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return self.proj(out).reshape(b, t, c, h, w).transpose(1, 2) + x


class Upsample(nn.Module):
    """Space x2 (nearest, then a 3x3 conv halving the channels); with ``temporal``, time x2 first.

    Time x2: a causal (3, 1, 1) conv to 2C channels whose halves become two consecutive frames. The very first
    latent step skips it (one frame stays one frame), and the step after it sees zeros, not the first step's
    frames, as its past: the official 'Rep' marker, reproduced because the weights were trained with it.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.time_conv is not None and cache.steps > 0:
            x = self.time_conv.step(x, cache).reshape(b, 2, c, t, h, w)
            t *= 2
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, c, t, h, w)  # (frame, half) -> 2 frames, earlier first
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        frames = self.resample[0](frames.float()).type_as(frames)  # nearest upsampling in fp32 (bf16 support)
        frames = self.resample[1](frames)
        return frames.reshape(b, t, c // 2, 2 * h, 2 * w).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# the decoder
# ---------------------------------------------------------------------------------------------------------------


class Decoder3d(nn.Module):
    """``decoder.*``: conv1, middle, upsamples, head (official module names and indices)."""

    def __init__(self, config: WanVAEConfig):
        super().__init__()
        dims = config.decoder_dims
        temporal_upsample = config.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            in_dim = in_dim // 2 if i > 0 else in_dim  # every upsampling halves the channels
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(dims) - 2:
                blocks.append(Upsample(out_dim, temporal=temporal_upsample[i]))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1.step(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        for layer in self.head:
            x = layer.step(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x


class WanVAEDecoder(nn.Module):
    """The decoder half of ``Wan2.1_VAE.pth``: keys ``conv2.*`` and ``decoder.*``."""

    def __init__(self, config: WanVAEConfig):
        super().__init__()
        self.config = config
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)
        self.register_buffer("mean", torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1), persistent=False)
        for name, module in self.named_modules():
            if isinstance(module, CausalConv3d):
                module.key = name

    def step(self, latent: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Decode one latent frame [B, 16, 1, h, w] (DiT output, normalised) -> [B, 3, 1 or 4, 8h, 8w], unclamped."""
        z = latent.float() * self.std.float() + self.mean.float()  # fp32 even after model.to(bf16)
        x = self.conv2(z.to(self.conv2.weight.dtype))
        out = self.decoder(x, cache)
        cache.steps += 1
        return out

    def decode(self, latents: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Decode consecutive latents [B, 16, t, h, w] after those ``cache`` has seen -> frames [B, 3, T', 8h, 8w]
        (T' = 4t - 3 on the video's first call, 4t later), unclamped; one latent at a time, as the official code."""
        device = self.conv2.weight.device
        return torch.cat([self.step(latents[:, :, i : i + 1].to(device), cache) for i in range(latents.shape[2])],
                         dim=2)


def cache_elements(config: WanVAEConfig, height: int, width: int) -> int:
    """Elements a :class:`FeatureCache` holds between latent steps for frames of ``height x width`` output pixels
    (multiples of 8), from the second step on: :data:`CACHE_FRAMES` input frames of every causal conv run by
    ``step`` (the 1x1x1 ``conv2`` and the shortcuts run without a cache). About 2,400 per pixel at the official
    width, i.e. ~9 KiB per output pixel in fp32."""
    dims = config.decoder_dims
    temporal = config.temporal_downsample[::-1]
    pixels = height * width // SPATIAL_UP**2  # at the latent resolution
    total = (config.z_dim + 4 * dims[0]) * pixels  # decoder.conv1 and the middle's two residual blocks
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        in_dim = in_dim // 2 if i > 0 else in_dim
        total += (in_dim + (2 * config.num_res_blocks + 1) * out_dim) * pixels  # the stage's residual blocks
        if i < len(dims) - 2:
            total += out_dim * pixels if temporal[i] else 0  # the upsampling's time_conv
            pixels *= 4
    total += dims[-1] * pixels  # the head's conv
    return CACHE_FRAMES * total


# ---------------------------------------------------------------------------------------------------------------
# streamed, tiled decoding
# ---------------------------------------------------------------------------------------------------------------


def tile_spans(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Tiles [start, end) along one latent axis: starts 0, stride, 2 stride, ... until a tile reaches the end.

    The official rule (``WanVideoVAE.tiled_decode``): a start is skipped when the tile before it already
    covers the end; the last tile may be shorter than ``size``.
    """
    if not 1 <= stride <= size:
        raise ValueError(f"tile stride must be in 1..tile size, got size {size}, stride {stride}")
    spans = []
    for start in range(0, length, stride):
        if start >= stride and start - stride + size >= length:
            break
        spans.append((start, min(start + size, length)))
    return spans


def blend_ramp(length: int, at_start: bool, at_end: bool, border: int) -> torch.Tensor:
    """1-D blending weights of a tile ``length`` pixels long: linear ramps (1/border .. 1) on inner edges."""
    weights = torch.ones(length)
    border = min(border, length)
    ramp = torch.arange(1, border + 1, dtype=torch.float32) / max(border, 1)
    if border and not at_start:
        weights[:border] = ramp
    if border and not at_end:
        weights[length - border:] = ramp.flip(0)  # the end ramp wins where both overlap, as in the official code
    return weights


@dataclass(frozen=True)
class TileSettings:
    """Spatial tiling in latent pixels (official defaults: 60x104 tiles every 30x52, i.e. 480x832 pixels)."""

    size: tuple[int, int] = (60, 104)
    stride: tuple[int, int] = (30, 52)


@dataclass
class _Tile:
    rows: tuple[int, int]  # latent pixels [start, end)
    cols: tuple[int, int]
    weight: torch.Tensor  # [1, 1, 1, 8 * rows, 8 * cols] blending mask
    cache: FeatureCache


class WanVAEStream:
    """Decode a video's latents chunk by chunk, with the causal cache carried across chunks.

    Usage::

        stream = WanVAEStream(decoder, tiles=TileSettings())   # tiles=None: whole frames
        for latents in chunks:                     # [B, 16, t, h, w], consecutive, DiT output (x0, normalised)
            frames = stream.decode_chunk(latents)  # [B, 3, 4t - 3 (first call) or 4t, 8h, 8w], in [-1, 1]

    Frames are NCTHW in [-1, 1] (clamped, as the official decode), the same layout and range as the Tiny
    pipeline's frames (:class:`flashvsr_q.model.ChunkOutput`), before the colour fix. With ``tiles``, each tile
    (official plan and linear blend) has its own cache, so chunked tiled decoding equals the official whole-video
    tiled decode; ``cache_device`` (e.g. ``"cpu"``) parks each tile's cache there while other tiles run.
    """

    def __init__(self, decoder: WanVAEDecoder, tiles: TileSettings | None = None,
                 cache_device: torch.device | str | None = None):
        self.decoder, self.tiles, self.cache_device = decoder, tiles, cache_device
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self._tiles: list[_Tile] = []
        self._shape: tuple[int, int] | None = None

    def cache_bytes(self) -> int:
        """Bytes held between chunks by the causal caches of all tiles (grows with the frame size, not length)."""
        return sum(tile.cache.nbytes() for tile in self._tiles)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole video's latents [B, 16, T, h, w] -> [B, 3, 4T - 3, 8h, 8w] (resets the stream)."""
        self.reset()
        return self.decode_chunk(latents)

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latents [B, 16, t, h, w] of the video -> frames [B, 3, T', 8h, 8w] in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.decoder.config.z_dim:
            raise ValueError(f"expected latents [B, {self.decoder.config.z_dim}, T, h, w], got {tuple(latents.shape)}")
        h, w = latents.shape[-2:]
        if self._shape is None:
            self._shape = (h, w)
            self._tiles = self._plan(h, w)
        elif self._shape != (h, w):
            raise ValueError(f"latents of {h}x{w} after {self._shape[0]}x{self._shape[1]}; reset() for a new video")
        if len(self._tiles) == 1 and self._tiles[0].rows == (0, h) and self._tiles[0].cols == (0, w):
            return self._decode_tile(latents, self._tiles[0]).clamp_(-1, 1)  # one tile: no blending
        total = weights = None
        for tile in self._tiles:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            out = self._decode_tile(latents[..., r0:r1, c0:c1], tile)
            if total is None:
                total = out.new_zeros(*out.shape[:3], SPATIAL_UP * h, SPATIAL_UP * w)
                weights = out.new_zeros(1, 1, 1, SPATIAL_UP * h, SPATIAL_UP * w)
            region = (..., slice(SPATIAL_UP * r0, SPATIAL_UP * r1), slice(SPATIAL_UP * c0, SPATIAL_UP * c1))
            weight = tile.weight.to(out)
            total[region] += out * weight
            weights[region] += weight
        return (total / weights).clamp_(-1, 1)

    def _decode_tile(self, latents: torch.Tensor, tile: _Tile) -> torch.Tensor:
        device = self.decoder.conv2.weight.device
        cache = tile.cache.to(device) if self.cache_device is not None else tile.cache
        frames = self.decoder.decode(latents, cache)
        if self.cache_device is not None:
            cache.to(self.cache_device)
        return frames

    def _plan(self, h: int, w: int) -> list[_Tile]:
        if self.tiles is None:
            return [_Tile((0, h), (0, w), torch.ones(1, 1, 1, SPATIAL_UP * h, SPATIAL_UP * w), FeatureCache())]
        (size_h, size_w), (stride_h, stride_w) = self.tiles.size, self.tiles.stride
        border_h, border_w = SPATIAL_UP * (size_h - stride_h), SPATIAL_UP * (size_w - stride_w)
        plan = []
        for r0, r1 in tile_spans(h, size_h, stride_h):
            rows = blend_ramp(SPATIAL_UP * (r1 - r0), r0 == 0, r0 + size_h >= h, border_h)
            for c0, c1 in tile_spans(w, size_w, stride_w):
                cols = blend_ramp(SPATIAL_UP * (c1 - c0), c0 == 0, c0 + size_w >= w, border_w)
                weight = torch.minimum(rows[:, None], cols[None, :])[None, None, None]
                plan.append(_Tile((r0, r1), (c0, c1), weight, FeatureCache()))
        return plan


# ---------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------

WAN_VAE_PRESETS: dict[str, WanVAEConfig] = {
    "wan2.1": WanVAEConfig("wan2.1"),  # Wan2.1_VAE.pth: base 96, 127 M parameters with the encoder
    "small": WanVAEConfig("small", base_dim=8),  # same code at 1/12 the width: unit tests
}


def get_wan_vae_config(name: str) -> WanVAEConfig:
    if name not in WAN_VAE_PRESETS:
        raise ValueError(f"unknown Wan VAE preset {name!r}; choose one of {', '.join(WAN_VAE_PRESETS)}")
    return WAN_VAE_PRESETS[name]
