"""Held-out quality of a model through the full inference path, against bicubic upscaling.

    python -m flashvsr_q.train.measure [CHECKPOINT] [--color-fix none adain wavelet] [--json OUT.json]

CHECKPOINT is a model folder (official layout, e.g. ``checkpoints/flashvsr-small``; default: the shipped model)
or a Lightning ``.ckpt`` written by ``flashvsr-q train``. For every held-out clip
(:func:`~flashvsr_q.data.clips.held_out_clips`: never trained on) the HR frames are degraded with the training
degradation (bicubic x1/4, 8-bit), upsampled x4 with bicubic, run through ``run_clip`` (the streaming engine,
``sparse`` attention, seeded noise) and colour-fixed; PSNR (RGB) and SSIM of the 8-bit frames against the HR
frames are averaged over the 21 output frames. ``bicubic`` is the upsampled LR itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.data.clips import held_out_clips, make_pair
from flashvsr_q.files import write_json
from flashvsr_q.infer.colorfix import COLOR_FIXES, color_fix, to_uint8
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.streaming import SeededNoise, run_clip
from flashvsr_q.train.run import init_model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def frame_metrics(out: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Mean per-frame PSNR / SSIM of uint8 videos [3, T, H, W]."""
    from skimage.metrics import structural_similarity

    a = out.permute(1, 2, 3, 0).numpy()
    b = hr.permute(1, 2, 3, 0).numpy()
    p = [psnr(x, y) for x, y in zip(a, b)]
    s = [structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)]
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}


def load_for_measure(path: str | os.PathLike | None) -> FlashVSR:
    """A model folder (via ``load_checkpoint``) or a Lightning checkpoint of a training run, in fp32 on CPU."""
    if path is not None and str(path).endswith(".ckpt") and Path(path).is_file():

        state = torch.load(str(path), map_location="cpu", weights_only=False)["state_dict"]
        model = init_model("small", 0)  # the training runs' preset (recipe.model)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        return model.eval()

    return load_checkpoint(path, dtype=torch.float32)


@torch.no_grad()
def measure(model: FlashVSR, color_fixes: tuple[str, ...] = COLOR_FIXES, seed: int = 0,
            attention: str = "sparse", clips: dict[str, torch.Tensor] | None = None) -> dict[str, dict]:
    """{clip: {"bicubic": {psnr, ssim}, "model+<fix>": {psnr, ssim}, ...}} on the held-out clips."""
    model.set_attention(attention, "cpu")
    results: dict[str, dict] = {}
    for name, hr_u8 in (clips if clips is not None else held_out_clips()).items():
        lr_up, _ = make_pair(hr_u8)  # [3, 25, H, W] in [-1, 1]
        out_frames = hr_u8.shape[0] - 4
        hr = hr_u8[:out_frames].permute(1, 0, 2, 3)  # [3, 21, H, W] uint8
        h, w = lr_up.shape[-2:]
        frames, _ = run_clip(model, lr_up[None].to(model.dtype), SeededNoise(seed, model.config.latent_channels,
                                                                            h // 8, w // 8))
        ref = lr_up[None, :, :out_frames]
        row = {"size": f"{w}x{h}", "frames": out_frames, "bicubic": frame_metrics(to_uint8(ref[0]), hr)}
        for fix in color_fixes:
            row[f"model+{fix}"] = frame_metrics(to_uint8(color_fix(frames.float(), ref, fix)[0]), hr)
        results[name] = row
    return results


def format_table(results: dict[str, dict]) -> str:
    lines = ["| clip | size | method | PSNR (dB) | SSIM | vs bicubic |", "|---|---|---|---|---|---|"]
    for clip, row in results.items():
        base = row["bicubic"]["psnr"]
        for method, m in row.items():
            if isinstance(m, dict):
                lines.append(f"| {clip} | {row['size']} | {method} | {m['psnr']:.2f} | {m['ssim']:.4f} | "
                             f"{m['psnr'] - base:+.2f} dB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashvsr_q.train.measure", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="model folder or a training run's Lightning .ckpt (default: the shipped model)")
    parser.add_argument("--color-fix", nargs="+", default=list(COLOR_FIXES), choices=COLOR_FIXES)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0, as the upscaler)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = measure(load_for_measure(args.checkpoint), tuple(args.color_fix), args.seed)
    print(format_table(results))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
