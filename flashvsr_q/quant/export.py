"""fp8 export in the official FlashVSR file layout, for other front-ends (ComfyUI-style "scaled fp8").

    OUT/
      diffusion_pytorch_model_streaming_dmd.safetensors   the DiT, official key names (no prefix):
          <linear>.weight         float8_e4m3fn [out, in]   the DiT block linears (q/k/v/o of both attentions, ffn.0/2)
          <linear>.scale_weight   float32 []                per-tensor scale: weight = weight.float() * scale_weight
          scaled_fp8              float8_e4m3fn [0]         marker: "this file uses scale_weight" (ComfyUI convention)
          everything else         bfloat16                  same keys and shapes as the official file
      LQ_proj_in.ckpt, TCDecoder.ckpt, posi_prompt.pth     as in the official release (bf16 / fp32 / bf16 torch zips)
      flashvsr-q-config.json                               only for architectures that are not an official preset

This is the convention of ComfyUI's ``scaled_fp8`` checkpoints and of the Wan "fp8_scaled" files loaded by
ComfyUI-WanVideoWrapper: the scale is per tensor (amax / 448), applied after upcasting, so a loader that knows
the convention computes exactly ``fp8.float() * scale``. A loader that ignores ``scale_weight`` would compute
garbage, which is why the marker key is there. :func:`read_fp8_official` reads the folder back (dequantized).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from flashvsr_q.errors import CheckpointError
from flashvsr_q.files import staging_dir
from flashvsr_q.model import OFFICIAL_FILES, PRESETS, FlashVSR, FlashVSRConfig
from flashvsr_q.model.loading import CONFIG_SIDECAR, FILE_DTYPES
from flashvsr_q.quant.checkpoint import replace_dir, write_safetensors
from flashvsr_q.quant.weight_only import float_state_dict

FP8_LAYERS = r"blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)|blocks\.\d+\.ffn\.(0|2)"  # DiT-relative fqns
E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
MARKER = "scaled_fp8"
SCALE = "scale_weight"


def fp8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3: (weight_fp8, scale fp32 []) with weight ~= weight_fp8.float() * scale."""
    w = weight.detach().float()
    scale = (w.abs().amax() / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    return (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale.reshape(())


def float_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear as a float tensor, whatever quantized form it is in (torchao, bitsandbytes)."""
    weight = module.weight
    if type(module) is nn.Linear:
        return weight.dequantize() if type(weight.data) is not torch.Tensor else weight.detach()
    import bitsandbytes as bnb

    if isinstance(module, bnb.nn.Linear8bitLt):
        cb = weight.CB if weight.CB is not None else module.state.CB
        scb = weight.SCB if weight.SCB is not None else module.state.SCB
        return cb.float() * scb.float()[:, None] / 127.0
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    raise TypeError(f"cannot read the weight of a {type(module).__name__}")


def export_fp8_official(model: FlashVSR, out_dir: str | os.PathLike, *, layers: str = FP8_LAYERS,
                        overwrite: bool = False) -> dict[str, Path]:
    """Write ``model`` in the official layout with fp8 e4m3 DiT linears (see module docstring).

    Args:
        layers: regex (full match) over DiT-relative module names choosing the layers stored in fp8.
    Returns:
        part -> path of every file written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir} already exists; refusing to overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(layers)
    tmp = staging_dir(out_dir)
    try:
        tensors: dict[str, torch.Tensor] = {MARKER: torch.empty(0, dtype=torch.float8_e4m3fn)}
        done = set()
        for name, module in model.dit.named_modules():
            if pattern.fullmatch(name) and hasattr(module, "weight"):
                tensors[f"{name}.weight"], tensors[f"{name}.{SCALE}"] = fp8_quantize(float_weight(module))
                if module.bias is not None:
                    tensors[f"{name}.bias"] = module.bias.detach().to(torch.bfloat16)
                done.add(name)
        if not done:
            raise CheckpointError(f"no DiT layer matches {layers!r}")
        for key, value in model.dit.state_dict().items():
            parts = key.split(".")
            if not any(".".join(parts[:i]) in done for i in range(1, len(parts))):  # also <layer>.weight.absmax
                value = value.dequantize() if type(value) is not torch.Tensor else value
                tensors[key] = value.detach().to(torch.bfloat16)
        tensors = dict(sorted(tensors.items()))
        write_safetensors(tmp / OFFICIAL_FILES["dit"], tensors, {"format": "pt", "flashvsr_q": "scaled_fp8_e4m3"},
                           flatten=False)
        del tensors
        for part in ("lq_proj", "decoder"):
            state = {k: v.detach().to("cpu", FILE_DTYPES[part]).contiguous()
                     for k, v in float_state_dict(getattr(model, part)).items()}
            torch.save(state, tmp / OFFICIAL_FILES[part])
        torch.save(model.prompt.detach().to("cpu", FILE_DTYPES["prompt"]).contiguous(), tmp / OFFICIAL_FILES["prompt"])
        official = PRESETS.get(model.config.name) if model.config.name.startswith("flashvsr-") else None
        if official is None or official.replace(num_layers=model.config.num_layers) != model.config:
            (tmp / CONFIG_SIDECAR).write_text(json.dumps(model.config.to_dict(), indent=1))
        replace_dir(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {part: out_dir / name for part, name in OFFICIAL_FILES.items()}
    if (out_dir / CONFIG_SIDECAR).is_file():
        paths["config"] = out_dir / CONFIG_SIDECAR
    return paths


def is_scaled_fp8(directory: str | os.PathLike) -> bool:
    """True if the folder's DiT file carries the ``scaled_fp8`` marker."""
    path = Path(directory) / OFFICIAL_FILES["dit"]
    try:
        with safe_open(str(path), framework="pt") as f:
            return MARKER in f.keys()
    except (SafetensorError, OSError):
        return False


def read_fp8_official(directory: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu", variant: str = "v1.1") -> FlashVSR:
    """Load an fp8 export (weights dequantized to ``dtype``): what a scaled-fp8-aware front-end computes."""
    directory = Path(directory)
    path = directory / OFFICIAL_FILES["dit"]
    if not is_scaled_fp8(directory):
        raise CheckpointError(f"{path}: not a scaled fp8 export (no {MARKER!r} key)")
    dit = {}
    with safe_open(str(path), framework="pt") as f:
        keys = [k for k in f.keys() if k != MARKER and not k.endswith(f".{SCALE}")]
        for key in keys:
            value = f.get_tensor(key)
            scale_key = f"{key.rpartition('.')[0]}.{SCALE}"
            if value.dtype == torch.float8_e4m3fn:
                value = value.float() * f.get_tensor(scale_key)
            dit[key] = value.to(device=device, dtype=dtype)
    sidecar = directory / CONFIG_SIDECAR
    if sidecar.is_file():
        config = FlashVSRConfig.from_dict(json.loads(sidecar.read_text()))
    else:
        layers = 1 + max(int(k.split(".")[1]) for k in dit if k.startswith("blocks."))
        config = PRESETS[f"flashvsr-{variant}"].replace(num_layers=layers)
    with torch.device("meta"):
        model = FlashVSR(config)
    model.dit.load_state_dict(dit, strict=True, assign=True)
    for part in ("lq_proj", "decoder"):
        state = torch.load(str(directory / OFFICIAL_FILES[part]), map_location="cpu", weights_only=True)
        getattr(model, part).load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()},
                                             strict=True, assign=True)
    prompt = torch.load(str(directory / OFFICIAL_FILES["prompt"]), map_location="cpu", weights_only=True)
    model.prompt = prompt.to(device=device, dtype=dtype)
    model.dit._rope_tables = None
    return model.eval()
