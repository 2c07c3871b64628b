"""How far can a *linear* x4 upsampler beat bicubic here, and what does the TCDecoder's layout take away?

    python tools/bounds.py [--supports 5 7 9 11] [--clips 120] [--json OUT.json]

The TCDecoder sees its LR conditioning only as 8x8 pixel-unshuffled blocks: every signal starts at 1/8 of the
output rate (half the LR rate) and reaches full rate through three nearest x2 upsamplings followed by
convolutions, every layer shift-equivariant at its own rate. So an LR frame that repeats every 2 pixels down the
columns (any content along the rows) makes every block row of the conditioning identical, and, with latents that
do not vary down the columns either, the decoded frame is constant down the columns, whatever the weights
(tests/train/test_bounds.py checks it on the shipped model); the same holds across. For ``(-1)^y s(x)`` the
decoder keeps nothing of the alternation along y, for any ``s``: it is blind along whole lines of the LR
spectrum (y-frequency at the LR Nyquist, any x-frequency, and vice versa), not at three points.

This module fits, in closed form (ridge least squares on training crops), the best linear upsampler of three
families and scores it on the held-out clips as :mod:`flashvsr_q.train.measure` scores the model (8-bit frames,
RGB PSNR over 21 frames), except that frames are rounded to 8 bits where the upscaler's writer truncates
(bicubic: 31.70 dB here, 31.68 there, on Big Buck Bunny):

``free``      each of the 16 output phases of an LR pixel is any linear function of its ``K x K`` LR window;
``blind``     ``free`` with every ``(-1)^y s(x)`` and ``(-1)^x s(y)`` in its null space: each column of each
              phase's window sums to zero with alternating signs down it, each row across it. A linear decoder
              answers such a pattern with an output constant along the alternation; averaged over the LR shifts
              it does not see (natural footage is stationary, and least squares is convex), that answer is zero,
              and the average is no worse. So ``blind K x K`` bounds every decoder that is linear in its LR
              conditioning and reaches ``K x K`` LR pixels;
``designed``  the picture path of :func:`~flashvsr_q.train.init.init_decoder_as_upscaler`: a ``K x K`` LR
              prefilter on stage 0's 4x4 means of the bicubic conditioning, then the fixed [1, 2, 1] quadrant merge
              and two bilinear x2 stages (quadratic B-spline synthesis); the prefilter is fitted.

Window offsets run from ``-(K - 1) // 2`` to ``K // 2``; borders are replicated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flashvsr_q.data.clips import SCALE, ClipSpec, bicubic_lr, held_out_clips, sample_clip, upsample
from flashvsr_q.files import write_json
from flashvsr_q.train.measure import psnr

FAMILIES = ("free", "blind", "designed")
MERGE = torch.tensor([1.0, 2.0, 1.0]) / 4  # the quadrant merge of the designed path (train/init.py QUADRANT_TAPS)


def _pad(x: torch.Tensor, k: int) -> torch.Tensor:
    before, after = (k - 1) // 2, k // 2
    return F.pad(x, (before, after, before, after), mode="replicate")


def window_features(lr: torch.Tensor, k: int) -> torch.Tensor:
    """LR planes [N, 1, h, w] -> [N * h * w, k * k]: the ``k x k`` window around every LR pixel."""
    return F.unfold(_pad(lr, k), k).transpose(1, 2).reshape(-1, k * k)


def phase_targets(hr: torch.Tensor) -> torch.Tensor:
    """HR planes [N, 1, 4h, 4w] -> [N * h * w, 16]: the 4x4 output block of every LR pixel."""
    return F.pixel_unshuffle(hr, SCALE).flatten(2).transpose(1, 2).reshape(-1, SCALE * SCALE)


def designed_features(lr: torch.Tensor, k: int) -> torch.Tensor:
    """LR planes [N, 1, h, w] -> [N * 4h * 4w, k * k]: the designed synthesis of each shifted stage-0 input."""
    means = F.avg_pool2d(upsample(lr), SCALE)  # what stage 0 reads: 4x4 means of the bicubic conditioning
    merged = F.conv2d(F.pad(means, (1, 1, 1, 1), mode="replicate"), torch.outer(MERGE, MERGE)[None, None])
    # pad before interpolating, so every shifted window is a crop of one image: the fitted prefilter amplifies
    # (taps of magnitude ~50), and per-window edge handling would dominate the border pixels' error
    synthesis = _pad(merged, k)
    for _ in range(2):
        synthesis = F.interpolate(synthesis, scale_factor=2, mode="bilinear", align_corners=False)
    height, width = lr.shape[-2] * SCALE, lr.shape[-1] * SCALE
    windows = [synthesis[..., SCALE * dy : SCALE * dy + height, SCALE * dx : SCALE * dx + width]
               for dy in range(k) for dx in range(k)]
    return torch.cat(windows, 1).permute(0, 2, 3, 1).reshape(-1, k * k)


def blind_null_space(k: int) -> torch.Tensor:
    """Basis [k*k + 1, (k - 1)**2 + 1] of the window weights (and the free bias) blind to the LR-Nyquist lines.

    One constraint per column (alternating sum down it) and per row (across it); they share one dependency (the
    checkerboard sum), so 2k - 1 are independent.
    """
    dy, dx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    lines = [((-1.0) ** dy) * (dx == j) for j in range(k)] + [((-1.0) ** dx) * (dy == j) for j in range(k)]
    constraints = torch.cat([torch.stack(lines).reshape(2 * k, -1).double(), torch.zeros(2 * k, 1).double()], 1)
    return torch.linalg.svd(constraints, full_matrices=True).Vh[2 * k - 1 :].T


class LinearUpsampler:
    """One family at one support: accumulate the normal equations over clips, solve, upsample."""

    def __init__(self, family: str, k: int, ridge: float = 1e-4):
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        self.family, self.k, self.ridge = family, k, ridge
        n, outputs = k * k + 1, 1 if family == "designed" else SCALE * SCALE
        self.gram = torch.zeros(n, n, dtype=torch.float64)
        self.cross = torch.zeros(n, outputs, dtype=torch.float64)
        self.weights: torch.Tensor | None = None

    def _features(self, lr: torch.Tensor) -> torch.Tensor:
        make = designed_features if self.family == "designed" else window_features
        x = make(lr, self.k).double()
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)

    def add(self, lr: torch.Tensor, hr: torch.Tensor) -> None:
        """One pair of planes, LR [N, 1, h, w] and HR [N, 1, 4h, 4w], values in [0, 1]."""
        x = self._features(lr)
        y = (hr.reshape(-1, 1) if self.family == "designed" else phase_targets(hr)).double()
        self.gram += x.T @ x
        self.cross += x.T @ y

    def solve(self) -> torch.Tensor:
        eye = torch.eye(len(self.gram), dtype=torch.float64)
        if self.family == "blind":
            basis = blind_null_space(self.k)
            reduced = basis.T @ self.gram @ basis + self.ridge * eye[: basis.shape[1], : basis.shape[1]]
            self.weights = basis @ torch.linalg.solve(reduced, basis.T @ self.cross)
        else:
            self.weights = torch.linalg.solve(self.gram + self.ridge * eye, self.cross)
        return self.weights

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        """LR planes [N, 1, h, w] -> HR planes [N, 1, 4h, 4w]."""
        if self.weights is None:
            raise RuntimeError("solve() first")
        n, _, h, w = lr.shape
        y = (self._features(lr) @ self.weights).float()
        if self.family == "designed":
            return y.reshape(n, 1, h * SCALE, w * SCALE)
        return F.pixel_shuffle(y.reshape(n, h * w, -1).transpose(1, 2).reshape(n, -1, h, w), SCALE)


def planes(frames: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] -> [3T, 1, H, W]: colours are upsampled alike, one plane at a time."""
    return frames.reshape(-1, 1, *frames.shape[-2:])


def fit(families: tuple[str, ...], supports: tuple[int, ...], clips: int, seed: int = 0, ridge: float = 1e-4,
        spec: ClipSpec = ClipSpec(frames=3, size=128)) -> list[LinearUpsampler]:
    """Fit every (family, support) on ``clips`` training crops drawn like the training batches."""
    models = [LinearUpsampler(f, k, ridge) for f in families for k in supports]
    g = torch.Generator().manual_seed(seed)
    for _ in range(clips):
        _, hr = sample_clip(spec, g)
        hr = (hr.transpose(0, 1) + 1) / 2  # [T, 3, S, S] in [0, 1]
        lr = bicubic_lr(hr)
        for m in models:
            m.add(planes(lr), planes(hr))
    for m in models:
        m.solve()
    return models


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().numpy()


def score(models: list[LinearUpsampler], frames: int = 21) -> dict[str, dict[str, float]]:
    """{clip: {"bicubic": psnr, "<family> <k>x<k>": psnr, ...}} on the held-out clips (mean over frames)."""
    results: dict[str, dict[str, float]] = {}
    for name, hr_u8 in held_out_clips().items():
        hr = hr_u8[:frames].float() / 255
        lr = bicubic_lr(hr)
        row = {"bicubic": float(np.mean([psnr(_to_uint8(upsample(lr[t : t + 1])), _to_uint8(hr[t : t + 1]))
                                          for t in range(frames)]))}
        for m in models:
            out = [m(planes(lr[t : t + 1])).reshape(hr[t : t + 1].shape) for t in range(frames)]
            row[f"{m.family} {m.k}x{m.k}"] = float(np.mean([psnr(_to_uint8(o), _to_uint8(hr[t : t + 1]))
                                                            for t, o in enumerate(out)]))
        results[name] = row
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    clips = list(results)
    lines = ["| upsampler | " + " | ".join(f"{c} (dB, vs bicubic)" for c in clips) + " |",
             "|---|" + "---|" * len(clips)]
    for method in results[clips[0]]:
        cells = [f"{results[c][method]:.2f} ({results[c][method] - results[c]['bicubic']:+.2f})" for c in clips]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/bounds.py", description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--supports", nargs="+", type=int, default=[5, 7, 9, 11], help="LR window sides K")
    parser.add_argument("--clips", type=int, default=120, help="training crops for the fit (3 frames, 128 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ridge", type=float, default=1e-4,
                        help="ridge added to the normal equations (the designed family is sensitive to it)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.supports) or args.clips < 1:
        parser.error("--supports and --clips must be positive")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = score(fit(tuple(args.families), tuple(args.supports), args.clips, args.seed, args.ridge))
    print(format_table(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
