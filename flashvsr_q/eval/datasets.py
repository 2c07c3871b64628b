"""Evaluation datasets: REDS-style folders, VideoLQ-style LR-only clips, folders of HR videos, the held-out clips.

A dataset is a list of :class:`Clip`; each clip opens fresh, streaming frame iterators (uint8 ``[H, W, 3]`` RGB) for
its HR frames (``None`` without ground truth) and its LR frames. Nothing holds a whole clip, except the built-in
``heldout`` clips (two 25-frame clips defined by :func:`flashvsr_q.data.clips.held_out_clips`).

Kinds (``detect_kind`` picks one for ``auto``):

- ``reds``: ``DIR/GT/<clip>/*.png`` (or ``HR/``), plus optionally ``DIR/LR/<clip>/*.png`` (or ``LQ/``); without LR
  folders the LR is made on the fly by the degradation. Given LR frames must be exactly ``1/scale`` of GT.
- ``videolq``: LR-only clips, ``DIR/<clip>/*.png`` folders or LR video files; no-reference metrics only.
- ``videos``: a folder of HR video files (or one file); LR made on the fly by the seeded degradation.
- ``heldout``: the built-in held-out footage of the shipped small model (``--dataset heldout``).

HR frames whose sides are not multiples of ``scale`` are cropped at the right/bottom to the nearest multiple
(the degradation needs it); ``crop=(W, H)`` then keeps a centred window of at most W x H HR pixels (and the matching
LR window), on the LR pixel grid so that HR and LR stay aligned. The GT the output is compared with is cropped the
same way.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashvsr_q.data.clips import held_out_clips
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.degrade import RealBasicVSRDegradation, bicubic_downscale
from flashvsr_q.video.clips import is_video_path, list_images, read_frames

KINDS = ("auto", "reds", "videolq", "videos", "heldout")
DEGRADATIONS = ("bicubic", "realbasicvsr")
BUILTIN = ("heldout",)
GT_FOLDERS = ("GT", "HR")
LR_FOLDERS = ("LR", "LQ")

FrameSource = Callable[[], Iterator[np.ndarray]]
Crop = tuple[int, int]  # (width, height) in HR pixels


@dataclass(frozen=True)
class Clip:
    """One evaluation clip: ``lr()`` and ``hr()`` open new frame iterators (``hr`` is None without GT)."""

    name: str
    lr: FrameSource
    hr: FrameSource | None


@dataclass(frozen=True)
class Dataset:
    """Clips of one kind; ``has_gt`` says whether full-reference metrics apply."""

    name: str
    kind: str
    clips: list[Clip]

    @property
    def has_gt(self) -> bool:
        """True when every clip has GT frames."""
        return all(c.hr is not None for c in self.clips)


def parse_crop(text: str | None) -> Crop | None:
    """``"384x128"`` -> ``(384, 128)`` (W x H, HR pixels); ``None`` / ``""`` / ``"off"`` -> None."""
    if text is None or str(text).strip().lower() in ("", "off", "none"):
        return None
    width, sep, height = str(text).strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise FlashVSRError(f"--crop takes WxH in HR pixels (e.g. 384x128), got {text!r}")
    return int(width), int(height)


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _media(folder: Path) -> tuple[list[Path], list[Path]]:
    videos = sorted(p for p in folder.iterdir() if p.is_file() and is_video_path(p))
    image_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and list_images(p))
    return videos, image_dirs


def detect_kind(path: str | os.PathLike) -> str:
    """``heldout``, ``reds`` (a ``GT``/``HR`` folder), ``videos`` (video files) or ``videolq`` (folders of images).

    A folder of LR *video files* looks like ``videos`` (HR); say ``kind="videolq"`` for those.

    Raises:
        FlashVSRError: the path does not exist, or holds nothing recognisable, or mixes videos and image folders.
    """
    if str(path) in BUILTIN:
        return str(path)
    root = Path(path)
    if root.is_file():

        if is_video_path(root):
            return "videos"
        raise FlashVSRError(f"{root} is not a video file or a dataset folder")
    if not root.is_dir():
        raise FlashVSRError(f"dataset {root} does not exist (a folder, a video file, or one of: {', '.join(BUILTIN)})")
    if _first_dir(root, GT_FOLDERS) is not None:
        return "reds"
    videos, image_dirs = _media(root)
    if videos and not image_dirs:
        return "videos"
    if image_dirs and not videos:
        return "videolq"
    if videos and image_dirs:
        raise FlashVSRError(f"{root} holds both videos and image folders; say which with --dataset-kind")
    raise FlashVSRError(f"{root} holds no GT/ folder, no video files and no folders of images")


# ---------------------------------------------------------------------------------------------------------------
# frame sources (each call opens a fresh iterator)
# ---------------------------------------------------------------------------------------------------------------


def _to_multiple(frame: np.ndarray, scale: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if h < scale or w < scale:
        raise FlashVSRError(f"an HR frame of {w}x{h} is smaller than the scale {scale}")
    return frame[: h - h % scale, : w - w % scale]


def _window(frame: np.ndarray, crop: Crop, scale: int) -> np.ndarray:
    """The centred window of at most ``crop`` (W, H) on the ``scale`` grid; ``scale`` 1 for LR frames."""
    h, w = frame.shape[:2]
    cw, ch = min(crop[0] // scale, w // scale), min(crop[1] // scale, h // scale)  # in grid cells
    x0, y0 = (w // scale - cw) // 2 * scale, (h // scale - ch) // 2 * scale
    return frame[y0 : y0 + ch * scale, x0 : x0 + cw * scale]


def _hr_view(source: FrameSource, scale: int, crop: Crop | None) -> FrameSource:
    def open_() -> Iterator[np.ndarray]:
        for frame in source():
            frame = _to_multiple(frame, scale)
            yield frame if crop is None else _window(frame, crop, scale)

    return open_


def _lr_view(source: FrameSource, scale: int, crop: Crop | None) -> FrameSource:
    if crop is None:
        return source
    lr_crop = (max(1, crop[0] // scale), max(1, crop[1] // scale))
    return lambda: (_window(frame, lr_crop, 1) for frame in source())


def _frames(path: Path, frames: int | None, start: int = 0) -> FrameSource:
    def open_() -> Iterator[np.ndarray]:
        stop = None if frames is None else start + frames
        return itertools.islice(read_frames(path), start, stop)

    return open_


def _degraded(hr: FrameSource, degradation: str, seed: int, scale: int) -> FrameSource:
    if degradation == "bicubic":
        return lambda: (bicubic_downscale(f, scale) for f in hr())
    if degradation == "realbasicvsr":
        return lambda: RealBasicVSRDegradation(seed=seed, scale=scale)(hr())
    raise FlashVSRError(f"unknown degradation {degradation!r}; choose from {', '.join(DEGRADATIONS)}")


def _hr_clip(name: str, source: FrameSource, degradation: str, seed: int, scale: int, crop: Crop | None) -> Clip:
    hr = _hr_view(source, scale, crop)
    return Clip(name, lr=_degraded(hr, degradation, seed, scale), hr=hr)


# ---------------------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------------------


def _check_options(frames: int | None, degradation: str, scale: int) -> None:
    if frames is not None and frames < 1:
        raise FlashVSRError(f"--frames must be >= 1, got {frames}")
    if degradation not in DEGRADATIONS:
        raise FlashVSRError(f"unknown degradation {degradation!r}; choose from {', '.join(DEGRADATIONS)}")
    if scale < 1:
        raise FlashVSRError(f"the scale must be >= 1, got {scale}")


def _checked(name: str, kind: str, clips: list[Clip]) -> Dataset:
    if not clips:
        raise FlashVSRError(f"dataset {name} ({kind}) holds no clips")
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise FlashVSRError(f"dataset {name}: clip names repeat: {', '.join(sorted(names))}")
    return Dataset(name, kind, clips)


def _heldout(frames: int | None, degradation: str, seed: int, scale: int, crop: Crop | None) -> list[Clip]:
    clips = []
    for i, (name, video) in enumerate(held_out_clips().items()):  # uint8 [T, 3, H, W]
        array = np.ascontiguousarray(video.permute(0, 2, 3, 1).numpy())[:frames]
        clips.append(_hr_clip(name, lambda a=array: iter(a), degradation, seed + i, scale, crop))
    return clips


def video_dataset(paths: Sequence[str | os.PathLike], *, frames: int | None = None, degradation: str = "bicubic",
                  seed: int = 0, scale: int = 4, crop: Crop | None = None, name: str = "videos") -> Dataset:
    """A dataset of HR video files (or image folders) given one by one; LR made by the seeded degradation.

    Clip ``i`` is named after its file's stem and degraded with seed ``seed + i``.

    Raises:
        FlashVSRError: no paths, a path that does not exist, repeated clip names, bad options.
    """
    _check_options(frames, degradation, scale)
    clips = []
    for i, path in enumerate(map(Path, paths)):
        if not path.exists():
            raise FlashVSRError(f"{path} does not exist")
        clips.append(_hr_clip(path.stem if path.is_file() else path.name, _frames(path, frames), degradation,
                              seed + i, scale, crop))
    return _checked(name, "videos", clips)


def load_dataset(path: str | os.PathLike, kind: str = "auto", *, frames: int | None = None,
                 degradation: str = "bicubic", seed: int = 0, scale: int = 4, crop: Crop | None = None) -> Dataset:
    """Find the clips of a dataset (nothing is decoded yet, except the in-memory ``heldout`` clips).

    Args:
        path: a dataset folder, a video file, or ``heldout``.
        kind: one of :data:`KINDS`.
        frames: at most this many frames per clip (from the first).
        degradation: how LR is made from HR where the dataset has no LR: ``bicubic`` (MATLAB-style antialiased
            x1/scale) or ``realbasicvsr`` (seeded random blur/noise/JPEG, one parameter draw per clip).
        seed: the degradation seed (clip ``i`` uses ``seed + i``).
        scale: the super-resolution factor (HR = scale x LR).
        crop: keep a centred window of at most (W, H) HR pixels (``W/scale x H/scale`` LR pixels) of every clip.

    Raises:
        FlashVSRError: unknown kind, missing folders, an empty dataset, mismatched GT/LR clip names.
    """
    if kind not in KINDS:
        raise FlashVSRError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    _check_options(frames, degradation, scale)
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "heldout":
        if str(path) != "heldout":
            raise FlashVSRError("--dataset-kind heldout takes --dataset heldout")
        return _checked("heldout", kind, _heldout(frames, degradation, seed, scale, crop))
    root = Path(path)
    if not root.exists():
        raise FlashVSRError(f"dataset {root} does not exist")
    name = root.name or str(root)
    clips: list[Clip] = []
    if kind == "reds":
        gt_root, lr_root = _first_dir(root, GT_FOLDERS), _first_dir(root, LR_FOLDERS)
        if gt_root is None:
            raise FlashVSRError(f"{root} has no GT/ folder (REDS layout: GT/<clip>/*.png [+ LR/<clip>/*.png])")
        _, gt_dirs = _media(gt_root)
        if lr_root is not None:
            _, lr_dirs = _media(lr_root)
            gt_names, lr_names = {p.name for p in gt_dirs}, {p.name for p in lr_dirs}
            if gt_names != lr_names:
                raise FlashVSRError(f"{root}: GT and LR clips differ: {', '.join(sorted(gt_names ^ lr_names))}")
        for i, gt in enumerate(gt_dirs):
            if lr_root is None:
                clips.append(_hr_clip(gt.name, _frames(gt, frames), degradation, seed + i, scale, crop))
            else:  # given pairs: GT must be exactly scale x LR (checked frame by frame when scored)
                hr = _frames(gt, frames) if crop is None else _hr_view(_frames(gt, frames), scale, crop)
                clips.append(Clip(gt.name, lr=_lr_view(_frames(lr_root / gt.name, frames), scale, crop), hr=hr))
    elif kind == "videolq":
        if root.is_file():
            clips.append(Clip(root.stem, lr=_lr_view(_frames(root, frames), scale, crop), hr=None))
        else:
            videos, image_dirs = _media(root)
            clips += [Clip(p.stem if p.is_file() else p.name, lr=_lr_view(_frames(p, frames), scale, crop), hr=None)
                      for p in sorted(videos + image_dirs)]
    elif kind == "videos":
        videos = [root] if root.is_file() else _media(root)[0]
        return video_dataset(videos, frames=frames, degradation=degradation, seed=seed, scale=scale, crop=crop,
                             name=name) if videos else _checked(name, kind, [])
    return _checked(name, kind, clips)


__all__ = ["BUILTIN", "DEGRADATIONS", "KINDS", "Clip", "Dataset", "detect_kind", "load_dataset", "parse_crop",
           "video_dataset"]
