"""Compressed checkpoints: ``manifest.json`` + one safetensors file per part, written atomically, verified on load.

    OUT/
      manifest.json          format version, recipe text, scheme of every layer, model config, compute dtype,
                             library versions, calibration hash, SHA-256 and size of every file
      dit.safetensors        official DiT key names; quantized weights flattened (``blocks.0.ffn._0_weight_qdata``...)
      lq_proj.safetensors    LQ projection (``LQ_proj_in.ckpt`` key names)
      decoder.safetensors    TCDecoder (``TCDecoder.ckpt`` key names)
      prompt.safetensors     the fixed prompt tensor

torchao weights are stored with ``torchao.prototype.safetensors`` (tensor data + JSON attributes per tensor);
the CPU int4 prototype tensor, which that helper does not list, is stored the same way under our own type tag.
bitsandbytes layers are stored as their own state dict (int8 ``weight`` + ``SCB``; NF4 packed ``weight`` + quant
state) and rebuilt with ``Int8Params`` / ``Params4bit.from_prequantized``; ConvRot layers likewise (int8 ``weight``
+ fp32 ``weight_scale`` [N, 1], or comfy-kitchen's W4A8 tensors), rebuilt by the scheme. Loading builds the model on
``meta``, swaps in the planned modules and assigns the tensors: the original float weights are never needed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import struct
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from flashvsr_q.errors import CheckpointError
from flashvsr_q.files import sha256_file, staging_dir
from flashvsr_q.model import FlashVSR, FlashVSRConfig
from flashvsr_q.quant.recipes import QuantPlan, Recipe, model_layers
from flashvsr_q.quant.schemes import NF4, BnbInt8, ConvRotScheme, ConvWeightOnly, Scheme, scheme_from_dict

FORMAT = "flashvsr-q-compressed"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARTS = {"dit": "dit.safetensors", "lq_proj": "lq_proj.safetensors", "decoder": "decoder.safetensors",
         "prompt": "prompt.safetensors"}
LIBRARIES = ("torch", "torchao", "bitsandbytes", "comfy_kitchen", "safetensors", "flashvsr_q")
INT4_OPAQUE = "flashvsr_q.Int4OpaqueTensor"
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def library_versions() -> dict[str, str | None]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib_metadata.version(lib.replace("_", "-"))
        except importlib_metadata.PackageNotFoundError:
            out[lib] = None
    out["torch"] = torch.__version__
    return out


# ---------------------------------------------------------------------------------------------------------------
# tensors <-> safetensors entries
# ---------------------------------------------------------------------------------------------------------------


def _is_int4_opaque(t: torch.Tensor) -> bool:
    return type(t).__name__ == "Int4OpaqueTensor"


def _flatten_one(key: str, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], str]:
    """One state-dict entry -> (plain tensors to store, its JSON metadata). torchao subclasses go through
    ``flatten_tensor_state_dict`` (which copies their data); bnb ``Int8Params`` / ``Params4bit`` become plain."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from torchao.prototype.safetensors.safetensors_utils import ALLOWED_TENSORS_SUBCLASSES

    module, _, leaf = key.rpartition(".")
    if type(t).__name__ in ALLOWED_TENSORS_SUBCLASSES:
        data, info = flatten_tensor_state_dict({key: t})
        return data, info[key]
    if _is_int4_opaque(t):
        names = list(t.tensor_data_names) + [n for n in t.optional_tensor_data_names if getattr(t, n) is not None]
        meta = json.dumps({"_type": INT4_OPAQUE, "_tensor_data_names": names, "block_size": list(t.block_size),
                           "shape": list(t.shape), "act_mapping_type": t.act_mapping_type})
        return {f"{module}._{leaf}_{name}": getattr(t, name) for name in names}, meta
    return {key: t.detach().as_subclass(torch.Tensor)}, json.dumps({"_type": "Tensor"})


def _unflatten(tensors: dict[str, torch.Tensor], meta: dict[str, str], names: list[str],
               dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Rebuild a state dict from :func:`_flatten_one` entries; ``dtype`` replaces the logical (compute) dtype of the
    torchao tensors (their stored data and scales are unchanged)."""
    from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    out, torchao_names = {}, []
    for key in names:
        info = json.loads(meta[key])
        module, _, leaf = key.rpartition(".")
        if info["_type"] == "Tensor":
            out[key] = tensors[key]
        elif info["_type"] == INT4_OPAQUE:
            parts = {n: tensors[f"{module}._{leaf}_{n}"] for n in info["_tensor_data_names"]}
            out[key] = Int4OpaqueTensor(parts.pop("qdata"), parts.pop("scale_and_zero"), info["block_size"],
                                        torch.Size(info["shape"]), act_mapping_type=info["act_mapping_type"], **parts)
        else:
            torchao_names.append(key)
            if dtype is not None and "dtype" in info.get("_data", {}):
                info["_data"]["dtype"] = {"_type": "torch.dtype", "_data": str(dtype).removeprefix("torch.")}
                meta = {**meta, key: json.dumps(info)}
    if torchao_names:
        sub_meta = {k: meta[k] for k in torchao_names}
        sub_meta["tensor_names"] = json.dumps(torchao_names)
        prefixes = tuple(f"{k.rpartition('.')[0]}._{k.rpartition('.')[2]}_" for k in torchao_names)
        sub_tensors = {k: v for k, v in tensors.items() if k.startswith(prefixes)}
        restored, _ = unflatten_tensor_state_dict(sub_tensors, sub_meta)
        missing = [k for k in torchao_names if k not in restored]
        if missing:
            raise CheckpointError(f"incomplete quantized tensors: {', '.join(missing[:3])}")
        out.update(restored)
    return out


def write_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                       flatten: bool = True) -> tuple[str, int]:
    """Stream ``state`` to a safetensors file one entry at a time; returns (sha256, bytes).

    With ``flatten``, entries go through :func:`_flatten_one` twice (once for the header, once for the data), so
    at most one entry's flattened copy exists at a time: writing never doubles the model in memory.
    """
    def entries(key: str, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], str | None]:
        return _flatten_one(key, t) if flatten else ({key: t}, None)

    metadata = dict(metadata or {})
    header, offset = {}, 0
    for key, t in state.items():  # pass 1: header and metadata
        data, meta = entries(key, t)
        if meta is not None:
            metadata[key] = meta
        for name, value in data.items():
            if value.dtype not in _ST_DTYPES:
                raise ValueError(f"{name}: dtype {value.dtype} cannot be stored in safetensors")
            size = value.numel() * value.element_size()
            header[name] = {"dtype": _ST_DTYPES[value.dtype], "shape": list(value.shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
    if flatten:
        metadata["tensor_names"] = json.dumps(list(state))
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(raw)), raw):
            f.write(chunk)
            digest.update(chunk)
        for key, t in state.items():  # pass 2: data, in the same order
            for name, value in entries(key, t)[0].items():
                data = value.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
                begin, end = header[name]["data_offsets"]
                if data.nbytes != end - begin:
                    raise RuntimeError(f"{name} changed size while writing")
                f.write(data)
                digest.update(data)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest(), 8 + len(raw) + offset


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _parts(model: FlashVSR) -> dict[str, dict[str, torch.Tensor]]:
    return {"dit": model.dit.state_dict(), "lq_proj": model.lq_proj.state_dict(),
            "decoder": model.decoder.state_dict(), "prompt": {"prompt": model.prompt}}


# ---------------------------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------------------------


def save_compressed(
    model: FlashVSR, out_dir: str | os.PathLike, recipe: Recipe, plan: QuantPlan,
    calibration_hash: str | None = None, *, overwrite: bool = False,
) -> Path:
    """Write ``model`` (quantized by ``plan``) to ``out_dir``; returns the folder.

    Everything goes to a temporary sibling folder that is renamed into place when complete. An existing
    ``out_dir`` is an error unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir} already exists; refusing to overwrite (choose another folder)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    layers = model_layers(model)
    if list(layers) != list(plan.layers):
        raise CheckpointError("the plan does not describe this model's layers")
    tmp = staging_dir(out_dir)
    try:
        files = {}
        for part, state in _parts(model).items():
            sha, size = write_safetensors(tmp / PARTS[part], state)
            files[PARTS[part]] = {"part": part, "sha256": sha, "bytes": size, "tensors": len(state)}
            del state
        dtype = str(model.dtype).removeprefix("torch.")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model_config": model.config.to_dict(), "compute_dtype": dtype,
            "quantized_on": model.device.type,
            "recipe": {"name": recipe.name, "source": recipe.source, "text": recipe.text,
                       "sha256": hashlib.sha256(recipe.text.encode()).hexdigest()},
            "schemes": {label: s.to_dict() for label, s in plan.schemes().items()},
            "layers": plan.layer_schemes(),
            "calibration": {"sha256": calibration_hash} if calibration_hash else None,
            "versions": library_versions(),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        replace_dir(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def replace_dir(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not overwrite:
        raise CheckpointError(f"{out_dir} appeared while writing; refusing to overwrite")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# verify and load
# ---------------------------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (not a flashvsr-q compressed checkpoint)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a flashvsr-q manifest (format {manifest.get('format')!r})"
                              if isinstance(manifest, dict) else f"{file}: not a flashvsr-q manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format version {version} is newer than this flashvsr-q reads "
                              f"({FORMAT_VERSION}); upgrade flashvsr-q")
    for key in ("model_config", "compute_dtype", "layers", "schemes", "files", "versions"):
        if key not in manifest:
            raise CheckpointError(f"{file}: missing field {key!r}")
    return manifest


def verify_files(path: str | os.PathLike, manifest: dict, *, hashes: bool = True) -> None:
    """Every listed file exists with the recorded size (and SHA-256); raises CheckpointError naming the file."""
    path = Path(path)
    for name, info in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{file}: {size} bytes, the manifest says {info['bytes']} (truncated or replaced)")
        if hashes and sha256_file(file) != info["sha256"]:
            raise CheckpointError(f"{file}: SHA-256 does not match the manifest (corrupted or modified)")


def _major_minor(version: str | None) -> tuple[str, ...] | None:
    return tuple(version.split("+")[0].split(".")[:2]) if version else None


def verify_versions(manifest: dict) -> None:
    """The libraries that wrote the quantized tensors must match this environment (same major.minor)."""
    used = {s["name"] for s in manifest["schemes"].values()}
    libraries = {"torch"} | {scheme_from_dict(s).library for s in manifest["schemes"].values()} if used else set()
    here = library_versions()
    for lib in sorted(libraries):
        saved, now = manifest["versions"].get(lib), here.get(lib)
        if _major_minor(saved) != _major_minor(now):
            raise CheckpointError(f"checkpoint was written with {lib} {saved}, this environment has {lib} {now} "
                                  f"(major.minor must match for its quantized tensors); install {lib} "
                                  f"{'.'.join(_major_minor(saved) or ('?',))}.x or requantize the original weights")


def load_compressed(
    path: str | os.PathLike, dtype: torch.dtype | None = torch.bfloat16, device: torch.device | str = "cpu", *,
    verify: bool = True, check_versions: bool = True,
) -> FlashVSR:
    """Load a compressed checkpoint onto ``device``.

    Args:
        dtype: compute dtype (None: the one it was quantized for, recorded in the manifest). Another dtype casts
            the float layers and relabels the torchao weights; their integer / fp8 data is unchanged.
        verify: check the SHA-256 of every file (sizes are always checked).
        check_versions: refuse a checkpoint written by another major.minor of torch / torchao / bitsandbytes.
    Raises:
        CheckpointError: a missing, truncated or modified file, a version mismatch, an inconsistent manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest, hashes=verify)
    if check_versions:
        verify_versions(manifest)
    saved_dtype = getattr(torch, manifest["compute_dtype"])
    dtype = dtype or saved_dtype
    device = torch.device(device)
    schemes = {label: scheme_from_dict(s) for label, s in manifest["schemes"].items()}
    for scheme in schemes.values():
        if scheme.device_bound and dtype != saved_dtype:
            short = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
            raise CheckpointError(f"{path}: {scheme.name} kernels compute in {short.get(saved_dtype, saved_dtype)}; "
                                  f"run it with --dtype {short.get(saved_dtype, saved_dtype)}, or leave --dtype out "
                                  f"(requested {short.get(dtype, dtype)})")
        if scheme.device_bound and manifest.get("quantized_on") != device.type:
            raise CheckpointError(f"{path}: {scheme.name} weights are packed for {manifest.get('quantized_on')}, "
                                  f"cannot load them on {device.type}; quantize on {device.type}")
    try:
        config = FlashVSRConfig.from_dict(manifest["model_config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid model_config ({exc})") from None
    with torch.device("meta"):
        model = FlashVSR(config)
    layers = model_layers(model)
    if list(layers) != list(manifest["layers"]):
        raise CheckpointError(f"{path}: the manifest's layers do not match the {config.name} architecture")
    plan = {fqn: (schemes[label] if label else None) for fqn, label in manifest["layers"].items()}

    state: dict[str, torch.Tensor] = {}
    for name, info in manifest["files"].items():
        part = info["part"]
        tensors, meta = _read_safetensors(path / name)
        try:
            names = json.loads(meta["tensor_names"])
            restored = _unflatten(tensors, meta, names, dtype if dtype != saved_dtype else None)
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path / name}: inconsistent tensor metadata ({exc})") from None
        prefix = "" if part == "prompt" else f"{part}."
        state.update({prefix + k: v for k, v in restored.items()})
        del tensors

    for fqn, scheme in plan.items():
        if isinstance(scheme, (BnbInt8, NF4)):
            local = {k[len(fqn) + 1:]: state.pop(k) for k in [k for k in state if k.startswith(fqn + ".")]}
            _swap(model, fqn, _build_bnb(scheme, model.get_submodule(fqn), local, dtype, device, fqn))
        elif isinstance(scheme, (ConvRotScheme, ConvWeightOnly)):  # modules rebuilt by their scheme
            local = {k[len(fqn) + 1:]: state.pop(k) for k in [k for k in state if k.startswith(fqn + ".")]}
            try:
                _swap(model, fqn, scheme.restore(model.get_submodule(fqn), local, dtype, device))
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"{path}: {fqn}: unexpected {scheme.name} tensors ({exc})") from None
    rebuilt = (BnbInt8, NF4, ConvRotScheme, ConvWeightOnly)
    bnb_prefixes = tuple(f"{fqn}." for fqn, s in plan.items() if isinstance(s, rebuilt))
    state = {k: _to(v, dtype, device) for k, v in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith(bnb_prefixes)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: tensors do not match the model (missing {missing[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]})")
    model.dit._rope_tables = None
    return model.eval()


def _to(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if type(t) is not torch.Tensor:  # torchao subclass: its own dtype, moved as a whole
        return t.to(device)
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


def _swap(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _build_bnb(scheme: Scheme, meta_linear: nn.Linear, tensors: dict[str, torch.Tensor], dtype, device,
               fqn: str) -> nn.Module:
    import bitsandbytes as bnb

    bias = tensors.pop("bias", None)
    bias = None if bias is None else bias.to(device=device, dtype=dtype)
    if isinstance(scheme, BnbInt8):
        fmt = tensors.pop("weight_format", torch.tensor(0))
        if int(fmt) != 0 or set(tensors) != {"weight", "SCB"}:
            raise CheckpointError(f"{fqn}: unexpected bitsandbytes int8 state ({sorted(tensors)}, format {int(fmt)})")
        cb, scb = tensors["weight"].to(device), tensors["SCB"].to(device)
        return BnbInt8.fill(scheme.empty_module(meta_linear), cb, scb, bias)
    weight = tensors.pop("weight", None)
    if weight is None or not tensors:
        raise CheckpointError(f"{fqn}: incomplete NF4 state ({sorted(tensors)})")
    module = scheme.empty_module(meta_linear, dtype)
    module.weight = bnb.nn.Params4bit.from_prequantized(weight, tensors, requires_grad=False, device=device,
                                                        module=module)
    module.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    return module
