"""flashvsr_q.eval: degradation (HR -> LR), quality metrics (pyiqa, DOVER, temporal), report tables and plots.

- :mod:`~flashvsr_q.eval.degrade`: ``bicubic_downscale``, ``RealBasicVSRDegradation``, ``degrade_video``;
- :mod:`~flashvsr_q.eval.metrics`: the ``METRICS`` registry, ``compute_frame_metrics``, ``video_mean``;
- :mod:`~flashvsr_q.eval.temporal`: ``compute_temporal_metrics`` (E*warp, tLP, frame-difference error);
- :mod:`~flashvsr_q.eval.dover`: ``dover_score`` (optional, needs VQAssessment/DOVER);
- :mod:`~flashvsr_q.eval.report`: ``write_report``;
- :mod:`~flashvsr_q.eval.weights`: the offline weights folder and ``MetricUnavailable``;
- :mod:`~flashvsr_q.eval.clipio`: streaming frame I/O for video files and PNG folders.
"""

from flashvsr_q.eval.clipio import ClipWriter, probe, read_frames
from flashvsr_q.eval.degrade import (
    DegradeResult,
    RealBasicVSRDegradation,
    RealBasicVSRParams,
    bicubic_downscale,
    degrade_video,
    sample_params,
)
from flashvsr_q.eval.dover import Dover, DoverScore, dover_score
from flashvsr_q.eval.metrics import (
    METRICS,
    Metric,
    build_metric,
    compute_frame_metrics,
    get_metric,
    video_mean,
)
from flashvsr_q.eval.report import Report, write_report
from flashvsr_q.eval.temporal import (
    TEMPORAL_METRICS,
    FrameDifferenceError,
    WarpingError,
    build_temporal,
    compute_temporal_metrics,
)
from flashvsr_q.eval.weights import ENV_VAR, MetricUnavailable, WeightFile, weights_dir

__all__ = [
    "ENV_VAR",
    "METRICS",
    "TEMPORAL_METRICS",
    "ClipWriter",
    "DegradeResult",
    "Dover",
    "DoverScore",
    "FrameDifferenceError",
    "Metric",
    "MetricUnavailable",
    "RealBasicVSRDegradation",
    "RealBasicVSRParams",
    "Report",
    "WarpingError",
    "WeightFile",
    "bicubic_downscale",
    "build_metric",
    "build_temporal",
    "compute_frame_metrics",
    "compute_temporal_metrics",
    "degrade_video",
    "dover_score",
    "get_metric",
    "probe",
    "read_frames",
    "sample_params",
    "video_mean",
    "weights_dir",
    "write_report",
]
