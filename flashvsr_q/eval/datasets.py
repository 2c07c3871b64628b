"""Evaluation datasets: REDS-style folders, VideoLQ-style LR-only clips, folders of HR videos, the held-out clips.

A dataset is a list of :class:`Clip`; each clip opens fresh, streaming frame iterators (uint8 ``[H, W, 3]`` RGB) for
its HR frames (``None`` without ground truth) and its LR frames. Nothing holds a whole clip, except the built-in
``heldout`` clips (two 25-frame clips defined by :func:`flashvsr_q.data.clips.held_out_clips`).

Kinds (``detect_kind`` picks one for ``auto``):

- ``reds``: ``DIR/GT/<clip>/*.png`` (+ optional ``DIR/LR/<clip>/*.png``; without it LR is made on the fly by the
  degradation). GT must be exactly ``scale`` x LR.
- ``videolq``: LR-only clips, ``DIR/<clip>/*.png`` or LR video files; no-reference metrics only.
- ``videos``: a folder of HR video files (or one file); LR made on the fly by the seeded degradation.
- ``heldout``: the built-in held-out footage of the shipped small model (``--dataset heldout``).

HR frames whose sides are not multiples of ``scale`` are cropped at the right/bottom to the nearest multiple
(the degradation needs it); the crop is the same for the GT the output is compared with.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashvsr_q.errors import FlashVSRError

KINDS = ("auto", "reds", "videolq", "videos", "heldout")
DEGRADATIONS = ("bicubic", "realbasicvsr")
BUILTIN = ("heldout",)

FrameSource = Callable[[], Iterator[np.ndarray]]


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
        return all(c.hr is not None for c in self.clips)


def _media(folder: Path) -> tuple[list[Path], list[Path]]:
    from flashvsr_q.eval.clipio import is_video_path, list_images

    videos = sorted(p for p in folder.iterdir() if p.is_file() and is_video_path(p))
    image_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and list_images(p))
    return videos, image_dirs


def detect_kind(path: str | os.PathLike) -> str:
    """``heldout``, ``reds`` (a ``GT`` folder), ``videos`` (video files) or ``videolq`` (folders of images)."""
    if str(path) in BUILTIN:
        return str(path)
    root = Path(path)
    if root.is_file():
        from flashvsr_q.eval.clipio import is_video_path

        if is_video_path(root):
            return "videos"
        raise FlashVSRError(f"{root} is not a video file or a dataset folder")
    if not root.is_dir():
        raise FlashVSRError(f"dataset {root} does not exist (a folder, a video file, or one of: {', '.join(BUILTIN)})")
    if (root / "GT").is_dir():
        return "reds"
    videos, image_dirs = _media(root)
    if videos and not image_dirs:
        return "videos"
    if image_dirs and not videos:
        return "videolq"
    if videos and image_dirs:
        raise FlashVSRError(f"{root} holds both videos and image folders; say which with --dataset-kind")
    raise FlashVSRError(f"{root} holds no GT/ folder, no video files and no folders of images")


def _crop(frame: np.ndarray, scale: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if h < scale or w < scale:
        raise FlashVSRError(f"an HR frame of {w}x{h} is smaller than the scale {scale}")
    return frame[: h - h % scale, : w - w % scale]


def _frames(path: Path, frames: int | None, start: int = 0) -> FrameSource:
    from flashvsr_q.eval.clipio import read_frames

    def open_() -> Iterator[np.ndarray]:
        stop = None if frames is None else start + frames
        return itertools.islice(read_frames(path), start, stop)

    return open_


def _cropped(source: FrameSource, scale: int) -> FrameSource:
    return lambda: (_crop(f, scale) for f in source())


def _degraded(hr: FrameSource, degradation: str, seed: int, scale: int) -> FrameSource:
    from flashvsr_q.eval.degrade import RealBasicVSRDegradation, bicubic_downscale

    if degradation == "bicubic":
        return lambda: (bicubic_downscale(f, scale) for f in hr())
    if degradation == "realbasicvsr":
        return lambda: RealBasicVSRDegradation(seed=seed, scale=scale)(hr())
    raise FlashVSRError(f"unknown degradation {degradation!r}; choose from {', '.join(DEGRADATIONS)}")


def _heldout(frames: int | None, degradation: str, seed: int, scale: int) -> list[Clip]:
    from flashvsr_q.data.clips import held_out_clips

    clips = []
    for i, (name, video) in enumerate(held_out_clips().items()):  # uint8 [T, 3, H, W]
        array = np.ascontiguousarray(video.permute(0, 2, 3, 1).numpy())[:frames]
        hr = _cropped(lambda a=array: iter(a), scale)
        clips.append(Clip(name, lr=_degraded(hr, degradation, seed + i, scale), hr=hr))
    return clips


def load_dataset(path: str | os.PathLike, kind: str = "auto", *, frames: int | None = None,
                 degradation: str = "bicubic", seed: int = 0, scale: int = 4) -> Dataset:
    """Find the clips of a dataset (nothing is decoded yet, except the in-memory ``heldout`` clips).

    Args:
        path: a dataset folder, a video file, or ``heldout``.
        kind: one of :data:`KINDS`.
        frames: at most this many frames per clip (from the first).
        degradation: how LR is made from HR where the dataset has no LR: ``bicubic`` (MATLAB-style antialiased
            x1/scale) or ``realbasicvsr`` (seeded random blur/noise/JPEG, one parameter draw per clip).
        seed: the degradation seed (clip ``i`` uses ``seed + i``).

    Raises:
        FlashVSRError: unknown kind, missing folders, an empty dataset, mismatched GT/LR clip names.
    """
    if kind not in KINDS:
        raise FlashVSRError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    if frames is not None and frames < 1:
        raise FlashVSRError(f"--frames must be >= 1, got {frames}")
    if degradation not in DEGRADATIONS:
        raise FlashVSRError(f"unknown degradation {degradation!r}; choose from {', '.join(DEGRADATIONS)}")
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "heldout":
        if str(path) != "heldout":
            raise FlashVSRError("--dataset-kind heldout takes --dataset heldout")
        return Dataset("heldout", kind, _heldout(frames, degradation, seed, scale))
    root = Path(path)
    if not root.exists():
        raise FlashVSRError(f"dataset {root} does not exist")
    clips: list[Clip] = []
    if kind == "reds":
        gt_root, lr_root = root / "GT", root / "LR"
        if not gt_root.is_dir():
            raise FlashVSRError(f"{root} has no GT/ folder (REDS layout: GT/<clip>/*.png [+ LR/<clip>/*.png])")
        _, gt_dirs = _media(gt_root)
        if lr_root.is_dir():
            _, lr_dirs = _media(lr_root)
            gt_names, lr_names = {p.name for p in gt_dirs}, {p.name for p in lr_dirs}
            if gt_names != lr_names:
                raise FlashVSRError(f"{root}: GT and LR clips differ: {', '.join(sorted(gt_names ^ lr_names))}")
        for i, gt in enumerate(gt_dirs):
            hr = _frames(gt, frames)
            if lr_root.is_dir():
                lr, hr_src = _frames(lr_root / gt.name, frames), hr  # given pairs: GT must be exactly scale x LR
            else:
                hr_src = _cropped(hr, scale)
                lr = _degraded(hr_src, degradation, seed + i, scale)
            clips.append(Clip(gt.name, lr=lr, hr=hr_src))
    elif kind == "videolq":
        if root.is_file():
            clips.append(Clip(root.stem, lr=_frames(root, frames), hr=None))
        else:
            videos, image_dirs = _media(root)
            clips += [Clip(p.stem if p.is_file() else p.name, lr=_frames(p, frames), hr=None)
                      for p in sorted(videos + image_dirs)]
    elif kind == "videos":
        videos = [root] if root.is_file() else _media(root)[0]
        for i, video in enumerate(videos):
            hr = _cropped(_frames(video, frames), scale)
            clips.append(Clip(video.stem, lr=_degraded(hr, degradation, seed + i, scale), hr=hr))
    if not clips:
        raise FlashVSRError(f"dataset {root} ({kind}) holds no clips")
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise FlashVSRError(f"dataset {root}: clip names repeat: {', '.join(sorted(names))}")
    return Dataset(root.name or str(root), kind, clips)
