"""Reading and writing the official FlashVSR file layout, unchanged (spec §8).

    diffusion_pytorch_model_streaming_dmd.safetensors   DiT            fp32, safetensors (read tensor by tensor)
    LQ_proj_in.ckpt                                     LQ projection  bf16, torch zip of a plain state dict
    TCDecoder.ckpt                                      TCDecoder      fp32, torch zip of a plain state dict
    posi_prompt.pth                                     prompt         bf16, torch zip of a bare [1, 512, 4096] tensor

The model is built on ``meta`` and every tensor is assigned already cast to the target dtype, one at a time, so a
5.7 GB fp32 DiT never needs two copies in RAM (safetensors is memory-mapped, torch zips are loaded with ``mmap``).
Torch files are read with ``weights_only=True`` only. Validation is strict: a missing, unexpected or mis-shaped
key is an error that lists the differences.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flashvsr_q.errors import CheckpointError
from flashvsr_q.files import atomic_write, write_json
from flashvsr_q.model.configs import PRESETS, FlashVSRConfig
from flashvsr_q.model.flashvsr import FlashVSR

OFFICIAL_FILES = {
    "dit": "diffusion_pytorch_model_streaming_dmd.safetensors",
    "lq_proj": "LQ_proj_in.ckpt",
    "decoder": "TCDecoder.ckpt",
    "prompt": "posi_prompt.pth",
}
# The "Full" pipeline's decoder (spec §7.2); optional, so not part of OFFICIAL_FILES. Read by model.wan_vae_file.
WAN_VAE_FILE = "Wan2.1_VAE.pth"
FILE_DTYPES = {"dit": torch.float32, "lq_proj": torch.bfloat16, "decoder": torch.float32, "prompt": torch.bfloat16}
# Our own small models in the official layout carry their config here (the official folders have none).
CONFIG_SIDECAR = "flashvsr-q-config.json"
SHOW = 5  # differences listed per kind


def is_official_layout(directory: str | os.PathLike) -> bool:
    return (Path(directory) / OFFICIAL_FILES["dit"]).is_file()


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------


def _require(directory: Path, part: str) -> Path:
    path = directory / OFFICIAL_FILES[part]
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {OFFICIAL_FILES[part]} (official FlashVSR layout expects "
                              f"{', '.join(OFFICIAL_FILES.values())})")
    return path


def _dit_header(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _iter_dit(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            yield key, f.get_tensor(key)


def torch_file(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # zip/pickle errors come in many types; all mean "not a valid checkpoint"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({load_failure(exc)})") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def load_failure(exc: BaseException) -> str:
    """One plain sentence for a failed ``torch.load``: no terminal colour codes, and for a pickle that wants to
    run code, what it asked for (torch's first line would advise ``weights_only=False``, which is never safe here).
    """
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Weights only load failed"):
        detail = next((line for line in lines[1:] if "GLOBAL" in line or "Unsupported" in line
                       or "WeightsUnpickler" in line), None)
        detail = detail.removeprefix("WeightsUnpickler error:").strip().rstrip(".") if detail else None
        return ("it holds pickled Python objects, not only tensors, and was refused without running them"
                + (f": {detail}" if detail else ""))
    return lines[0]


def infer_config(directory: str | os.PathLike, variant: str = "v1.1") -> FlashVSRConfig:
    """The architecture of an official-layout folder: its sidecar config if present, else the official preset.

    The key/shape signature of the DiT must match the official one (any depth), otherwise the folder needs a
    sidecar; ``variant`` picks the LQ projection ("v1" or "v1.1": the files cannot tell them apart).
    """
    directory = Path(directory)
    sidecar = directory / CONFIG_SIDECAR
    if sidecar.is_file():
        try:
            return FlashVSRConfig.from_dict(json.loads(sidecar.read_text()))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{sidecar}: invalid config ({exc})") from None
    shapes = _dit_header(_require(directory, "dit"))
    layers = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")), default=-1)
    official = PRESETS[f"flashvsr-{variant}"] if variant in ("v1", "v1.1") else None
    if official is None:
        raise CheckpointError(f"unknown FlashVSR variant {variant!r}; choose 'v1' or 'v1.1'")
    config = official.replace(num_layers=max(layers, 1))
    check_keys(expected_shapes(FlashVSR(config).dit), shapes, directory / OFFICIAL_FILES["dit"])
    return config


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_keys(expected: dict[str, tuple], got: dict[str, tuple], path: Path) -> None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} {list(got[k])} (expected {list(expected[k])})"
             for k in expected if k in got and got[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" and {len(items) - SHOW} more" if len(items) > SHOW else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:SHOW])}{more}")
        raise CheckpointError(f"{path.name} does not match the model: {'; '.join(parts)}")


def load_official(
    directory: str | os.PathLike, config: FlashVSRConfig | None = None, *, variant: str = "v1.1",
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
) -> FlashVSR:
    """Load an official-layout folder into a :class:`FlashVSR` of ``dtype`` on ``device``.

    Raises:
        CheckpointError: a missing or unreadable file, or keys/shapes that do not match ``config``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    config = config or infer_config(directory, variant)
    paths = {part: _require(directory, part) for part in OFFICIAL_FILES}
    with torch.device("meta"):
        model = FlashVSR(config)
    convert = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731  one tensor at a time

    check_keys(expected_shapes(model.dit), _dit_header(paths["dit"]), paths["dit"])
    try:
        model.dit.load_state_dict({k: convert(v) for k, v in _iter_dit(paths["dit"])}, strict=True, assign=True)
    except (SafetensorError, OSError) as exc:  # a truncated file passes the header check but not the data read
        raise CheckpointError(f"{paths['dit']}: corrupt safetensors data ({exc})") from None
    for part, module in (("lq_proj", model.lq_proj), ("decoder", model.decoder)):
        state = torch_file(paths[part])
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{paths[part]}: expected a plain state dict of tensors")
        check_keys(expected_shapes(module), {k: tuple(v.shape) for k, v in state.items()}, paths[part])
        module.load_state_dict({k: convert(v) for k, v in state.items()}, strict=True, assign=True)
    prompt = torch_file(paths["prompt"])
    if not isinstance(prompt, torch.Tensor) or tuple(prompt.shape) != tuple(model.prompt.shape):
        got = tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise CheckpointError(f"{paths['prompt']}: expected a tensor of shape {tuple(model.prompt.shape)}, got {got}")
    model.prompt = convert(prompt)
    model.dit._rope_tables = None  # built lazily on the right device
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# writing (the same layout; used for synthetic test checkpoints and for our own small model)
# ---------------------------------------------------------------------------------------------------------------


def save_official(model: FlashVSR, directory: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
    """Write ``model`` in the official layout (file dtypes as the official release); returns part -> path.

    Every file is written to a temporary name and renamed; existing files are never replaced unless
    ``overwrite``. A non-official architecture also gets a config sidecar so :func:`load_official` can rebuild it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {part: directory / name for part, name in OFFICIAL_FILES.items()}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise CheckpointError(f"{directory} already holds {', '.join(existing)}; refusing to overwrite")
    to_file = lambda sd, part: {k: v.detach().to("cpu", FILE_DTYPES[part]).contiguous() for k, v in sd.items()}  # noqa: E731
    dit = to_file(model.dit.state_dict(), "dit")
    atomic_write(paths["dit"], lambda tmp: save_file(dict(sorted(dit.items())), tmp))
    for part in ("lq_proj", "decoder"):
        state = to_file(getattr(model, part).state_dict(), part)
        atomic_write(paths[part], lambda tmp, s=state: torch.save(s, tmp))
    prompt = model.prompt.detach().to("cpu", FILE_DTYPES["prompt"]).contiguous()
    atomic_write(paths["prompt"], lambda tmp: torch.save(prompt, tmp))
    official = PRESETS.get(model.config.name) if model.config.name.startswith("flashvsr-") else None
    if official is None or official.replace(num_layers=model.config.num_layers) != model.config:
        sidecar = directory / CONFIG_SIDECAR
        write_json(sidecar, model.config.to_dict())
        paths["config"] = sidecar
    return paths
