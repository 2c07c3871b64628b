"""flashvsr_q.eval: degradation (HR -> LR), quality metrics (pyiqa, DOVER, temporal), report tables and plots.

- :mod:`~flashvsr_q.eval.degrade`: ``bicubic_downscale``, ``RealBasicVSRDegradation``, ``degrade_video``;
- :mod:`~flashvsr_q.eval.metrics`: the ``METRICS`` registry, ``compute_frame_metrics``, ``video_mean``;
- :mod:`~flashvsr_q.eval.temporal`: ``compute_temporal_metrics`` (E*warp, tLP, frame-difference error);
- :mod:`~flashvsr_q.eval.dover`: ``dover_score`` (optional, needs VQAssessment/DOVER);
- :mod:`~flashvsr_q.eval.report`: ``write_report``;
- :mod:`~flashvsr_q.eval.weights`: the offline weights folder and ``MetricUnavailable``;
- :mod:`~flashvsr_q.eval.datasets`: ``load_dataset`` (REDS-style, VideoLQ-style, videos, ``heldout``);
- :mod:`~flashvsr_q.eval.configs` / :mod:`~flashvsr_q.eval.runner`: ``EvalConfig``, ``parse_config``, ``sweep``,
  ``evaluate`` (configurations over a dataset, written as a report).

Names are imported on first use, so ``flashvsr-q degrade`` does not pay for matplotlib or the metric stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "configs": ("EvalConfig", "parse_config", "sweep"),
    "datasets": ("Dataset", "load_dataset", "video_dataset"),
    "degrade": ("DegradeResult", "RealBasicVSRDegradation", "RealBasicVSRParams", "bicubic_downscale",
                "degrade_video", "sample_params"),
    "dover": ("Dover", "DoverScore", "dover_score"),
    "metrics": ("METRICS", "Metric", "build_metric", "compute_frame_metrics", "get_metric", "video_mean"),
    "report": ("Report", "write_report"),
    "runner": ("BICUBIC", "EvalResults", "evaluate"),
    "temporal": ("TEMPORAL_METRICS", "FrameDifferenceError", "WarpingError", "build_temporal",
                 "compute_temporal_metrics"),
    "weights": ("ENV_VAR", "MetricUnavailable", "WeightFile", "weights_dir"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'flashvsr_q.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"flashvsr_q.eval.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from flashvsr_q.eval.configs import EvalConfig, parse_config, sweep  # noqa: F401
    from flashvsr_q.eval.datasets import Dataset, load_dataset, video_dataset  # noqa: F401
    from flashvsr_q.eval.degrade import (  # noqa: F401
        DegradeResult,
        RealBasicVSRDegradation,
        RealBasicVSRParams,
        bicubic_downscale,
        degrade_video,
        sample_params,
    )
    from flashvsr_q.eval.dover import Dover, DoverScore, dover_score  # noqa: F401
    from flashvsr_q.eval.metrics import (  # noqa: F401
        METRICS,
        Metric,
        build_metric,
        compute_frame_metrics,
        get_metric,
        video_mean,
    )
    from flashvsr_q.eval.report import Report, write_report  # noqa: F401
    from flashvsr_q.eval.runner import BICUBIC, EvalResults, evaluate  # noqa: F401
    from flashvsr_q.eval.temporal import (  # noqa: F401
        TEMPORAL_METRICS,
        FrameDifferenceError,
        WarpingError,
        build_temporal,
        compute_temporal_metrics,
    )
    from flashvsr_q.eval.weights import ENV_VAR, MetricUnavailable, WeightFile, weights_dir  # noqa: F401
