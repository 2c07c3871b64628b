"""Resuming an interrupted upscale exactly: a JSON manifest and a snapshot of every tile's stream state.

Layout, inside the writer's work folder next to the output (``OUT.parts/``)::

    flashvsr-q.json        the manifest: fingerprints, the tiling in use, progress (atomic JSON writes)
    state.safetensors      every tile's StreamState after the last complete segment (only the latest is kept)

The snapshot is taken right after a segment is committed, so the segments on disk always reach at least as far as
the snapshot. A resumed run restores the states, re-reads the input from the snapshot's frame position and
re-encodes from the next segment on; the model, the noise and the encoder are deterministic, so the final file is
byte-identical to an uninterrupted run (on the same machine, torch version and thread count).
The manifest records hashes of the input, the model and the options; a resume with anything different is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import atomic_write, write_json
from flashvsr_q.model import DecoderState, FeatureCache, KVCache, LQProjState
from flashvsr_q.model.streaming import StreamState

MANIFEST_NAME = "flashvsr-q.json"
STATE_NAME = "state.safetensors"
MANIFEST_VERSION = 1


class ResumeError(FlashVSRError):
    """The saved progress cannot be continued (different input, model or options, or damaged files)."""


# ---------------------------------------------------------------------------------------------------------------
# stream state <-> tensors
# ---------------------------------------------------------------------------------------------------------------


def state_to(state: StreamState, device: torch.device | str) -> None:
    """Move every tensor of ``state`` to ``device`` in place (used to offload idle tiles to host RAM)."""
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    for cache in state.caches:
        cache.k, cache.v = move(cache.k), move(cache.v)
    state.lq.cache1, state.lq.cache2 = move(state.lq.cache1), move(state.lq.cache2)
    state.decoder.memory = {i: move(t) for i, t in state.decoder.memory.items()}
    state.vae.to(device)
    state.lr_tail = move(state.lr_tail)


def flatten_state(state: StreamState, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors by name, JSON-able counters) of one tile's state; tensors are copied to the host."""
    tensors: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor | None) -> None:
        if t is not None:
            tensors[f"{prefix}.{name}"] = t.detach().to("cpu", copy=True).contiguous()

    for layer, cache in enumerate(state.caches):
        put(f"kv.{layer}.k", cache.k)
        put(f"kv.{layer}.v", cache.v)
    put("lq.cache1", state.lq.cache1)
    put("lq.cache2", state.lq.cache2)
    for index, t in state.decoder.memory.items():
        put(f"decoder.{index}", t)
    for key, t in state.vae.frames.items():
        put(f"vae.{key}", t)
    put("lr_tail", state.lr_tail)
    meta = {"chunk": state.chunk, "lq_clips": state.lq.clips, "decoder_calls": state.decoder.calls,
            "kv_len": [c.kv_len for c in state.caches], "memory": sorted(state.decoder.memory),
            "vae_steps": state.vae.steps, "vae": sorted(state.vae.frames)}
    return tensors, meta


def unflatten_state(tensors: dict[str, torch.Tensor], meta: dict, prefix: str,
                    device: torch.device | str) -> StreamState:
    """Inverse of :func:`flatten_state`, onto ``device``."""
    get = lambda name: None if f"{prefix}.{name}" not in tensors else tensors[f"{prefix}.{name}"].to(device)  # noqa: E731
    caches = []
    for layer, kv_len in enumerate(meta["kv_len"]):
        cache = KVCache(kv_len)
        cache.k, cache.v = get(f"kv.{layer}.k"), get(f"kv.{layer}.v")
        caches.append(cache)
    lq = LQProjState(get("lq.cache1"), get("lq.cache2"), meta["lq_clips"])
    decoder = DecoderState({int(i): get(f"decoder.{i}") for i in meta["memory"]}, meta["decoder_calls"])
    vae = FeatureCache()
    vae.frames = {key: get(f"vae.{key}") for key in meta.get("vae", [])}
    vae.steps = meta.get("vae_steps", 0)
    return StreamState(caches, lq, decoder, meta["chunk"], get("lr_tail"), vae)


def save_states(path: Path, states: Iterable[StreamState], extra: dict) -> None:
    """Write all tiles' states (and ``extra`` JSON) to ``path`` atomically: temporary file, fsync, rename."""
    tensors, metas = {}, []
    for i, state in enumerate(states):
        t, meta = flatten_state(state, f"tile{i}")
        tensors.update(t)
        metas.append(meta)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"tiles": json.dumps(metas),
                                                                         "extra": json.dumps(extra)}))


def load_states(path: Path, device: torch.device | str) -> tuple[list[StreamState], dict]:
    """(states per tile, extra) from :func:`save_states`; raises ResumeError if the file is damaged."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            header = f.metadata()
        tensors = load_file(str(path))
        metas, extra = json.loads(header["tiles"]), json.loads(header["extra"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ResumeError(f"{path}: cannot read the saved stream state ({exc}); delete the folder to start over") \
            from None
    return [unflatten_state(tensors, meta, f"tile{i}", device) for i, meta in enumerate(metas)], extra


# ---------------------------------------------------------------------------------------------------------------
# fingerprints and the manifest
# ---------------------------------------------------------------------------------------------------------------


def _sha(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path, edge: int = 1 << 20) -> dict:
    """Size plus SHA-256 of the first and last ``edge`` bytes: cheap, and changes with any re-encode."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            h.update(f.read(edge))
    return {"size": size, "sha256_edges": h.hexdigest()}


def source_fingerprint(source) -> dict:
    """What identifies a ``FrameSource``: kind, geometry, the frame timestamps and the bytes of its files."""
    files = [source.path] if source.kind == "video" else list(source.files)
    return {"kind": source.kind, "width": source.width, "height": source.height, "frames": source.num_frames,
            "fps": str(source.fps), "pts": hashlib.sha256(source.pts.tobytes()).hexdigest(),
            "files": _sha([[p.name, file_digest(p)] for p in files])}


def model_fingerprint(model: torch.nn.Module) -> str:
    """Config, then every parameter/buffer's name, type, shape, dtype and a strided sample of its values.

    A quantized tensor subclass (torchao) is hashed through its parts: the inner tensors (integer data, scales)
    and its metadata (block size, activation quantization), so that recipes with the same storage but another
    computation (int8 weight-only vs w8a8, other static scales) do not look alike.
    """
    h = hashlib.sha256(json.dumps(getattr(getattr(model, "config", None), "to_dict", dict)(), sort_keys=True,
                                  default=str).encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}|{type(t).__name__}|{tuple(t.shape)}|{t.dtype}".encode())
        _hash_values(h, t)
    return h.hexdigest()


def _hash_values(h, t: torch.Tensor) -> None:
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, meta = t.__tensor_flatten__()
        h.update(re.sub(r" at 0x[0-9a-f]+", "", repr(meta)).encode())  # no addresses: stable across processes
        for part in names:
            h.update(part.encode())
            _hash_values(h, getattr(t, part))
        return
    try:
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        h.update(sample.to("cpu", torch.float64).numpy().tobytes())
    except (RuntimeError, NotImplementedError, TypeError):
        pass  # a tensor subclass without reshape/cast: its type, shape and dtype were hashed by the caller


@dataclass
class Manifest:
    """Progress of one output. ``fingerprint`` = {input, model, options} hashes; ``plan`` = the tiling in use."""

    path: Path
    fingerprint: dict
    plan: dict
    progress: dict

    @classmethod
    def create(cls, work_dir: Path, fingerprint: dict, plan: dict) -> Manifest:
        m = cls(work_dir / MANIFEST_NAME, fingerprint, plan,
                {"chunks": 0, "segments": 0, "frames": 0, "lr_position": 0, "state": None})
        m.write()
        return m

    @classmethod
    def load(cls, work_dir: Path) -> Manifest | None:
        path = work_dir / MANIFEST_NAME
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"manifest version {data.get('version')}")
            return cls(path, data["fingerprint"], data["plan"], data["progress"])
        except (OSError, ValueError, KeyError) as exc:
            raise ResumeError(f"{path}: damaged progress manifest ({exc}); delete {work_dir} to start over") from None

    def check(self, fingerprint: dict) -> None:
        """Raise ResumeError naming what differs from the run that wrote the manifest."""
        changed = [k for k in ("input", "model", "options") if self.fingerprint.get(k) != fingerprint.get(k)]
        if changed:
            raise ResumeError(f"cannot resume {self.path.parent}: the {' and '.join(changed)} differ from the "
                              "interrupted run; use the same ones, or --overwrite to start over")

    def write(self) -> None:
        data = {"version": MANIFEST_VERSION, "fingerprint": self.fingerprint, "plan": self.plan,
                "progress": self.progress}
        write_json(self.path, data)


def fingerprint(input_fp: dict, model_fp: str, options: dict) -> dict:
    """The three hashes a manifest is checked against."""
    return {"input": _sha(input_fp), "model": model_fp, "options": _sha(options)}
