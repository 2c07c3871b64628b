"""Initial weights that make a fresh TCDecoder start as a plain upscaler of its LR conditioning.

Trained from random weights, the decoder spends its first thousands of steps learning to reproduce the picture at
all; on a CPU budget that is most of the run. Instead (in the spirit of the official "identity-init deepen"
layers) the decoder is set up so that, before any training, it outputs a smooth x4 upscale of the bicubic LR it is
conditioned on, and training only has to learn the *difference* to HR:

- stage 0 (1/8 res, one latent = 4 frames): channel (frame, colour, quadrant) = mean of the 4x4 LR-up pixels of that
  quadrant of the 8x8 block (~ one LR pixel), + 1 so the ReLUs pass it; the latent channels get zero weights;
- every nearest-upsample + 3x3 conv pair becomes a bilinear x2 ([1, 2, 1] / 4 taps); the first one, which must also
  put the 2x2 quadrants back in place, uses the tap pattern that is exact for linear ramps;
- TGrow layers route each frame's channels to its own time step; MemBlocks start as identities (last conv zero);
- the last conv maps the signal (image + 1) to the decoder's [0, 1] output range.

Channels outside that path keep small random weights (x ``dormant_scale``), and the path ignores them at first, so
the starting output is exactly the designed upscale while every weight still receives gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from flashvsr_q.model.configs import SPATIAL_DOWN, TEMPORAL_DOWN
from flashvsr_q.model.tc_decoder import MemBlock, TCDecoder, TGrow

OFFSET = 1.0  # keeps the carried image (in [-1, 1]) positive through the ReLUs
BILINEAR = torch.tensor([0.25, 0.5, 0.25])
# nearest x2 of 2 quadrant channels (q0, q1) -> the LR row at full rate: taps (up, centre, down) x quadrant
# 1-D pre-sharpening over LR-pixel offsets; undoes part of the [1, 2, 1] blur that QUADRANT_TAPS adds
PRE_SHARPEN = {-1: -0.25, 0: 1.5, 1: -0.25}
QUADRANT_TAPS = torch.tensor([[0.0, 0.25], [0.25, 0.25], [0.25, 0.0]])


def _cond_index(colour: int, frame: int, row: int, col: int) -> int:
    """Channel of pixel_unshuffle_3d(4, 8, 8): order (c, ff, hh, ww), colour slowest."""
    return ((colour * TEMPORAL_DOWN + frame) * SPATIAL_DOWN + row) * SPATIAL_DOWN + col


def _designed(conv: nn.Conv2d, rows: list[int]) -> torch.Tensor:
    """Zero the given output rows (they get designed weights) and return the weight tensor."""
    w = conv.weight
    w[rows] = 0
    if conv.bias is not None:
        conv.bias[rows] = 0
    return w


@torch.no_grad()
def init_decoder_as_upscaler(decoder: TCDecoder, dormant_scale: float = 0.1, sharpen: float = 1.0) -> None:
    """Set ``decoder`` (any widths with c0 >= 48, c1 >= 13, c2 >= 7, c3 >= 4) to the designed upscaler."""
    layers = decoder.decoder
    for m in layers.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.mul_(dormant_scale)
            if m.bias is not None:
                m.bias.mul_(dormant_scale)
    c0 = layers[1].out_channels
    if c0 < 48 or layers[10].out_channels < 13 or layers[16].out_channels < 7 or layers[22].out_channels < 4:
        raise ValueError("decoder too narrow for the upscaler initialisation")
    frames, colours = TEMPORAL_DOWN, 3
    # stage 0: quadrant means of the LR conditioning, frame-major: channel = (frame * 3 + colour) * 4 + quadrant
    q_index = lambda f, c, qy, qx: (f * colours + c) * 4 + qy * 2 + qx  # noqa: E731
    w = _designed(layers[1], list(range(48)))
    half = SPATIAL_DOWN // 2
    for f in range(frames):
        for c in range(colours):
            for qy in range(2):
                for qx in range(2):
                    k = q_index(f, c, qy, qx)
                    layers[1].bias[k] = OFFSET
                    # quadrant value = PRE_SHARPEN over neighbouring quadrants (LR-pixel positions), each the
                    # mean of its 4x4 pixels; neighbours may sit in the next block (the conv's outer taps)
                    for dy, wy in PRE_SHARPEN.items():
                        for dx, wx in PRE_SHARPEN.items():
                            by, ry = divmod(qy + dy, 2)
                            bx, rx = divmod(qx + dx, 2)
                            for r in range(ry * half, (ry + 1) * half):
                                for col in range(rx * half, (rx + 1) * half):
                                    w[k, _cond_index(c, f, r, col), 1 + by, 1 + bx] += wy * wx / (half * half)
    _identity(layers[3], 48)
    # stage 0 MemBlocks, then nearest x2, TGrow(1) identity
    _identity_tgrow(layers[9], list(range(48)))
    # stage 1 (1/4 res = LR res, still 4 frames): quadrants -> LR pixel, channel = frame * 3 + colour
    w = _designed(layers[10], list(range(13)))
    for f in range(frames):
        for c in range(colours):
            for qy in range(2):
                for qx in range(2):
                    w[f * colours + c, q_index(f, c, qy, qx)] = torch.outer(QUADRANT_TAPS[:, qy], QUADRANT_TAPS[:, qx])
    for m in layers:
        if isinstance(m, MemBlock):
            m.conv[-1].weight.zero_()
            m.conv[-1].bias.zero_()
    # channel 12 becomes a constant ONE (a MemBlock bias); from here on it goes through the same linear maps as the
    # image, so at the end ``image = carried - ONE`` cancels the offset's zero-padding loss at the picture edges
    layers[11].conv[-1].bias[12] = OFFSET
    # the next MemBlock pre-sharpens (x + a * (x - blur x)) to offset the bilinear x2 that follows
    _sharpening_memblock(layers[12], 13, sharpen)
    # ... and puts back the part of the offset that layer 10's taps lost to zero padding at the edges:
    # + (ONE - blur(ONE)), zero inside the picture (layer 10's taps sum to the bilinear kernel on a constant)
    w = layers[12].conv[4].weight
    for j in range(12):
        w[j, 12] -= torch.outer(BILINEAR, BILINEAR)
        w[j, 12, 1, 1] += 1.0
    # TGrow(2): time step s takes frames 2s, 2s + 1 -> channel = frame_in_step * 3 + colour; ONE -> channel 6
    c1 = layers[15].conv.in_channels
    w = layers[15].conv.weight
    w[[s * c1 + j for s in range(2) for j in range(7)]] = 0
    for s in range(2):
        for j in range(6):
            w[s * c1 + j, s * 6 + j, 0, 0] = 1.0
        w[s * c1 + 6, 12, 0, 0] = 1.0
    _bilinear(layers[16], 7)
    _sharpening_memblock(layers[17], 7, sharpen)
    # TGrow(2): time step s takes frame s of the pair -> channel = colour; ONE -> channel 3
    c2 = layers[21].conv.in_channels
    w = layers[21].conv.weight
    w[[s * c2 + j for s in range(2) for j in range(4)]] = 0
    for s in range(2):
        for j in range(3):
            w[s * c2 + j, s * 3 + j, 0, 0] = 1.0
        w[s * c2 + 3, 6, 0, 0] = 1.0
    _bilinear(layers[22], 4)
    _identity(layers[24], 4)
    w = _designed(layers[26], [0, 1, 2])
    for j in range(3):
        w[j, j, 1, 1] = 0.5  # ((image + ONE) - ONE + 1) / 2: the decoder's [0, 1] range
        w[j, 3, 1, 1] = -0.5
        layers[26].bias[j] = 0.5


def _sharpening_memblock(block: MemBlock, channels: int, amount: float) -> None:
    """MemBlock output = x + amount * (x - blur(x)) on the first ``channels`` channels (x >= 0 passes the ReLUs)."""
    conv1, conv2, conv3 = block.conv[0], block.conv[2], block.conv[4]
    _identity(conv1, channels)  # reads x (the first C inputs), not the past
    _identity(conv2, channels)
    w = _designed(conv3, list(range(channels)))
    for j in range(channels):
        w[j, j] = -amount * torch.outer(BILINEAR, BILINEAR)
        w[j, j, 1, 1] += amount


def _identity(conv: nn.Conv2d, channels: int) -> None:
    w = _designed(conv, list(range(channels)))
    for j in range(channels):
        w[j, j, 1, 1] = 1.0


def _bilinear(conv: nn.Conv2d, channels: int) -> None:
    w = _designed(conv, list(range(channels)))
    for j in range(channels):
        w[j, j] = torch.outer(BILINEAR, BILINEAR)


def _identity_tgrow(tgrow: TGrow, channels: list[int]) -> None:
    w = tgrow.conv.weight
    w[channels] = 0
    for j in channels:
        w[j, j, 0, 0] = 1.0

