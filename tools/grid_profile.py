"""Where the faint blocky grid in the small model's output comes from: edge strength by pixel phase.

For every output, the mean absolute difference between neighbouring columns (and rows) is averaged separately for
each phase ``x mod P`` of the boundary. Content averages out over phases; a grid shows up as one phase standing out.
Run on the demo clip with each colour fix, untiled (so neither tile seams nor the colour fix can be the cause):

    python tools/grid_profile.py [--frames 17]

Numbers quoted in docs/small-model.md ("The faint grid").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import flashvsr_q as fq
from flashvsr_q.eval.degrade import bicubic_downscale
from flashvsr_q.infer import upscale_frames
from flashvsr_q.tasks.demo import bicubic_upscale, demo_clip


def phase_profile(frames: np.ndarray, axis: int, period: int) -> np.ndarray:
    """Mean |difference| across boundaries of each phase ``0..period-1`` along ``axis`` (1 rows, 2 columns)."""
    diff = np.abs(np.diff(frames.astype(np.float32), axis=axis))
    per_boundary = diff.mean(axis=tuple(a for a in range(4) if a != axis))
    phase = np.arange(len(per_boundary)) % period
    return np.array([per_boundary[phase == k].mean() for k in range(period)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=17)
    args = parser.parse_args()
    hr = demo_clip(args.frames)
    lr = np.asarray(bicubic_downscale(hr, 4))
    model = fq.load_checkpoint(dtype=torch.float32)
    model.set_attention("sparse", model.device)
    outputs = {"ground truth": hr, "bicubic": bicubic_upscale(lr)}
    for fix in ("none", "adain", "wavelet"):
        outputs[f"model, colour fix {fix}"] = np.stack(list(upscale_frames(model, iter(lr), tile="off",
                                                                           color_fix=fix)))
    print("| output | columns, phase mod 4 | columns, mod 8 | rows, mod 8 | strongest / median (cols mod 8) |")
    print("|---|---|---|---|---|")
    for name, frames in outputs.items():
        c4, c8, r8 = phase_profile(frames, 2, 4), phase_profile(frames, 2, 8), phase_profile(frames, 1, 8)
        fmt = lambda v: " ".join(f"{x:.2f}" for x in v)  # noqa: E731
        print(f"| {name} | {fmt(c4)} | {fmt(c8)} | {fmt(r8)} | {c8.max() / np.median(c8):.2f} |")


if __name__ == "__main__":
    main()
