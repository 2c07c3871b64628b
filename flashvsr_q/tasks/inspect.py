"""``flashvsr-q inspect``: what a checkpoint holds (official, compressed or a ComfyUI DiT file), as a dict and text.

For a compressed checkpoint: recipe, schemes per layer (grouped compactly), size of every part next to its bf16
size, SHA-256 of every file (verified), the library versions that wrote it and the calibration hash. For an
official folder: files, dtypes, parameters per part, sizes and SHA-256. For a ComfyUI-native DiT file: its format
(per layer), prefix, and the official parts that go with it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from flashvsr_q.checkpoints import checkpoint_kind, comfy_companions, comfy_dit_file
from flashvsr_q.errors import CheckpointError
from flashvsr_q.files import sha256_file
from flashvsr_q.model import OFFICIAL_FILES, PRESETS, FlashVSR, FlashVSRConfig, infer_config
from flashvsr_q.quant.checkpoint import read_manifest
from flashvsr_q.quant.comfy import read_comfy
from flashvsr_q.quant.recipes import compact_names, model_layers

GB = 1e9
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def human_size(n: int | None) -> str:
    if n is None:
        return "missing"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}" if unit == "GB" else f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _part_params(config: FlashVSRConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = FlashVSR(config)
    return {"dit": sum(t.numel() for t in model.dit.state_dict().values()),
            "lq_proj": sum(t.numel() for t in model.lq_proj.state_dict().values()),
            "decoder": sum(t.numel() for t in model.decoder.state_dict().values()),
            "prompt": model.prompt.numel()}


def _group_layers(layers: dict[str, str | None], params: dict[str, int]) -> list[dict]:
    groups: dict[str, list[str]] = {}
    for fqn, label in layers.items():
        groups.setdefault(label or "keep", []).append(fqn)
    return [{"scheme": label, "layers": len(names), "params": sum(params.get(n, 0) for n in names),
             "names": compact_names(names)} for label, names in groups.items()]


def _file_status(path: Path, info: dict, hashes: bool) -> str:
    if not path.is_file():
        return "MISSING"
    if path.stat().st_size != info["bytes"]:
        return f"SIZE MISMATCH ({path.stat().st_size} bytes)"
    if not hashes:
        return "size ok (hash not checked)"
    return "ok" if sha256_file(path) == info["sha256"] else "SHA-256 MISMATCH"


def inspect_checkpoint(path: str | os.PathLike, *, hashes: bool = True) -> dict:
    """Describe a checkpoint folder without loading its weights. ``hashes``: compute / verify SHA-256."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "compressed":
        return _inspect_compressed(path, hashes)
    if kind == "comfy":
        return _inspect_comfy(path, hashes)
    return _inspect_official(path, hashes)


def _inspect_comfy(path: Path, hashes: bool) -> dict:
    """A ComfyUI-native DiT file and the official parts that go with it (read, not run)."""
    dit_file = comfy_dit_file(path)
    config, parts = comfy_companions(path)
    file = read_comfy(dit_file, config)
    config = config or PRESETS["flashvsr-v1.1"]
    part_params = _part_params(config)
    files = [{"file": str(dit_file), "part": "dit", "bytes": dit_file.stat().st_size,
              "bf16_bytes": 2 * part_params["dit"], "sha256": sha256_file(dit_file) if hashes else None,
              "status": "ok"}]
    for part, file_path in parts.items():
        files.append({"file": str(file_path), "part": part, "bytes": file_path.stat().st_size,
                      "bf16_bytes": 2 * part_params[part], "dtypes": _dtypes(file_path, part),
                      "sha256": sha256_file(file_path) if hashes else None, "status": "ok"})
    labels = {name: label for name, label in ((n, _comfy_label(layer)) for n, layer in file.layers.items())}
    with torch.device("meta"):
        params = {k: v[2] for k, v in model_layers(FlashVSR(config).dit).items()}
    return {"kind": "comfy", "path": str(path), "model": config.name, "num_layers": config.num_layers,
            "comfy_format": file.format, "prefixed": file.prefixed, "description": file.describe(),
            "groups": _group_layers({n: labels.get(n, "float") for n in params}, params),
            "files": files, "total_bytes": sum(f["bytes"] for f in files),
            "bf16_bytes": sum(f["bf16_bytes"] for f in files)}


def _comfy_label(layer) -> str:
    if layer.format == "int8_tensorwise":
        kind = f"convrot {layer.group}" if layer.group else ("weight-only" if layer.weight_only else "W8A8")
        return f"int8_tensorwise ({kind})"
    return layer.format + (" + input_scale" if layer.input_scale is not None else "")


def _inspect_compressed(path: Path, hashes: bool) -> dict:
    manifest = read_manifest(path)
    config = FlashVSRConfig.from_dict(manifest["model_config"])
    with torch.device("meta"):
        params = {k: v[2] for k, v in model_layers(FlashVSR(config)).items()}
    part_params = _part_params(config)
    files = []
    for name, info in manifest["files"].items():
        files.append({"file": name, "part": info["part"], "bytes": info["bytes"], "sha256": info["sha256"],
                      "bf16_bytes": 2 * part_params.get(info["part"], 0),
                      "status": _file_status(path / name, info, hashes)})
    return {
        "kind": "compressed", "path": str(path), "format_version": manifest["format_version"],
        "created": manifest.get("created"), "model": config.name, "num_layers": config.num_layers,
        "compute_dtype": manifest["compute_dtype"], "quantized_on": manifest.get("quantized_on"),
        "recipe": manifest.get("recipe", {}).get("name"), "recipe_sha256": manifest.get("recipe", {}).get("sha256"),
        "calibration_sha256": (manifest.get("calibration") or {}).get("sha256"),
        "schemes": manifest["schemes"], "groups": _group_layers(manifest["layers"], params),
        "files": files, "total_bytes": sum(f["bytes"] for f in files),
        "bf16_bytes": sum(f["bf16_bytes"] for f in files), "versions": manifest["versions"],
    }


def _dtypes(path: Path, part: str) -> dict[str, int]:
    """dtype -> number of tensors in one official file (read from headers / mmapped, not the data)."""
    if part == "dit":
        with safe_open(str(path), framework="pt") as f:
            return dict(Counter(_SAFETENSORS_DTYPES.get(d, d) for d in (f.get_slice(k).get_dtype() for k in f.keys())))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # zip / unpickling errors come in many types
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0]})") from None
    tensors = [data] if isinstance(data, torch.Tensor) else list(data.values()) if isinstance(data, dict) else []
    return dict(Counter(str(t.dtype).removeprefix("torch.") for t in tensors))


def _inspect_official(path: Path, hashes: bool) -> dict:
    with torch.device("meta"):  # infer_config builds a model to compare shapes: keep it off the heap
        config = infer_config(path)
    part_params = _part_params(config)
    files = []
    for part, name in OFFICIAL_FILES.items():
        file = path / name
        if not file.is_file():
            files.append({"file": name, "part": part, "bytes": None, "status": "MISSING"})
            continue
        files.append({"file": name, "part": part, "bytes": file.stat().st_size, "params": part_params[part],
                      "bf16_bytes": 2 * part_params[part], "dtypes": _dtypes(file, part),
                      "sha256": sha256_file(file) if hashes else None, "status": "ok"})
    return {"kind": "official", "path": str(path), "model": config.name, "num_layers": config.num_layers,
            "files": files, "total_bytes": sum(f["bytes"] or 0 for f in files),
            "bf16_bytes": 2 * sum(part_params.values()),
            "groups": [{"scheme": "none (float weights)", "layers": None, "params": sum(part_params.values()),
                        "names": []}]}


def format_inspection(info: dict) -> str:
    """The text ``flashvsr-q inspect`` prints."""
    lines = [f"{info['path']}: {info['kind']} checkpoint, model {info['model']} ({info['num_layers']} blocks)"]
    if info["kind"] == "compressed":
        lines.append(f"  format v{info['format_version']}, created {info['created']}, compute {info['compute_dtype']}"
                     f", quantized on {info['quantized_on']}")
        lines.append(f"  recipe {info['recipe']} (sha256 {str(info['recipe_sha256'])[:16]}...)"
                     f"; calibration: {info['calibration_sha256'] or 'none'}")
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if info["kind"] == "comfy":
        lines.append(f"  {info['description']}")
        lines.append("  runs as ComfyUI runs it; the LQ projection, decoder and prompt are the official files below")
    if info["kind"] in ("compressed", "comfy"):
        lines.append("  schemes:" if info["kind"] == "compressed" else "  DiT layers (comfy_quant format):")
        width = max(len(g["scheme"]) for g in info["groups"])
        for group in info["groups"]:
            lines.append(f"    {group['scheme']:<{width}}  {group['layers']:4d} layers  {group['params'] / 1e6:9.2f} M "
                         f"params")
            lines.extend(f"    {'':<{width}}    {name}" for name in group["names"])
    lines.append("  files:")
    for f in info["files"]:
        size = human_size(f["bytes"])
        bf16 = f" (bf16 {human_size(f['bf16_bytes'])})" if f.get("bf16_bytes") else ""
        dtypes = f"  {f['dtypes']}" if f.get("dtypes") else ""
        lines.append(f"    {f['file']:<50} {size:>10}{bf16}  {f['status']}{dtypes}")
        if f.get("sha256"):
            lines.append(f"    {'':<50} sha256 {f['sha256']}")
    ratio = f" = {info['total_bytes'] / info['bf16_bytes']:.0%} of bf16" if info.get("bf16_bytes") else ""
    lines.append(f"  total {human_size(info['total_bytes'])} (bf16 {human_size(info['bf16_bytes'])}){ratio}")
    return "\n".join(lines)


@dataclass
class InspectOptions:
    """What ``flashvsr-q inspect`` takes: the folder, and whether to compute / verify SHA-256 (sizes always)."""

    checkpoint: str | os.PathLike
    hashes: bool = True


def inspect(options: InspectOptions) -> dict:
    """:func:`inspect_checkpoint` of the options' folder; ``failed(info)`` lists files that failed verification."""
    return inspect_checkpoint(options.checkpoint, hashes=options.hashes)


def failed(info: dict) -> list[str]:
    """The files of an inspection whose size or hash did not verify."""
    return [f["file"] for f in info["files"] if f["status"] not in ("ok", "size ok (hash not checked)")]
