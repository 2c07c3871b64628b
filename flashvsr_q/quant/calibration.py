"""Calibration on real footage: stream clips through FlashVSR and record what every linear layer sees.

    from flashvsr_q.quant.calibration import CalibrationConfig, FootageClips, calibrate
    clips = FootageClips(["my_clips/", "hf:my_dataset"], clips=24, frames=41, size=(256, 256))
    stats = calibrate(model, clips, CalibrationConfig(observer="percentile", alpha=0.5))
    stats.save("stats.safetensors")         # flashvsr-q quantize --calibration stats.safetensors

Every clip runs as a stream (first chunk of 25 LR frames without a cache, then chunks of 8 attending to the KV
cache), so the statistics cover both kinds of activation. Forward pre-hooks on every ``nn.Linear`` feed a
:class:`~flashvsr_q.quant.observers.LayerObserver` (per-channel max |x|, token counts per phase, a per-tensor range
chosen by the observer). With SmoothQuant (``alpha`` set), the factors come from the first pass; when the
observer is not min-max, a second pass over the same clips measures the range of the smoothed input ``x / s``.

The result is the PTQ hand-off type :class:`~flashvsr_q.quant.stats.CalibrationStats` (``stats.py``):
``input_absmax`` is the exact per-channel max, ``smoothing`` the factors, ``num_samples`` the tokens seen, and
``meta`` holds the observer settings, the clip list, the calibration-set hash (also ``source_hash``) and the
observer's per-tensor ranges ``meta["act_clip"][fqn]`` (of ``x``) and ``meta["smoothed_act_clip"][fqn]`` (of
``x / s``); :func:`static_scales` turns them into the static int8 scales of ``w8a8_int8_static``.

PTQ (``ptq.layer_calibration``) hands each layer :func:`observer_absmax` (the per-channel max clipped to the
observer's range), so ``LayerCalibration.static_scale()`` equals :func:`static_scale`: percentile / MSE ranges reach
the static scales, and files without ``act_clip`` fall back to min-max. Per-layer SmoothQuant alphas come from
``alpha_overrides`` (``--alpha PATTERN=ALPHA``, or a recipe's ``smoothquant: {alpha: 0.5, overrides: {PATTERN:
ALPHA}}`` through ``--recipe``); PTQ refuses factors made with another alpha than the recipe's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flashvsr_q.data.footage import DatasetRowFootage, SequenceFootage, StillFootage, VideoFootage, resolve_footage
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.model import FlashVSR, FlashVSRStream, SeededNoise, chunk_lr_ranges
from flashvsr_q.model.streaming import CHUNK_FRAMES, FIRST_CHUNK_FRAMES
from flashvsr_q.quant.checkpoint import library_versions
from flashvsr_q.quant.observers import INT8_MAX, LayerObserver, make_observer
from flashvsr_q.quant.recipes import resolve_plan
from flashvsr_q.quant.smoothquant import alpha_for, smoothing_factors
from flashvsr_q.quant.stats import CalibrationStats, LayerCalibration
from flashvsr_q.shipped import by_name, calibration_dir

log = logging.getLogger(__name__)

SCALE = 4
# The linears a recipe quantizes: attention projections and the FFN of every DiT block.
DIT_BLOCK_LINEARS = r"dit\.blocks\.\d+\.((self_attn|cross_attn)\.(q|k|v|o)|ffn\.(0|2))"
MIN_FRAMES = FIRST_CHUNK_FRAMES + CHUNK_FRAMES  # 33: one first chunk and one cache-warm chunk

# ---------------------------------------------------------------------------------------------------------------
# clips and their identity
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CalibrationClip:
    """One model input: ``lr`` [1, 3, F, H, W] in [-1, 1] (LR already upsampled x4), F = 8k + 1 >= 33, and the
    JSON-able ``record`` that identifies it in the calibration-set hash."""

    lr: torch.Tensor
    record: dict


def calibration_set_hash(records: Iterable[Mapping]) -> str:
    """SHA-256 of the sorted list of clip records (canonical JSON): the same clips in any order, same hash."""
    lines = sorted(json.dumps(r, sort_keys=True, separators=(",", ":")) for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def file_identity(path: str | os.PathLike, hash_mode: str = "content", _cache: dict = {}) -> dict:  # noqa: B006
    """``{"file", "bytes", "sha256"}`` (content mode: the name and content, stable across machines and copies) or
    ``{"path", "bytes", "mtime_ns"}`` (mtime mode: fast, only valid on this machine)."""
    path = Path(path)
    stat = path.stat()
    if hash_mode == "mtime":
        return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if hash_mode != "content":
        raise ValueError(f"hash_mode must be 'content' or 'mtime', got {hash_mode!r}")
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _cache[key] = digest.hexdigest()
    return {"file": path.name, "bytes": stat.st_size, "sha256": _cache[key]}


def footage_identity(footage, hash_mode: str = "content") -> dict:
    """What identifies one ``flashvsr_q.data.footage`` source: its file(s), a dataset row, or in-memory pixels."""
    if isinstance(footage, VideoFootage):
        return {"video": file_identity(footage.path, hash_mode)}
    if isinstance(footage, StillFootage) and isinstance(footage.image, (str, os.PathLike)):
        return {"still": file_identity(footage.image, hash_mode)}
    if isinstance(footage, SequenceFootage) and all(isinstance(f, (str, os.PathLike)) for f in footage.frames):
        files = [file_identity(f, hash_mode) for f in footage.frames]
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return {"sequence": footage.name, "images": len(files), "bytes": sum(f["bytes"] for f in files),
                "sha256": digest}
    if isinstance(footage, DatasetRowFootage):
        fingerprint = getattr(footage.dataset, "_fingerprint", None)
        return {"dataset": footage.name, "fingerprint": fingerprint, "row": footage.row, "column": footage.column}
    return {"footage": footage.name, "in_memory": True}


def model_input(frames: np.ndarray | torch.Tensor, lr_input: bool) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> the model input [1, 3, T, H', W'] in [-1, 1].

    HR footage (``lr_input`` False) is degraded like the evaluation LR: antialiased bicubic x1/4, rounded to
    8 bits; the LR is then bicubic-upsampled x4 (``H' = H``). LR footage is upsampled as is (``H' = 4 H``).
    """
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float() / 255  # [T, 3, H, W]
    if not lr_input:
        x = F.interpolate(x, scale_factor=1 / SCALE, mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) * 255).round() / 255
    x = F.interpolate(x, scale_factor=SCALE, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return (x * 2 - 1).transpose(0, 1)[None].contiguous()


def check_geometry(frames: int, size: tuple[int, int]) -> None:
    """Raise FlashVSRError unless ``frames`` = 8k + 1 >= 33 and ``size`` = (H, W) are multiples of 128."""
    if frames < MIN_FRAMES or (frames - 1) % CHUNK_FRAMES:
        near = max(MIN_FRAMES, frames - (frames - 1) % CHUNK_FRAMES)
        raise FlashVSRError(f"--frames must be 8k+1 and at least {MIN_FRAMES} (a first chunk of "
                            f"{FIRST_CHUNK_FRAMES} and at least one cache-warm chunk of {CHUNK_FRAMES}), "
                            f"got {frames}; try {near}")
    h, w = size
    if h <= 0 or w <= 0 or h % 128 or w % 128:
        raise FlashVSRError(f"--size must be multiples of 128 (the model's output geometry), got {w}x{h}")


class FootageClips:
    """Calibration clips cut from footage (``flashvsr_q.data.footage``), re-iterable and deterministic.

    Clip ``i`` comes from footage ``i mod len(footage)`` (round-robin, so every source contributes), cut with the
    generator ``default_rng([seed, i])``; a source too short or too small for the clip is skipped for the next.

    Args:
        footage: ``--footage`` arguments (files, folders, ``hf:DIR``, ``stills:DIR``, ``builtin``) or Footage.
        clips: number of clips.
        frames: LR frames per clip, 8k + 1 >= 33.
        size: (H, W) of the model output (multiples of 128); HR crops are this size, LR crops a quarter.
        lr_input: the footage is already LR (used as is, upsampled x4) instead of HR (bicubic x1/4 first).
        hash_mode: ``"content"`` (SHA-256 of files) or ``"mtime"`` (path + size + mtime) in clip records.
    """

    def __init__(self, footage: Sequence, clips: int = 24, frames: int = 41, size: tuple[int, int] = (256, 256),
                 lr_input: bool = False, seed: int = 0, hash_mode: str = "content"):

        check_geometry(frames, size)
        if clips < 1:
            raise FlashVSRError(f"--clips must be >= 1, got {clips}")
        if hash_mode not in ("content", "mtime"):
            raise FlashVSRError(f"hash mode must be content or mtime, got {hash_mode!r}")
        self.footage = resolve_footage(footage)
        if not self.footage:
            raise FlashVSRError("no footage given")
        self.clips, self.frames, self.size, self.lr_input = clips, frames, tuple(size), lr_input
        self.seed, self.hash_mode = seed, hash_mode

    def __len__(self) -> int:
        return self.clips

    def __iter__(self) -> Iterator[CalibrationClip]:
        crop = (self.size[0] // SCALE, self.size[1] // SCALE) if self.lr_input else self.size
        for i in range(self.clips):
            rng = np.random.default_rng([self.seed, i])
            for tried in range(len(self.footage)):
                source = self.footage[(i + tried) % len(self.footage)]
                frames = source.clip(rng, self.frames, crop)
                if frames is not None:
                    break
                log.info("%s is too short or too small for %d frames of %dx%d; trying the next source",
                         source.name, self.frames, crop[1], crop[0])
            else:
                raise FlashVSRError(f"no footage has {self.frames} frames of at least {crop[1]}x{crop[0]} "
                                    f"({'LR' if self.lr_input else 'HR'}); use fewer --frames or a smaller --size")
            record = {"source": footage_identity(source, self.hash_mode), "clip": i, "seed": self.seed,
                      "frames": self.frames, "size": list(self.size), "lr_input": self.lr_input}
            yield CalibrationClip(model_input(frames, self.lr_input), record)


class TensorClips:
    """In-memory model inputs [1, 3, F, H, W] (tests, Python users); records default to a hash of the pixels."""

    def __init__(self, clips: Sequence[torch.Tensor], records: Sequence[dict] | None = None):
        self.tensors = list(clips)
        for lr in self.tensors:
            check_geometry(lr.shape[2], tuple(lr.shape[-2:]))
        self.records = list(records) if records is not None else [
            {"tensor_sha256": hashlib.sha256(lr.detach().float().cpu().numpy().tobytes()).hexdigest(),
             "frames": lr.shape[2], "size": list(lr.shape[-2:])} for lr in self.tensors]

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[CalibrationClip]:
        return (CalibrationClip(lr, rec) for lr, rec in zip(self.tensors, self.records))


# ---------------------------------------------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------------------------------------------


class ActivationRecorder:
    """Forward pre-hooks that hand every linear's input to its :class:`LayerObserver`, tagged with ``phase``.

    Use as a context manager; the hooks are removed on exit, even after an error. ``phase`` is set by the driver:
    ``"conditioning"`` (timestep and prompt embeddings, cross-attention K/V), ``"first"`` (chunk 0, no cache),
    ``"later"`` (cache-warm chunks).
    """

    def __init__(self, model: nn.Module, observers: Mapping[str, LayerObserver]):
        self.model, self.observers = model, observers
        self.phase = "conditioning"
        self._handles: list = []

    def __enter__(self) -> ActivationRecorder:
        for fqn, observer in self.observers.items():
            module = self.model.get_submodule(fqn)
            self._handles.append(module.register_forward_pre_hook(self._hook(observer)))
        return self

    def _hook(self, observer: LayerObserver):
        def hook(module, args):
            observer.update(args[0], self.phase)
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def stream_clip(model: FlashVSR, lr: torch.Tensor, recorder: ActivationRecorder, seed: int = 0) -> int:
    """Run one clip chunk by chunk without decoding, setting the recorder's phase; returns the chunk count."""
    device, dtype = model.device, model.dtype
    h, w = lr.shape[-2:]
    recorder.phase = "conditioning"
    stream = FlashVSRStream(model, SeededNoise(seed, model.config.latent_channels, h // 8, w // 8, dtype=dtype),
                            decode=False)
    ranges = chunk_lr_ranges(lr.shape[2])
    for index, (start, end) in enumerate(ranges):
        recorder.phase = "first" if index == 0 else "later"
        stream.step(lr[:, :, start:end].to(device, dtype))
    return len(ranges)


# ---------------------------------------------------------------------------------------------------------------
# the calibration run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CalibrationConfig:
    """Settings of one calibration run (all recorded in the statistics file).

    Args:
        observer: ``minmax``, ``percentile`` or ``mse`` (per-tensor range of each layer input).
        percentile: for ``percentile``, of |x| (99.99 by default).
        bins_per_octave: histogram resolution for ``percentile`` / ``mse`` (64: bins 1.1 % wide).
        clips_per_octave: clips tried by ``mse`` per halving of the max (16 octaves are searched).
        alpha: SmoothQuant strength; None computes no smoothing factors.
        alpha_overrides: regex -> alpha, first full match wins (per-layer alpha).
        smooth_layers: regex of the layers that get smoothing factors (default: every DiT block linear).
        layers: regex of the linears observed (default: all).
        seed: latent noise seed of the streams.
    """

    observer: str = "minmax"
    percentile: float = 99.99
    bins_per_octave: int = 64
    clips_per_octave: int = 16
    alpha: float | None = None
    alpha_overrides: dict[str, float] = field(default_factory=dict)
    smooth_layers: str = DIT_BLOCK_LINEARS
    layers: str = r".*"
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            self.new_observer()
        except ValueError as exc:
            raise FlashVSRError(str(exc)) from None
        for a in [self.alpha, *self.alpha_overrides.values()]:
            if a is not None and not 0.0 <= float(a) <= 1.0:
                raise FlashVSRError(f"SmoothQuant alpha must be in [0, 1], got {a}")
        for pattern in [self.smooth_layers, self.layers, *self.alpha_overrides]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise FlashVSRError(f"invalid layer regex {pattern!r} ({exc})") from None

    def new_observer(self):
        return make_observer(self.observer, self.percentile, self.bins_per_octave, self.clips_per_octave)


def _linears(model: nn.Module, pattern: str) -> dict[str, nn.Linear]:
    regex = re.compile(pattern)
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear and regex.fullmatch(n)}


@torch.no_grad()
def calibrate(model: FlashVSR, clips: Iterable[CalibrationClip], config: CalibrationConfig = CalibrationConfig(),
              progress=None) -> CalibrationStats:
    """Statistics of every linear's input over ``clips`` (re-iterated once more for smoothed ranges if needed).

    Args:
        model: float model (eval mode), on the device and dtype the statistics should reflect.
        clips: re-iterable :class:`CalibrationClip` source (:class:`FootageClips`, :class:`TensorClips`).
        progress: optional callable ``(pass_name, clip_index)``.
    Returns:
        CalibrationStats with ``source_hash`` = the calibration-set hash.
    """
    linears = _linears(model, config.layers)
    if not linears:
        raise FlashVSRError(f"no nn.Linear of the model matches {config.layers!r}")
    observers = {fqn: LayerObserver(m.in_features, config.new_observer()) for fqn, m in linears.items()}
    records, chunks = _run_pass(model, clips, observers, config.seed, "statistics", progress)
    if not records:
        raise FlashVSRError("the calibration set is empty")

    smoothing: dict[str, torch.Tensor] = {}
    if config.alpha is not None:
        for fqn in _linears(model, config.smooth_layers):
            if fqn in observers:
                alpha = alpha_for(fqn, config.alpha, config.alpha_overrides)
                smoothing[fqn] = smoothing_factors(observers[fqn].channel_absmax, linears[fqn].weight, alpha)

    smoothed_clip: dict[str, float] = {}
    if smoothing and config.observer == "minmax":  # the max of x / s is exact from the per-channel max
        smoothed_clip = {fqn: float((observers[fqn].channel_absmax / s).max()) for fqn, s in smoothing.items()}
    elif smoothing:
        second = {fqn: LayerObserver(linears[fqn].in_features, config.new_observer(), divisor=s)
                  for fqn, s in smoothing.items()}
        again, _ = _run_pass(model, clips, second, config.seed, "smoothed ranges", progress)
        if calibration_set_hash(again) != calibration_set_hash(records):
            raise FlashVSRError("the calibration clips changed between the two passes (non-deterministic source)")
        smoothed_clip = {fqn: obs.range_observer.clip() for fqn, obs in second.items()}

    layers, act_clip, phases = {}, {}, {}
    for fqn, obs in observers.items():
        if obs.tokens == 0:
            log.warning("%s was never called during calibration; it gets no statistics", fqn)
            continue
        layers[fqn] = LayerCalibration(obs.channel_absmax.clone(), smoothing.get(fqn), obs.tokens)
        act_clip[fqn] = obs.range_observer.clip()
        phases[fqn] = dict(obs.calls)
    set_hash = calibration_set_hash(records)

    meta = {
        **config.new_observer().settings(),
        "alpha": config.alpha, "alpha_overrides": config.alpha_overrides,
        "smoothed_layers": sorted(smoothing), "alpha_per_layer": {
            fqn: alpha_for(fqn, config.alpha, config.alpha_overrides) for fqn in sorted(smoothing)},
        "seed": config.seed, "model": getattr(getattr(model, "config", None), "name", ""),
        "dtype": str(model.dtype).removeprefix("torch."), "chunks": chunks,
        "calibration_set_hash": set_hash, "clips": records,
        "act_clip": act_clip, "smoothed_act_clip": smoothed_clip, "calls_per_phase": phases,
        "flashvsr_q": library_versions()["flashvsr_q"], "torch": torch.__version__,
    }
    return CalibrationStats(layers, set_hash, meta)


def _run_pass(model, clips, observers, seed, name, progress) -> tuple[list[dict], dict[str, int]]:
    records, chunks = [], {"first": 0, "later": 0}
    with ActivationRecorder(model, observers) as recorder:
        for i, clip in enumerate(clips):
            n = stream_clip(model, clip.lr, recorder, seed)
            chunks["first"] += 1
            chunks["later"] += n - 1
            records.append(clip.record)
            if progress:
                progress(name, i)
    return records, chunks


def parse_wxh(text: str) -> tuple[int, int]:
    """``"384x256"`` (width x height) -> (H, W) = (256, 384)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise FlashVSRError(f"--size must look like WIDTHxHEIGHT (e.g. 256x256), got {text!r}")
    return int(match.group(2)), int(match.group(1))


def parse_alpha_overrides(items: Sequence[str]) -> dict[str, float]:
    """``["dit\\.blocks\\.\\d+\\.ffn\\.2=0.8", ...]`` -> {pattern: alpha} (order kept: first match wins)."""
    out = {}
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            out[pattern] = float(value)
        except ValueError:
            sep = ""
        if not sep or not pattern:
            raise FlashVSRError(f"--alpha takes PATTERN=ALPHA (e.g. 'dit\\.blocks\\.\\d+\\.ffn\\.2=0.8'), got {item!r}")
    return out


SET_FIELDS = {"footage": list, "clips": int, "frames": int, "size": str, "lr": bool, "seed": int, "hash": str,
              "observer": str, "percentile": (int, float), "smoothquant_alpha": (int, float), "alpha": dict,
              "description": str}


def load_calibration_set(path: str | os.PathLike) -> dict:
    """A calibration-set file (YAML; ``calibration/*.yaml``): the footage and the settings of ``calibrate``.

    Keys are the CLI flags (``footage``, ``clips``, ``frames``, ``size``, ``lr``, ``seed``, ``hash``, ``observer``,
    ``percentile``, ``smoothquant_alpha``, ``alpha`` as ``{PATTERN: ALPHA}``) plus a free ``description``. Footage
    paths are relative to the file's folder (``builtin``, ``hf:``, ``stills:`` prefixes are kept). A bare name
    (``builtin``) is a shipped set.
    """
    import yaml

    path = by_name(path, calibration_dir())
    if not path.is_file():
        raise FlashVSRError(f"calibration set {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FlashVSRError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FlashVSRError(f"{path}: a calibration set is a YAML mapping")
    unknown = sorted(set(data) - set(SET_FIELDS))
    if unknown:
        raise FlashVSRError(f"{path}: unknown field {', '.join(unknown)} (fields: {', '.join(SET_FIELDS)})")
    for key, kind in SET_FIELDS.items():
        if key in data and (not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool))):
            raise FlashVSRError(f"{path}: {key} has the wrong type ({type(data[key]).__name__})")
    footage = []
    for item in data.get("footage", []):
        item = str(item)
        prefix = next((p for p in ("hf:", "stills:") if item.startswith(p)), "")
        rest = item[len(prefix):]
        footage.append(item if item == "builtin" or Path(rest).is_absolute() else prefix + str(path.parent / rest))
    if "footage" in data:
        data["footage"] = footage
    if "alpha" in data:
        data["alpha"] = {str(k): float(v) for k, v in data["alpha"].items()}
    return data


def smoothing_from_recipe(recipe, model: nn.Module) -> tuple[str, float | None]:
    """(regex of the layers a recipe quantizes with a scheme that takes SmoothQuant factors, its alpha or None)."""
    plan = resolve_plan(recipe, model, "cpu" if model.device.type == "cpu" else str(model.device))
    fqns = [f for f, layer in plan.quantized.items() if layer.scheme.supports_smoothing]
    alpha = (recipe.smoothquant or {}).get("alpha")
    return "|".join(re.escape(f) for f in fqns) or r"(?!)", alpha


# ---------------------------------------------------------------------------------------------------------------
# static int8 scales
# ---------------------------------------------------------------------------------------------------------------


def static_scale(stats: CalibrationStats, fqn: str, smoothed: bool | None = None) -> torch.Tensor:
    """The static per-tensor int8 activation scale of layer ``fqn`` (0-d fp32): observer range / 127.

    Args:
        smoothed: whether SmoothQuant factors are applied to this layer at run time (default: whenever the file
            has factors for it). The range is then that of ``x / s``.
    """
    entry = stats.layers.get(fqn)
    if entry is None:
        raise FlashVSRError(f"no calibration statistics for {fqn}")
    smoothed = entry.smoothing is not None if smoothed is None else smoothed
    if smoothed and entry.smoothing is None:
        raise FlashVSRError(f"{fqn} has no smoothing factors in these statistics (calibrate with --smoothquant-alpha)")
    clips = stats.meta.get("smoothed_act_clip" if smoothed else "act_clip", {})
    if fqn in clips:
        clip = torch.tensor(float(clips[fqn]))
    elif smoothed:
        clip = (entry.input_absmax.float() / entry.smoothing.float()).max()
    else:
        clip = entry.input_absmax.float().max()
    return (clip / INT8_MAX).clamp_min(torch.finfo(torch.float32).eps)


def static_scales(stats: CalibrationStats, smoothed: bool | None = None) -> dict[str, torch.Tensor]:
    """:func:`static_scale` of every layer in ``stats``."""
    return {fqn: static_scale(stats, fqn, smoothed) for fqn in stats.layers}


def observer_absmax(stats: CalibrationStats, fqn: str, smoothed: bool | None = None) -> torch.Tensor:
    """Layer ``fqn``'s per-channel max clipped to the observer's range: ``min(max|x_j|, clip * s_j)``.

    ``max(observer_absmax / s) / 127`` (``LayerCalibration.static_scale``) then equals :func:`static_scale`, so code
    that only knows ``input_absmax`` quantizes with the observer's range. Not for computing SmoothQuant factors.
    """
    entry = stats.layers[fqn]
    use_s = entry.smoothing is not None if smoothed is None else smoothed
    clip = static_scale(stats, fqn, use_s) * INT8_MAX
    limit = clip * entry.smoothing.float() if use_s else clip
    return torch.minimum(entry.input_absmax.float(), limit)


def with_static_ranges(stats: CalibrationStats, smoothed: bool | None = None) -> CalibrationStats:
    """A copy whose ``input_absmax`` is :func:`observer_absmax` (and smoothing kept only if ``smoothed``), for
    quantizing with code that derives the static scale from ``input_absmax``."""
    layers = {}
    for fqn, entry in stats.layers.items():
        use_s = entry.smoothing is not None if smoothed is None else smoothed
        layers[fqn] = LayerCalibration(observer_absmax(stats, fqn, use_s), entry.smoothing if use_s else None,
                                       entry.num_samples)
    return CalibrationStats(layers, stats.source_hash, dict(stats.meta))
