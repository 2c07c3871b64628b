"""Footage sources: shipped samples, camera motion over stills, clip sampling, datasets, CLI resolution."""

from __future__ import annotations

import pickle
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from flashvsr_q.data import (
    ClipSampler,
    SequenceFootage,
    StillFootage,
    VideoFootage,
    camera_motion_clip,
    dataset_footage,
    resolve_footage,
    sample_video,
    still_images,
)
from flashvsr_q.errors import FlashVSRError


def coded_frame(t: int, h: int, w: int) -> np.ndarray:
    """Pixels that name their own position: R = frame index, G = row, B = column (mod 256)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.full((h, w), t), yy % 256, xx % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def coded_video(tmp_path_factory) -> Path:
    """40 frames of 96x80 in lossless FFV1, with a keyframe every 10 frames (so clips really seek)."""
    path = tmp_path_factory.mktemp("footage") / "coded.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = 96, 80, "bgr0", 10
        for t in range(40):
            frame = av.VideoFrame.from_ndarray(coded_frame(t, 80, 96), "rgb24").reformat(format="bgr0")
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def assert_coded_clip(clip: np.ndarray, num_frames: int, size: tuple[int, int]) -> None:
    """A clip cut from coded frames: consecutive frames, and one crop window for all of them."""
    assert clip.shape == (num_frames, *size, 3) and clip.dtype == np.uint8
    first = int(clip[0, 0, 0, 0])
    assert [int(f[0, 0, 0]) for f in clip] == list(range(first, first + num_frames))
    y, x = int(clip[0, 0, 0, 1]), int(clip[0, 0, 0, 2])
    for frame in clip:
        assert np.array_equal(frame[..., 1:], coded_frame(0, y + size[0], x + size[1])[y:, x:, 1:])


# ---------------------------------------------------------------------------------------------------------------
# shipped samples
# ---------------------------------------------------------------------------------------------------------------


def test_sample_videos_are_found():
    for name in ("bigbuckbunny", "bikes.mp4", "carphone_pristine", "carphone_distorted"):
        assert sample_video(name).is_file()
    with pytest.raises(FlashVSRError, match="unknown sample video"):
        sample_video("sintel")


def test_still_images_are_colour_photos():
    stills = still_images()
    names = {p.name for p in stills}
    assert {"astronaut.png", "china.jpg", "grace_hopper.jpg"} <= names
    assert not names & {"camera.png", "logo.png", "phantom.png", "chessboard_RGB.png"}  # grey, RGBA, drawings
    for path in stills:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 256


# ---------------------------------------------------------------------------------------------------------------
# camera motion
# ---------------------------------------------------------------------------------------------------------------


def test_camera_motion_moves_smoothly_and_is_deterministic():
    still = sample_still = str(still_images()[0])
    clip = camera_motion_clip(still, 16, (72, 96), seed=7)
    assert clip.shape == (16, 72, 96, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, camera_motion_clip(sample_still, 16, (72, 96), seed=7))
    assert not np.array_equal(clip, camera_motion_clip(sample_still, 16, (72, 96), seed=8))
    steps = np.abs(np.diff(clip.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    overall = np.abs(clip[-1].astype(np.float32) - clip[0]).mean()
    assert steps.min() > 0  # it moves on every frame
    assert steps.max() < 0.5 * overall  # consecutive frames stay much closer than the ends of the move


def test_camera_motion_window_stays_inside_the_image():
    # Out-of-image pixels would come back black; a uniform still must stay uniform for any seed.
    still = np.full((90, 110, 3), 180, np.uint8)
    for seed in range(5):
        clip = camera_motion_clip(still, 8, (64, 80), seed=seed)
        assert np.abs(clip.astype(int) - 180).max() <= 1
    with pytest.raises(FlashVSRError, match="too small"):
        camera_motion_clip(still, 8, (88, 108), seed=0)


# ---------------------------------------------------------------------------------------------------------------
# footage kinds and sampling
# ---------------------------------------------------------------------------------------------------------------


def test_video_footage_cuts_consecutive_cropped_frames(coded_video):
    footage = VideoFootage(coded_video)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(6):
        clip = footage.clip(rng, 7, (24, 32))
        assert_coded_clip(clip, 7, (24, 32))
        starts.add(int(clip[0, 0, 0, 0]))
    assert len(starts) > 1
    assert footage.clip(rng, 41, (24, 32)) is None and footage.clip(rng, 5, (81, 32)) is None


def test_image_folder_footage(tmp_path):
    for t in range(12):
        Image.fromarray(coded_frame(t, 40, 50)).save(tmp_path / f"f{t}.png")
    (footage,) = resolve_footage([tmp_path])
    assert isinstance(footage, SequenceFootage) and len(footage.frames) == 12
    assert_coded_clip(footage.clip(np.random.default_rng(1), 5, (16, 20)), 5, (16, 20))


def test_sampler_is_deterministic_and_shapes_are_right(coded_video):
    sources = [coded_video, sample_video("carphone_pristine"), str(still_images()[0])]
    a = ClipSampler(sources, num_frames=6, size=(32, 48), seed=3, length=8)
    b = ClipSampler(sources, num_frames=6, size=(32, 48), seed=3, length=8)
    clips = list(a)
    assert len(clips) == 8 and all(c.shape == (6, 32, 48, 3) and c.dtype == np.uint8 for c in clips)
    assert all(np.array_equal(x, b[i]) for i, x in enumerate(clips))
    assert np.array_equal(a[5], clips[5])  # random access gives the same clip as iteration
    assert np.array_equal(pickle.loads(pickle.dumps(a))[2], clips[2])  # DataLoader workers get a pickled copy
    other = ClipSampler(sources, num_frames=6, size=(32, 48), seed=4)
    assert any(not np.array_equal(other[i], clips[i]) for i in range(8))


def test_holdout_keeps_named_footage_aside(coded_video):
    sampler = ClipSampler([coded_video, sample_video("bikes")], num_frames=4, size=(32, 32), holdout=["bikes"])
    assert [f.name for f in sampler.held_out] == ["bikes.mp4"]
    assert [f.name for f in sampler.footage] == ["coded.mkv"]
    for i in range(3):
        assert_coded_clip(sampler[i], 4, (32, 32))  # only the coded video is sampled
    with pytest.raises(FlashVSRError, match="holdout names not found among the footage: nope"):
        ClipSampler([coded_video], num_frames=4, size=(32, 32), holdout=["nope"])
    with pytest.raises(FlashVSRError, match="all of it is held out"):
        ClipSampler([coded_video], num_frames=4, size=(32, 32), holdout=["coded"])


def test_footage_too_small_for_the_clip_is_an_error(coded_video):
    sampler = ClipSampler([coded_video], num_frames=50, size=(32, 32), max_tries=5)
    with pytest.raises(FlashVSRError, match="50 frames"):
        sampler[0]


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (local only)
# ---------------------------------------------------------------------------------------------------------------


def test_dataset_of_image_sequences_and_video_paths(tmp_path, coded_video):
    datasets = pytest.importorskip("datasets")
    sequences = [[Image.fromarray(coded_frame(t, 36, 44)) for t in range(n)] for n in (8, 10)]
    ds = datasets.Dataset.from_dict({"label": [0, 1], "frames": sequences})
    rows = dataset_footage(ds)
    assert [f.name for f in rows] == ["dataset[0]", "dataset[1]"] and rows[0].column == "frames"
    sampler = ClipSampler([ds], num_frames=5, size=(20, 24), seed=0, holdout=["dataset[1]"], length=4)
    for clip in sampler:
        assert_coded_clip(clip, 5, (20, 24))

    paths = datasets.Dataset.from_dict({"video": [str(coded_video)]})
    paths.save_to_disk(str(tmp_path / "videos"))
    (footage,) = resolve_footage([f"hf:{tmp_path / 'videos'}"])
    assert_coded_clip(footage.clip(np.random.default_rng(0), 6, (30, 30)), 6, (30, 30))

    arrays = datasets.Dataset.from_dict({"clip": [np.stack([coded_frame(t, 24, 24) for t in range(6)])]})
    assert_coded_clip(ClipSampler([arrays], num_frames=3, size=(16, 16))[0], 3, (16, 16))


# ---------------------------------------------------------------------------------------------------------------
# resolving --footage arguments
# ---------------------------------------------------------------------------------------------------------------


def test_resolve_folder_stills_and_builtin(tmp_path, coded_video):
    (tmp_path / "clips" / "seq").mkdir(parents=True)
    (tmp_path / "clips" / "a.mkv").write_bytes(coded_video.read_bytes())
    for t in range(3):
        Image.fromarray(coded_frame(t, 16, 16)).save(tmp_path / "clips" / "seq" / f"{t}.png")
    found = resolve_footage([tmp_path / "clips"])
    assert [(type(f).__name__, f.name) for f in found] == [("VideoFootage", "a.mkv"), ("SequenceFootage", "clips/seq")]
    stills = resolve_footage([f"stills:{tmp_path / 'clips'}"])
    assert [f.name for f in stills] == ["0.png", "1.png", "2.png"] and isinstance(stills[0], StillFootage)
    builtin = {f.name for f in resolve_footage(["builtin"])}
    assert {"bigbuckbunny.mp4", "bikes.mp4", "astronaut.png"} <= builtin and "carphone_distorted.mp4" not in builtin


@pytest.mark.parametrize("spec, match", [
    ("missing.mp4", "does not exist"),
    ("empty_dir", "no videos or images"),
    ("junk.mp4", "not a readable video"),
    ("hf:missing", "no such folder"),
    ("hf:empty_dir", "not a dataset"),
    ("stills:missing", "no such folder"),
])
def test_bad_footage_paths(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(FlashVSRError, match=match) as info:
        resolve_footage([spec])
    assert "\n" not in str(info.value)
