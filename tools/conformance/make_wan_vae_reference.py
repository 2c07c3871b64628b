"""Reference frames of the official Wan2.1 VAE decode, for tests/model/test_wan_vae.py.

Runs the official ``diffsynth/models/wan_video_vae.py`` of OpenImagingLab/FlashVSR (given by path; it is imported,
never copied) on deterministic random weights written by our own ``synthetic_wan_vae_state`` (loaded strictly, so
this also proves our file key/shape set is the official one), fp32 on the CPU, and stores the latents and frames:

    whole:  official width (base 96), 3 latents of 4x6 -> WanVideoVAE.single_decode (clamped)
    tiled:  small width (base 8), 3 latents of 6x10, tiles 4x4 every 2x2 -> WanVideoVAE.tiled_decode

Weights are not stored: the test regenerates them from the seeds in the metadata.

    python tools/conformance/make_wan_vae_reference.py --official PATH/wan_video_vae.py \
        -o tests/data/wan_vae_reference.safetensors
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from flashvsr_q.model.wan_vae import WAN_VAE_PRESETS
from flashvsr_q.model.wan_vae_file import file_shapes, synthetic_wan_vae_state

WEIGHT_SEED = 0
LATENT_SEED = 1234
CASES = {  # name: (preset, latent shape [B, C, T, h, w], tile size, tile stride)
    "whole": ("wan2.1", (1, 16, 3, 4, 6), None, None),
    "tiled": ("small", (1, 16, 3, 6, 10), (4, 4), (2, 2)),
}


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_wan_video_vae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="path to the official wan_video_vae.py")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    official = load_official(args.official)
    torch.set_grad_enabled(False)

    tensors, meta = {}, {"weight_seed": WEIGHT_SEED, "latent_seed": LATENT_SEED, "cases": {}}
    for name, (preset, shape, tile_size, tile_stride) in CASES.items():
        config = WAN_VAE_PRESETS[preset]
        vae = official.WanVideoVAE(z_dim=config.z_dim, dim=config.base_dim)
        state = synthetic_wan_vae_state(config, WEIGHT_SEED)
        vae.model.load_state_dict(state, strict=True)  # our key/shape set is exactly the official one
        assert {k: tuple(v.shape) for k, v in vae.model.state_dict().items()} == file_shapes(config)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(LATENT_SEED))
        if tile_size is None:
            frames = vae.single_decode(latents, "cpu")
        else:
            frames = vae.tiled_decode(latents, "cpu", tile_size, tile_stride)
        tensors[f"{name}.latents"], tensors[f"{name}.frames"] = latents, frames.contiguous()
        meta["cases"][name] = {"preset": preset, "tile_size": tile_size, "tile_stride": tile_stride}
        saturated = (frames.abs() >= 1).float().mean().item()
        print(f"{name}: {tuple(latents.shape)} -> {tuple(frames.shape)}, std {frames.std():.3f}, "
              f"{saturated:.1%} clamped")
    save_file(tensors, str(args.output), metadata={"reference": json.dumps(meta)})
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
