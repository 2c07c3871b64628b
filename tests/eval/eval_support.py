"""Synthetic frames and folders for the eval runner tests (importable as ``eval.eval_support``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_clip(seed: int, frames: int = 4, size: int = 128) -> np.ndarray:
    """uint8 [T, size, size, 3]: moving sine gratings (a different pattern per seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase, freq = rng.uniform(0, 6, 3), rng.uniform(5, 9, 3)
    clip = [np.stack([127 + 100 * np.sin((xx + 2 * t) / freq[c] + yy / (freq[c] + 3) + phase[c]) for c in range(3)], -1)
            for t in range(frames)]
    return np.stack(clip).round().astype(np.uint8)


def write_pngs(folder: Path, frames: np.ndarray) -> None:
    """``folder/00000000.png``, ... one PNG per frame (the folder must not exist)."""
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:08d}.png")
