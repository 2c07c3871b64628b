"""HR -> LR: MATLAB bicubic x1/s, and the RealBasicVSR two-round random degradation, for frames and whole clips.

Frame layouts accepted by :func:`bicubic_downscale`: uint8 numpy ``[T, H, W, 3]`` (RGB, 0-255) or a float tensor
``[T, 3, H, W]`` in [0, 1]. The random pipeline works on uint8 ``[H, W, 3]`` RGB frames, one at a time.

RealBasicVSR parameters follow mmedit's ``realbasicvsr_c64b20_1x30x8_lr5e-5_150k_reds.py`` (Chan et al., CVPR 2022)
with one parameter set per clip; the per-frame random walks of the training config (``*_step``) are left out so
that every frame of a clip is degraded the same way, as test sets are.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import special

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.video import clips as clipio

PRESETS = ("bicubic", "realbasicvsr")


# ---------------------------------------------------------------------------------------------------------------
# bicubic
# ---------------------------------------------------------------------------------------------------------------


def _check_divisible(height: int, width: int, scale: int) -> None:
    if scale < 1:
        raise FlashVSRError(f"scale must be a positive integer, got {scale}")
    if height % scale or width % scale:
        raise FlashVSRError(f"HR frames are {width}x{height}, not divisible by the scale {scale}; "
                            f"crop them to {width - width % scale}x{height - height % scale} first")


@functools.lru_cache(maxsize=16)
def _imresize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """pyiqa's MATLAB bicubic along one axis as an ``[n_out, n_in]`` float64 matrix.

    Resizing is linear, so applying pyiqa's ``imresize`` to the unit vectors yields its exact operator (kernel,
    antialiasing width and border handling included). Two matrix products then resize a frame in milliseconds,
    where pyiqa's own loop takes about a second per 720p frame on CPU.
    """
    from pyiqa.matlab_utils import imresize  # pyiqa imports torchvision & co: keep it off the import path

    # column j of the identity image is the unit vector e_j; resizing only the height maps it to column j of the
    # operator (the width pass is skipped at scale 1)
    unit = torch.eye(n_in, dtype=torch.float32)[None, None]
    return imresize(unit, sizes=(n_out, n_in))[0, 0].to(torch.float64)


def bicubic_downscale(frames: np.ndarray | torch.Tensor, scale: int = 4) -> np.ndarray | torch.Tensor:
    """MATLAB ``imresize(x, 1/scale, 'bicubic')`` with antialiasing (the classic BI degradation).

    The operator is pyiqa's ``matlab_utils.imresize`` (see :func:`_imresize_matrix`), computed in float64 like
    MATLAB.

    Args:
        frames: uint8 numpy ``[T, H, W, 3]`` RGB, or float tensor ``[T, 3, H, W]`` in [0, 1]. A single frame
            (``[H, W, 3]`` / ``[3, H, W]``) is accepted too. H and W must be divisible by ``scale``.
        scale: integer downscaling factor.

    Returns:
        The same type and layout at ``H/scale x W/scale``: uint8 rounded half away from zero as MATLAB does, or
        float clamped to [0, 1] in the input dtype.
    """
    single = frames.ndim == 3
    if single:
        frames = frames[None]
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise FlashVSRError(f"numpy frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        # torch wants writable memory; decoded frames (PIL, PyAV) are often read-only views
        x = torch.from_numpy(frames if frames.flags.writeable else frames.copy()).permute(0, 3, 1, 2)  # [T,3,H,W]
    elif isinstance(frames, torch.Tensor):
        if not frames.is_floating_point() or frames.ndim != 4 or frames.shape[1] != 3:
            raise FlashVSRError(f"tensor frames must be float [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
        x = frames
    else:
        raise FlashVSRError(f"frames must be a numpy array or a torch tensor, got {type(frames).__name__}")
    height, width = x.shape[-2:]
    _check_divisible(height, width, scale)
    rows = _imresize_matrix(height, height // scale).to(x.device)
    cols = _imresize_matrix(width, width // scale).to(x.device)
    out = rows @ x.to(torch.float64) @ cols.T  # [T, 3, H/s, W/s]
    if isinstance(frames, np.ndarray):
        out = torch.floor(out + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    else:
        out = out.clamp_(0, 1).to(frames.dtype)
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------------------------
# RealBasicVSR: kernels and per-clip parameters
# ---------------------------------------------------------------------------------------------------------------

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc")
KERNEL_PROB = (0.405, 0.225, 0.108, 0.027, 0.108, 0.027, 0.1)
KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}
CODECS = ("libx264", "h264", "mpeg4")


@dataclass(frozen=True)
class Blur:
    """One blur kernel: family, odd size, sigmas along the rotated axes, rotation, shape exponent or sinc cutoff."""

    kind: str
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    angle: float = 0.0
    beta: float = 2.0
    omega: float = 0.0

    def kernel(self) -> np.ndarray:
        """The normalised ``[size, size]`` float32 kernel."""
        half = self.size // 2
        y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
        if self.kind == "sinc":  # circular low-pass: the jinc function with cut-off omega
            r = np.hypot(x, y)
            with np.errstate(divide="ignore", invalid="ignore"):
                k = self.omega * special.j1(self.omega * r) / (2 * np.pi * r)
            k[half, half] = self.omega ** 2 / (4 * np.pi)
        else:
            c, s = math.cos(self.angle), math.sin(self.angle)
            rot = np.array([[c, -s], [s, c]])
            inv = np.linalg.inv(rot @ np.diag([self.sigma_x ** 2, self.sigma_y ** 2]) @ rot.T)
            q = inv[0, 0] * x * x + (inv[0, 1] + inv[1, 0]) * x * y + inv[1, 1] * y * y  # Mahalanobis^2
            if self.kind.startswith("plateau"):
                k = 1.0 / (1.0 + q ** self.beta)
            elif self.kind.startswith("generalized"):
                k = np.exp(-0.5 * q ** self.beta)
            else:
                k = np.exp(-0.5 * q)
        return (k / k.sum()).astype(np.float32)


@dataclass(frozen=True)
class Round:
    """One degradation round: blur (or none), resize factor + interpolation, noise, JPEG quality, codec."""

    blur: Blur | None
    resize_scale: float
    resize_interp: str
    noise: str  # "gaussian" or "poisson"
    noise_level: float  # sigma in 0-255 units, or the Poisson scale
    noise_gray: bool
    jpeg_quality: int
    codec: str
    bitrate: int


@dataclass(frozen=True)
class Final:
    """The shuffled last step: [codec] and [resize to HR/scale + sinc blur with p=0.8], in either order."""

    codec_first: bool
    resize_interp: str
    sinc: Blur | None


@dataclass(frozen=True)
class RealBasicVSRParams:
    """All random choices for one clip (JSON-friendly through :meth:`to_dict`)."""

    seed: int
    round1: Round
    round2: Round
    final: Final

    def to_dict(self) -> dict:
        return asdict(self)


def _sample_blur(rng: np.random.Generator, sigma_max: float, kinds=KERNELS, probs=KERNEL_PROB) -> Blur:
    kind = str(rng.choice(kinds, p=np.asarray(probs) / sum(probs)))
    size = int(rng.choice(KERNEL_SIZES))
    if kind == "sinc":
        return Blur(kind, size, omega=float(rng.uniform(np.pi / 3, np.pi)))
    sigma_x = float(rng.uniform(0.2, sigma_max))
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sigma_y = sigma_x if iso else float(rng.uniform(0.2, sigma_max))
    angle = 0.0 if iso else float(rng.uniform(-np.pi, np.pi))
    beta = 2.0
    if kind.startswith("generalized"):
        beta = float(rng.uniform(0.5, 4))
    elif kind.startswith("plateau"):
        beta = float(rng.uniform(1, 2))
    return Blur(kind, size, sigma_x, sigma_y, angle, beta)


def _sample_round(rng: np.random.Generator, first: bool) -> Round:
    # round 1 always blurs (sigma 0.2-3); round 2 blurs with p=0.8 and less (sigma 0.2-1.5)
    blur = _sample_blur(rng, 3.0 if first else 1.5) if first or rng.uniform() < 0.8 else None
    mode_probs, (lo, hi) = ((0.2, 0.7, 0.1), (0.15, 1.5)) if first else ((0.3, 0.4, 0.3), (0.3, 1.2))
    mode = rng.choice(["up", "down", "keep"], p=mode_probs)
    scale = {"up": rng.uniform(1, hi), "down": rng.uniform(lo, 1), "keep": 1.0}[str(mode)]
    interp = str(rng.choice(list(INTERPOLATIONS)))
    noise = str(rng.choice(["gaussian", "poisson"]))
    if noise == "gaussian":
        level = rng.uniform(1, 30 if first else 25)
    else:
        level = rng.uniform(0.05, 3 if first else 2.5)
    gray = bool(rng.uniform() < 0.4)
    quality = int(rng.integers(30, 96))
    codec = str(rng.choice(CODECS))
    bitrate = int(rng.integers(10_000, 100_001))
    return Round(blur, float(scale), interp, noise, float(level), gray, quality, codec, bitrate)


def sample_params(seed: int) -> RealBasicVSRParams:
    """Draw one clip's degradation parameters from ``seed`` (same seed, same parameters, on every platform)."""
    rng = np.random.default_rng(seed)
    round1 = _sample_round(rng, first=True)
    round2 = _sample_round(rng, first=False)
    sinc = _sample_blur(rng, 0, kinds=("sinc",), probs=(1,)) if rng.uniform() < 0.8 else None
    final = Final(bool(rng.uniform() < 0.5), str(rng.choice(list(INTERPOLATIONS))), sinc)
    return RealBasicVSRParams(seed, round1, round2, final)


# ---------------------------------------------------------------------------------------------------------------
# RealBasicVSR: applying the parameters, frame by frame
# ---------------------------------------------------------------------------------------------------------------


def _blur(img: np.ndarray, blur: Blur | None) -> np.ndarray:
    return img if blur is None else cv2.filter2D(img, -1, blur.kernel(), borderType=cv2.BORDER_REFLECT_101)


def _resize(img: np.ndarray, size: tuple[int, int], interp: str) -> np.ndarray:
    if img.shape[:2] == size:
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=INTERPOLATIONS[interp])


def _noise(img: np.ndarray, r: Round, rng: np.random.Generator) -> np.ndarray:
    if r.noise == "gaussian":
        shape = (*img.shape[:2], 1) if r.noise_gray else img.shape
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(r.noise_level / 255)
    else:  # Poisson noise on the 8-bit quantised signal, scaled (BasicSR / mmedit formulation)
        base = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None] if r.noise_gray else img
        base8 = np.clip(np.round(base * 255), 0, 255)
        levels = 2 ** math.ceil(math.log2(max(2, np.count_nonzero(np.bincount(base8.astype(np.int64).ravel())))))
        base8 = base8 / 255
        noise = ((rng.poisson(base8 * levels) / levels - base8) * r.noise_level).astype(np.float32)
    return np.clip(img + noise, 0, 1)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(_to_uint8(img), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise FlashVSRError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def _even_size(height: int, width: int, scale: float) -> tuple[int, int]:
    # mmedit's is_size_even: the codec that follows needs even sizes; never below 2 px
    return max(2, int(height * scale) // 2 * 2), max(2, int(width * scale) // 2 * 2)


class RealBasicVSRDegradation:
    """RealBasicVSR's two-round degradation with one random parameter set per clip, drawn from ``seed``.

    Each round: blur (iso/aniso/generalised/plateau Gaussian or sinc, 7-21 px; sigma 0.2-3 then 0.2-1.5) ->
    random resize (bilinear/area/bicubic) -> Gaussian (sigma 1-30 / 1-25) or Poisson noise, grey with p=0.4 ->
    JPEG (quality 30-95) -> video compression (libx264/h264/mpeg4 at 1e4-1e5 bit/s, 1 fps) -- in round two the
    codec and the final [resize to HR/scale + sinc blur] run in a random order. The output is quantised to uint8.

    Calling the object twice on the same frames gives bit-identical output; noise differs from frame to frame but
    follows a stream seeded by ``seed``.

    Example::

        lr_frames = list(RealBasicVSRDegradation(seed=3)(hr_frames))   # hr_frames: iterable of uint8 [H, W, 3]
    """

    def __init__(self, seed: int = 0, scale: int = 4) -> None:
        self.seed = int(seed)
        self.scale = int(scale)
        self.params = sample_params(self.seed)

    def __call__(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Degrade a clip. ``frames``: uint8 ``[H, W, 3]`` RGB (same size); yields uint8 ``[H/s, W/s, 3]``."""
        iterator = iter(frames)
        first = next(iterator, None)
        if first is None:
            return
        if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
            raise FlashVSRError(f"frames must be uint8 [H, W, 3], got {first.dtype} {first.shape}")
        height, width = first.shape[:2]
        _check_divisible(height, width, self.scale)
        target = (height // self.scale, width // self.scale)
        p = self.params
        size1 = _even_size(height, width, p.round1.resize_scale)
        size2 = _even_size(*size1, p.round2.resize_scale)
        noise_rngs = [np.random.default_rng([self.seed, stage]) for stage in (1, 2)]

        def frame_ops(frames: Iterable[np.ndarray], r: Round, size: tuple[int, int],
                      rng: np.random.Generator) -> Iterator[np.ndarray]:
            for frame in frames:
                img = frame.astype(np.float32) / 255
                img = _resize(_blur(img, r.blur), size, r.resize_interp)
                yield _to_uint8(_jpeg(_noise(img, r, rng), r.jpeg_quality))

        def to_target(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            for frame in frames:
                img = _resize(frame.astype(np.float32) / 255, target, p.final.resize_interp)
                yield _to_uint8(_blur(img, p.final.sinc))

        stream = chain([first], iterator)
        stream = frame_ops(stream, p.round1, size1, noise_rngs[0])
        stream = clipio.codec_roundtrip(stream, p.round1.codec, p.round1.bitrate)
        stream = frame_ops(stream, p.round2, size2, noise_rngs[1])
        if p.final.codec_first:
            stream = to_target(clipio.codec_roundtrip(stream, p.round2.codec, p.round2.bitrate))
        else:
            stream = clipio.codec_roundtrip(to_target(stream), p.round2.codec, p.round2.bitrate)
        yield from stream

    def degrade_clip(self, frames: np.ndarray) -> np.ndarray:
        """Convenience for a clip in memory: uint8 ``[T, H, W, 3]`` -> uint8 ``[T, H/s, W/s, 3]``."""
        return np.stack(list(self(frames)))


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradeResult:
    """What :func:`degrade_video` wrote."""

    path: Path
    frames: int
    hr_size: tuple[int, int]  # (width, height)
    lr_size: tuple[int, int]
    preset: str
    seed: int
    params: dict | None  # RealBasicVSR parameters, None for bicubic
    written: str = ""  # what the file is (codec, pixel format, audio), for the summary line


def degrade_video(src: str | os.PathLike, dst: str | os.PathLike, preset: str = "bicubic", seed: int = 0,
                  scale: int = 4, overwrite: bool = False, lossless: bool = False) -> DegradeResult:
    """Make LR footage from an HR video file or image folder, streaming frame by frame.

    ``dst`` is a video file if it has a video extension, at the source frame rate with the source's audio and
    subtitles copied: H.264 yuv420p that plays everywhere, or with ``lossless`` exact RGB (libx264rgb CRF 0) for
    evaluation, where the LR must carry only the degradation asked for. Otherwise it is a folder of PNGs
    (``00000000.png``, ...), always exact. It is written under a temporary name and renamed when complete; on any
    error nothing is left at ``dst``.

    Raises:
        FlashVSRError: unknown preset, missing/corrupt input, no video stream, size not divisible by ``scale``,
            ``dst`` exists (without ``overwrite``).
    """
    if preset not in PRESETS:
        raise FlashVSRError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    src, dst = Path(src), Path(dst)
    info = clipio.probe(src)
    _check_divisible(info.height, info.width, scale)
    if src.resolve() == dst.resolve():
        raise FlashVSRError("the output must not be the input")
    frames = clipio.read_frames(src)
    if preset == "bicubic":
        lr_frames = (bicubic_downscale(frame, scale) for frame in frames)
        params = None
    else:
        degradation = RealBasicVSRDegradation(seed, scale)
        lr_frames = degradation(frames)
        params = degradation.params.to_dict()
    with clipio.ClipWriter(dst, fps=info.fps, overwrite=overwrite, lossless=lossless, audio_from=src) as writer:
        for frame in lr_frames:
            writer.write(frame)
        writer.close()
    return DegradeResult(dst, writer.count, (info.width, info.height), (info.width // scale, info.height // scale),
                         preset, int(seed), params, writer.describe())
