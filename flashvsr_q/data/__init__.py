"""flashvsr_q.data: footage for calibration, QAT and training (video files, image folders, stills with
synthetic camera motion, local Hugging Face datasets), sampled as random HR clips."""

from flashvsr_q.data.footage import (
    SAMPLE_VIDEOS,
    ClipSampler,
    DatasetRowFootage,
    Footage,
    SequenceFootage,
    StillFootage,
    VideoFootage,
    camera_motion_clip,
    dataset_footage,
    footage_from_value,
    resolve_footage,
    sample_video,
    still_images,
)

__all__ = [
    "SAMPLE_VIDEOS",
    "ClipSampler",
    "DatasetRowFootage",
    "Footage",
    "SequenceFootage",
    "StillFootage",
    "VideoFootage",
    "camera_motion_clip",
    "dataset_footage",
    "footage_from_value",
    "resolve_footage",
    "sample_video",
    "still_images",
]
