"""``Wan2.1_VAE.pth``: reading its decoder half, and writing synthetic files in the same format (spec §8).

The official file is a torch zip of a plain state dict (no wrapper, fp32, 194 tensors): ``encoder.*`` and
``conv1.*`` (the encoder side, unused here), ``conv2.*`` and ``decoder.*``. Loading reads it with
``weights_only=True`` and ``mmap``, checks the whole key/shape set strictly (encoder keys included, so a file of
another VAE is refused), and keeps only the decoder tensors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from flashvsr_q.errors import CheckpointError
from flashvsr_q.files import atomic_write
from flashvsr_q.model.loading import WAN_VAE_FILE, check_keys, expected_shapes, torch_file
from flashvsr_q.model.wan_vae import LATENT_MEAN, LATENT_STD, WAN_VAE_PRESETS, WanVAEConfig, WanVAEDecoder

__all__ = ["WAN_VAE_FILE", "file_shapes", "load_wan_vae", "save_wan_vae", "synthetic_wan_vae_state"]

Shapes = dict[str, tuple[int, ...]]


def _residual_shapes(prefix: str, c_in: int, c_out: int) -> Shapes:
    shapes = {
        f"{prefix}.residual.0.gamma": (c_in, 1, 1, 1),
        f"{prefix}.residual.2.weight": (c_out, c_in, 3, 3, 3), f"{prefix}.residual.2.bias": (c_out,),
        f"{prefix}.residual.3.gamma": (c_out, 1, 1, 1),
        f"{prefix}.residual.6.weight": (c_out, c_out, 3, 3, 3), f"{prefix}.residual.6.bias": (c_out,),
    }
    if c_in != c_out:
        shapes |= {f"{prefix}.shortcut.weight": (c_out, c_in, 1, 1, 1), f"{prefix}.shortcut.bias": (c_out,)}
    return shapes


def _attention_shapes(prefix: str, c: int) -> Shapes:
    return {f"{prefix}.norm.gamma": (c, 1, 1), f"{prefix}.to_qkv.weight": (3 * c, c, 1, 1),
            f"{prefix}.to_qkv.bias": (3 * c,), f"{prefix}.proj.weight": (c, c, 1, 1), f"{prefix}.proj.bias": (c,)}


def encoder_shapes(config: WanVAEConfig) -> Shapes:
    """Keys and shapes of the encoder side (``encoder.*`` and the posterior ``conv1``), which we never run."""
    dims = [config.base_dim * m for m in (1, *config.dim_mult)]
    z2 = 2 * config.z_dim  # the encoder predicts mean and log-variance
    shapes: Shapes = {"encoder.conv1.weight": (dims[0], 3, 3, 3, 3), "encoder.conv1.bias": (dims[0],)}
    index = 0
    for stage, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(config.num_res_blocks):
            shapes |= _residual_shapes(f"encoder.downsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if stage < len(config.dim_mult) - 1:
            prefix = f"encoder.downsamples.{index}"
            shapes |= {f"{prefix}.resample.1.weight": (c_out, c_out, 3, 3), f"{prefix}.resample.1.bias": (c_out,)}
            if config.temporal_downsample[stage]:
                shapes |= {f"{prefix}.time_conv.weight": (c_out, c_out, 3, 1, 1), f"{prefix}.time_conv.bias": (c_out,)}
            index += 1
    c = dims[-1]
    shapes |= _residual_shapes("encoder.middle.0", c, c) | _attention_shapes("encoder.middle.1", c)
    shapes |= _residual_shapes("encoder.middle.2", c, c)
    shapes |= {"encoder.head.0.gamma": (c, 1, 1, 1), "encoder.head.2.weight": (z2, c, 3, 3, 3),
               "encoder.head.2.bias": (z2,), "conv1.weight": (z2, z2, 1, 1, 1), "conv1.bias": (z2,)}
    return shapes


def decoder_shapes(config: WanVAEConfig) -> Shapes:
    with torch.device("meta"):
        return expected_shapes(WanVAEDecoder(config))


def file_shapes(config: WanVAEConfig) -> Shapes:
    """Every key of a ``Wan2.1_VAE.pth`` of this config with its shape (encoder side first, as the file)."""
    return encoder_shapes(config) | decoder_shapes(config)


def _config_of(shapes: Shapes, path: Path) -> WanVAEConfig:
    """The official layout at the width this file has (read from the decoder's output conv)."""
    head = shapes.get("decoder.head.2.weight")
    if head is None or len(head) != 5:
        raise CheckpointError(f"{path.name} is not a Wan VAE file: no decoder.head.2.weight [3, C, 3, 3, 3]")
    official = WAN_VAE_PRESETS["wan2.1"]
    return official if head[1] == official.base_dim else official.replace(name="custom", base_dim=head[1])


def load_wan_vae(path: str | os.PathLike, config: WanVAEConfig | None = None, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> WanVAEDecoder:
    """Load the decoder half of a ``Wan2.1_VAE.pth`` (a file, or a folder holding one).

    Args:
        config: the architecture; by default the official one at the width found in the file.
    Raises:
        CheckpointError: a missing or unreadable file (a pickle is refused), or keys/shapes that differ.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WAN_VAE_FILE
    if not path.is_file():
        raise CheckpointError(f"missing {path} (the Full pipeline's Wan2.1 VAE; get it with `flashvsr-q fetch "
                              f"v1.1 --full` or put {WAN_VAE_FILE} from the FlashVSR release there)")
    state = torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of tensors")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = config or _config_of(shapes, path)
    check_keys(file_shapes(config), shapes, path)
    with torch.device("meta"):
        decoder = WanVAEDecoder(config)
    wanted = expected_shapes(decoder)
    decoder.load_state_dict({k: state[k].to(device=device, dtype=dtype) for k in wanted}, strict=True, assign=True)
    # the buffers were built on meta: rebuild them from the constants on the target device
    decoder.mean = torch.tensor(LATENT_MEAN, device=device).view(1, -1, 1, 1, 1)
    decoder.std = torch.tensor(LATENT_STD, device=device).view(1, -1, 1, 1, 1)
    return decoder.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# writing (synthetic files for tests and conformance)
# ---------------------------------------------------------------------------------------------------------------


def _key_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"flashvsr-q-wan-vae:{seed}:{key}".encode()).hexdigest()[:15], 16)


def synthetic_wan_vae_state(config: WanVAEConfig, seed: int = 0, *, decoder_only: bool = False
                            ) -> dict[str, torch.Tensor]:
    """Deterministic random fp32 weights for every key of the file (or only the decoder's).

    Each tensor comes from its own generator seeded by (seed, key), so the decoder half is the same whether or
    not the encoder is generated. Scales keep activations O(1): weights N(0, 1/fan_in), biases N(0, 0.02^2),
    norm gains 1 + N(0, 0.1^2).
    """
    shapes = decoder_shapes(config) if decoder_only else file_shapes(config)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(_key_seed(seed, key)))
        if key.endswith("gamma"):
            state[key] = 1 + 0.1 * noise
        elif key.endswith("bias"):
            state[key] = 0.02 * noise
        else:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            state[key] = noise / fan_in**0.5
    return state


def save_wan_vae(state: dict[str, torch.Tensor], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``state`` as the official file does (torch zip of a plain fp32 state dict), atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; refusing to overwrite")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path
