"""DOVER (Wu et al., ICCV 2023), optional: a no-reference video quality score from VQAssessment/DOVER's own code.

Needs the ``dover`` package from https://github.com/VQAssessment/DOVER (GitHub only -- the PyPI project named
``dover`` is an unrelated tool; DOVER's code also imports ``decord``) and ``<weights>/dover/DOVER.pth``. Without
either, :class:`MetricUnavailable` says which is missing.

The score follows DOVER's ``evaluate_a_set_of_videos.py`` (after its branch-order fix): the technical branch sees
3 clips of 32 frames as 7x7 grids of 32x32 fragments, the aesthetic branch 32 frames resized to 224x224; raw
branch scores are averaged over clips and normalised as ``t = (raw_tech - 0.1107) / 0.07355`` and
``a = (raw_aes + 0.08285) / 0.03774``. FlashVSR, SeedVR2 and FastVR report ``sigmoid(t) x 100`` (the "technical"
column); that is ``dover`` here. All the other numbers come along as ``dover_*``. DOVER samples fragment offsets
and clip starts at random: numpy, Python and torch are seeded before every video so repeated runs agree.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvsr_q.eval.metrics import DOVER_WEIGHTS, resolve_device
from flashvsr_q.eval.weights import MetricUnavailable, offline, require
from flashvsr_q.video import clips as clipio

# dover.yml, "val-l1080p" sample types: the ones DOVER's evaluation scripts use
SAMPLE_TYPES = {
    "technical": {"fragments_h": 7, "fragments_w": 7, "fsize_h": 32, "fsize_w": 32, "aligned": 32,
                  "clip_len": 32, "frame_interval": 2, "num_clips": 3},
    "aesthetic": {"size_h": 224, "size_w": 224, "clip_len": 32, "frame_interval": 2, "t_frag": 32,
                  "num_clips": 1},
}
MODEL_ARGS = {
    "backbone": {"technical": {"type": "swin_tiny_grpb", "checkpoint": True, "pretrained": None},
                 "aesthetic": {"type": "conv_tiny"}},
    "backbone_preserve_keys": "technical,aesthetic",
    "divide_head": True,
    "vqa_head": {"in_channels": 768, "hidden_channels": 64},
}
MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])


@dataclass(frozen=True)
class DoverScore:
    """One video's DOVER numbers: raw branch outputs, their sigmoids (0-1), and the fused overall score."""

    raw_technical: float
    raw_aesthetic: float
    technical: float
    aesthetic: float
    overall: float

    def as_results(self) -> dict[str, float]:
        """``dover`` = technical x100 (FlashVSR's column), plus every value under ``dover_*``."""
        return {"dover": self.technical * 100, "dover_technical": self.technical, "dover_aesthetic": self.aesthetic,
                "dover_overall": self.overall, "dover_raw_technical": self.raw_technical,
                "dover_raw_aesthetic": self.raw_aesthetic}


def fuse(raw_technical: float, raw_aesthetic: float) -> DoverScore:
    """DOVER's score-level fusion (constants from evaluate_a_set_of_videos.py)."""
    t = (raw_technical - 0.1107) / 0.07355
    a = (raw_aesthetic + 0.08285) / 0.03774

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    return DoverScore(raw_technical, raw_aesthetic, sigmoid(t), sigmoid(a), sigmoid(0.6104 * t + 0.3896 * a))


def _import_dover():
    spec = importlib.util.find_spec("dover")
    if spec is None:
        raise MetricUnavailable("DOVER: the 'dover' package is not installed; install it from "
                                "https://github.com/VQAssessment/DOVER (pip install . in a clone; not PyPI's 'dover')")
    try:
        models = importlib.import_module("dover.models")
        datasets = importlib.import_module("dover.datasets")
        evaluator = importlib.import_module("dover.models.evaluator")
    except ImportError as exc:
        raise MetricUnavailable(f"DOVER: cannot import VQAssessment/DOVER's code ({exc}); "
                                "it needs decord and the DOVER repository's package, not PyPI's 'dover'") from exc
    return models, datasets, evaluator


class Dover:
    """DOVER built from the weights folder; ``Dover()(video_path) -> DoverScore``.

    Raises (at construction):
        MetricUnavailable: the ``dover`` package (with decord) or ``DOVER.pth`` is missing, or the file does not
            load into the model.
    """

    def __init__(self, device: str | torch.device | None = None, seed: int = 0) -> None:
        models, self._datasets, evaluator = _import_dover()
        (path,) = require("DOVER", (DOVER_WEIGHTS,))
        self.device = resolve_device(device)
        self.seed = seed
        original = evaluator.convnext_3d_tiny

        # DOVER builds its aesthetic backbone with pretrained=True, which downloads an ImageNet ConvNeXt that
        # DOVER.pth then overwrites entirely; build it empty instead (the strict load below proves nothing is lost)
        def convnext_without_download(*args, **kwargs):
            kwargs["pretrained"] = False
            return original(*args, **kwargs)

        with offline("DOVER"):
            evaluator.convnext_3d_tiny = convnext_without_download
            try:
                model = models.DOVER(**MODEL_ARGS)
                state = torch.load(path, map_location="cpu", weights_only=True)
                model.load_state_dict(state, strict=True)
            except MetricUnavailable:
                raise
            except Exception as exc:
                raise MetricUnavailable(f"DOVER: {path} does not load into DOVER ({exc})") from exc
            finally:
                evaluator.convnext_3d_tiny = original
        self.model = model.eval().to(self.device)
        self.samplers = {
            "technical": self._datasets.UnifiedFrameSampler(32, 3, 2),  # clip_len, num_clips, frame_interval
            "aesthetic": self._datasets.UnifiedFrameSampler(1, 32, 2, 1),  # clip_len // t_frag, t_frag, interval
        }

    def _seed(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    @torch.no_grad()
    def __call__(self, video: str | os.PathLike) -> DoverScore:
        """Score one video file (decoded by DOVER's decord reader)."""
        self._seed()
        views, _ = self._datasets.spatial_temporal_view_decomposition(str(video), SAMPLE_TYPES, self.samplers)
        inputs = {}
        for name in ("technical", "aesthetic"):  # explicit order: scores come back in the order of this dict
            view = views[name]  # [C, T, H, W], 0-255
            clips = SAMPLE_TYPES[name]["num_clips"]
            view = ((view.permute(1, 2, 3, 0) - MEAN) / STD).permute(3, 0, 1, 2)
            inputs[name] = view.reshape(view.shape[0], clips, -1, *view.shape[2:]).transpose(0, 1).to(self.device)
        scores = self.model(inputs, reduce_scores=False)
        raw = {name: float(score.mean()) for name, score in zip(inputs, scores)}
        return fuse(raw["technical"], raw["aesthetic"])


def dover_score(video: str | os.PathLike, device: str | torch.device | None = None, seed: int = 0) -> DoverScore:
    """DOVER of a video file or an image folder (encoded losslessly to a temporary file first).

    Raises:
        MetricUnavailable: see :class:`Dover`.
        FlashVSRError: unreadable input.
    """
    scorer = Dover(device, seed)
    info = clipio.probe(video)
    if info.kind == "video":
        return scorer(info.path)
    # DOVER reads files with decord; frames are wrapped losslessly (libx264rgb CRF 0) so no codec artefact is scored
    with tempfile.TemporaryDirectory(prefix="flashvsr-q-dover-") as tmp:
        target = Path(tmp) / "clip.mp4"
        with clipio.ClipWriter(target, fps=info.fps, lossless=True) as writer:
            for frame in clipio.read_frames(info.path):
                writer.write(frame)
            writer.close()
        return scorer(target)

