"""What calibration hands to PTQ: per-layer activation statistics and SmoothQuant factors, and their file format.

``flashvsr-q calibrate`` (``calibration.py``) fills a :class:`CalibrationStats`; ``quantize_model`` reads it.
The file is one safetensors file with ``<fqn>.input_absmax`` / ``<fqn>.smoothing`` tensors (fp32) and JSON
metadata (``source_hash``, ``meta``), so it is as safe to open as a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import atomic_write

FORMAT = "flashvsr-q-calibration"
FORMAT_VERSION = 1


@dataclass
class LayerCalibration:
    """Statistics of one ``nn.Linear`` input.

    Args:
        input_absmax: [in_features] per-channel max |x| over the calibration set, or a 0-d per-tensor max.
        smoothing: [in_features] SmoothQuant factors ``s`` (activations are divided by ``s``, weight columns
            multiplied by it); None means no smoothing.
        num_samples: tokens observed (informational).
    """

    input_absmax: torch.Tensor
    smoothing: torch.Tensor | None = None
    num_samples: int = 0

    def __post_init__(self) -> None:
        if self.input_absmax.ndim > 1:
            raise ValueError(f"input_absmax must be 0-d or [in_features], got shape {tuple(self.input_absmax.shape)}")
        if self.smoothing is not None:
            if self.smoothing.ndim != 1:
                raise ValueError(f"smoothing must be [in_features], got shape {tuple(self.smoothing.shape)}")
            if not bool((self.smoothing > 0).all()):
                raise ValueError("smoothing factors must be positive")

    def static_scale(self) -> torch.Tensor:
        """The per-tensor int8 activation scale after smoothing: ``max(absmax / s) / 127`` (0-d fp32)."""
        absmax = self.input_absmax.float()
        if self.smoothing is not None:
            if absmax.ndim == 0:
                raise ValueError("smoothing needs per-channel input_absmax to derive the static scale")
            absmax = absmax / self.smoothing.float()
        return (absmax.max() / 127.0).clamp_min(torch.finfo(torch.float32).eps)


@dataclass
class CalibrationStats:
    """Per-layer statistics keyed by module fqn (``dit.blocks.0.ffn.2``), plus where they came from."""

    layers: dict[str, LayerCalibration]
    source_hash: str = ""
    meta: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """SHA-256 recorded in compressed manifests: the source hash if given, else a hash of the statistics."""
        if self.source_hash:
            return self.source_hash
        digest = hashlib.sha256()
        for fqn in sorted(self.layers):
            entry = self.layers[fqn]
            for tensor in (entry.input_absmax, entry.smoothing):
                digest.update(fqn.encode())
                if tensor is not None:
                    digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tensors = {}
        for fqn, entry in self.layers.items():
            tensors[f"{fqn}.input_absmax"] = entry.input_absmax.detach().float().cpu().contiguous()
            if entry.smoothing is not None:
                tensors[f"{fqn}.smoothing"] = entry.smoothing.detach().float().cpu().contiguous()
        samples = {fqn: entry.num_samples for fqn, entry in self.layers.items()}
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "source_hash": self.source_hash,
                    "meta": json.dumps(self.meta), "num_samples": json.dumps(samples)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationStats:
        path = Path(path)
        if not path.is_file():
            raise FlashVSRError(f"calibration statistics {path} do not exist (make them with `flashvsr-q calibrate`)")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise FlashVSRError(f"{path}: not a readable calibration file ({exc})") from None
        if metadata.get("format") != FORMAT:
            raise FlashVSRError(f"{path}: not a flashvsr-q calibration file (format {metadata.get('format')!r})")
        samples = json.loads(metadata.get("num_samples", "{}"))
        layers = {}
        for key, tensor in tensors.items():
            fqn, kind = key.rsplit(".", 1)
            if kind == "input_absmax":
                layers[fqn] = LayerCalibration(tensor, tensors.get(f"{fqn}.smoothing"), int(samples.get(fqn, 0)))
        return cls(layers, metadata.get("source_hash", ""), json.loads(metadata.get("meta", "{}")))


def synthetic_calibration(plan, seed: int = 0) -> CalibrationStats:
    """Random statistics of the right shapes for every calibrated or smoothed layer of ``plan`` (a ``QuantPlan``):
    for measuring the speed and size of recipes that need statistics (``flashvsr-q bench --calibration
    synthetic``), never for quality."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for fqn, layer in plan.quantized.items():
        if layer.scheme.needs_calibration or layer.scheme.supports_smoothing:
            in_features = layer.shape[1]
            layers[fqn] = LayerCalibration(torch.rand(in_features, generator=g) * 4 + 0.1,
                                           torch.rand(in_features, generator=g) + 0.5)
    return CalibrationStats(layers, source_hash="synthetic", meta={"synthetic": True})
