"""Reading footage (video file, image, image folder) frame by frame, and writing images.

Every input kind becomes a ``FrameSource``: geometry, an exact frame count, the per-frame timestamps and a
``frames(start)`` generator of uint8 RGB arrays ``[H, W, 3]`` in 0..255. Nothing here holds more than one
decoded frame (the timestamp table is one int64 per frame), so host RAM does not grow with video length.
Videos are read with PyAV (its wheel bundles FFmpeg), images with Pillow. Encoded video output lives in
``segments.py``; the image writers are here because they are one file per frame.

Every problem with the input is a ``FlashVSRError`` whose one-line message names the file and the problem.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageOps

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".flv", ".wmv", ".mpg", ".mpeg", ".ts",
                    ".m2ts", ".mts", ".3gp", ".ogv", ".gif", ".y4m")
IMAGE_FOLDER_FPS = Fraction(30)  # image sequences carry no rate; 30 is what video tools assume
# swscale flags for every YUV <-> RGB conversion. BITEXACT takes the C path, which gives the same pixels on every
# CPU (the SIMD paths differ between machines); bicubic full-resolution chroma with accurate rounding gains ~2.7 dB
# over the defaults on a YUV 4:2:0 round trip (astronaut.png: 41.1 vs 38.3 dB), for ~35 ms per 4K frame.
_SWS = av.video.reformatter.Interpolation
SWS_FLAGS = _SWS.BICUBIC | _SWS.BITEXACT | _SWS.ACCURATE_RND | _SWS.FULL_CHR_H_INT | _SWS.FULL_CHR_H_INP

SourceKind = Literal["video", "image", "image_folder"]


def natural_key(name: str) -> tuple:
    """Sort key that orders ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (no recursion, hidden files skipped), naturally sorted."""
    folder = Path(folder)
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def list_videos(folder: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                recursive: bool = False) -> list[Path]:
    """Video files in ``folder`` (batch mode), chosen by extension and naturally sorted.

    Raises ``FlashVSRError`` when the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FlashVSRError(f"{folder}: not a folder")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found = folder.rglob("*") if recursive else folder.iterdir()
    videos = [p for p in found if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts]
    return sorted(videos, key=lambda p: natural_key(str(p.relative_to(folder))))


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the source, its timestamp (in ``time_base`` units) and the pixels."""

    index: int
    pts: int
    rgb: np.ndarray  # uint8 [H, W, 3], 0..255


@dataclass(frozen=True, eq=False)
class FrameSource:
    """An opened input. Cheap to keep: no file handle stays open between ``frames()`` calls.

    Attributes:
        path: the file or folder that was opened.
        kind: ``"video"``, ``"image"`` (a 1-frame video) or ``"image_folder"`` (one frame per file).
        width, height: frame size in pixels, after applying any rotation the container asks for.
        num_frames: exact count (video: packets counted by demuxing, and checked while decoding).
        fps: nominal frame rate (the stream's average rate; 30 for images).
        time_base: unit of ``pts`` in seconds.
        pts: int64 ``[num_frames]``, strictly increasing presentation timestamps of the frames.
        has_audio, has_subtitles: whether the container holds streams the writer can copy.
        files: the image files, in frame order (empty for videos).
        rotation: degrees counter-clockwise the decoded pictures are turned by before they are returned.
        sample_aspect_ratio: pixel aspect ratio of the stream, ``None`` when square or unknown.
        declared_frames: set when the container promises more frames than its stream holds (a truncated file):
            the promised count, from the stream's frame count or duration; ``None`` otherwise.
    """

    path: Path
    kind: SourceKind
    width: int
    height: int
    num_frames: int
    fps: Fraction
    time_base: Fraction
    pts: np.ndarray = field(repr=False)
    has_audio: bool = False
    has_subtitles: bool = False
    files: tuple[Path, ...] = field(default=(), repr=False)
    rotation: int = 0
    sample_aspect_ratio: Fraction | None = None
    declared_frames: int | None = None
    # Container timestamps that are missing or repeated cannot be seeked to; frames are then counted.
    _seekable: bool = field(default=True, repr=False)

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return float((int(self.pts[-1]) - int(self.pts[0])) * self.time_base + 1 / self.fps)

    def frames(self, start: int = 0) -> Iterator[Frame]:
        """Yield frames ``start .. num_frames-1`` in order, one decoded frame in memory at a time.

        Seeking is exact: a video seeks to the keyframe before ``start`` and decodes the frames in between.
        Raises ``FlashVSRError`` when the file turns out to be corrupt or holds fewer frames than counted.
        """
        if not 0 <= start <= self.num_frames:
            raise ValueError(f"start={start} outside 0..{self.num_frames}")
        if start == self.num_frames:
            return
        if self.kind == "video":
            yield from _decode_video(self, start)
        else:
            for index in range(start, self.num_frames):
                yield Frame(index, int(self.pts[index]), read_image(self.files[index]))


def open_source(path: str | os.PathLike) -> FrameSource:
    """Open a video file, a single image, or a folder of equally sized images.

    Raises ``FlashVSRError`` (one line, naming the file) for a missing or empty path, an unreadable or
    corrupt file, a file without a video stream, zero frames, or an image folder with mixed sizes.
    """
    path = Path(path)
    if not path.exists():
        raise FlashVSRError(f"{path}: no such file or folder")
    if path.is_dir():
        return _open_image_folder(path)
    if path.stat().st_size == 0:
        raise FlashVSRError(f"{path}: file is empty")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        rgb = read_image(path)  # decode fully now so a truncated image fails here, not mid-run
        return FrameSource(path, "image", rgb.shape[1], rgb.shape[0], 1, IMAGE_FOLDER_FPS,
                           1 / IMAGE_FOLDER_FPS, np.zeros(1, np.int64), files=(path,))
    return _open_video(path)


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> uint8 [H, W, 3]. EXIF orientation is applied; alpha is dropped."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):
        # 16-bit greyscale: Pillow's convert("RGB") would clip instead of scaling down.
        grey = (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_image(path: Path) -> np.ndarray:
    """One image file -> uint8 RGB [H, W, 3] (EXIF orientation applied, alpha dropped, 16-bit scaled)."""
    try:
        with Image.open(path) as image:
            return _pil_to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        problem = "file is empty" if path.exists() and path.stat().st_size == 0 else f"cannot read image ({exc})"
        raise FlashVSRError(f"{path}: {problem}") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, from the header only (EXIF rotation swaps them)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # orientations that turn by 90 degrees
                width, height = height, width
            return width, height
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FlashVSRError(f"{path}: cannot read image ({exc})") from None


def _open_image_folder(folder: Path) -> FrameSource:
    files = list_images(folder)
    if not files:
        raise FlashVSRError(f"{folder}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    width, height = _image_size(files[0])
    for file in files[1:]:
        size = _image_size(file)
        if size != (width, height):
            raise FlashVSRError(f"{file}: image is {size[0]}x{size[1]} but {files[0].name} is {width}x{height}; "
                                "all images of a folder must have the same size")
    return FrameSource(folder, "image_folder", width, height, len(files), IMAGE_FOLDER_FPS,
                       1 / IMAGE_FOLDER_FPS, np.arange(len(files), dtype=np.int64), files=tuple(files))


def _atomic_save(image: Image.Image, path: Path) -> None:
    """Save by extension to a hidden temporary name in the same folder, then rename over ``path``."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise FlashVSRError(f"{path}: unsupported image extension (use one of {', '.join(IMAGE_EXTENSIONS)})")
    options = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}.get(fmt, {})
    try:
        atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))
    except OSError as exc:
        raise FlashVSRError(f"{path}: cannot write image ({exc})") from None


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write uint8 ``[H, W, 3]`` RGB as png/jpg/webp/bmp/tif (by extension), atomically."""
    path = Path(path)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(Image.fromarray(rgb, "RGB"), path)
    return path


class ImageFolderWriter:
    """One image per frame, named after the input files (``frame_007.jpg`` -> ``frame_007.png``).

    Each file is written to a temporary name and renamed, so a file that exists is complete; ``done(i)``
    lets a resumed run skip frames already written.
    """

    def __init__(self, folder: str | os.PathLike, names: Sequence[str], ext: str = ".png") -> None:
        self.folder = Path(folder)
        self.paths = [self.folder / (Path(name).stem + ext) for name in names]
        if len(set(self.paths)) != len(self.paths):
            raise FlashVSRError(f"{self.folder}: input names collide once the extension becomes {ext}")
        self.folder.mkdir(parents=True, exist_ok=True)

    def done(self, index: int) -> bool:
        """Whether frame ``index`` is already on disk (complete, thanks to the rename)."""
        return self.paths[index].exists()

    def write(self, index: int, rgb: np.ndarray) -> Path:
        """Write frame ``index`` (uint8 ``[H, W, 3]``)."""
        return write_image(self.paths[index], rgb)


# ---------------------------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------------------------


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise FlashVSRError(f"{path}: not a readable video or image ({exc.strerror or exc})") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    # Cover art in audio files shows up as a one-picture "video" stream; it is not footage.
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise FlashVSRError(f"{path}: no video stream")
    return streams[0]


def _open_video(path: Path) -> FrameSource:
    with _open_container(path) as container:
        stream = _video_stream(container, path)
        # Count by demuxing (no decoding): container frame counts are missing or wrong too often.
        try:
            packets = [p for p in container.demux(stream) if p.size]
        except av.FFmpegError as exc:
            raise FlashVSRError(f"{path}: corrupt video ({exc.strerror or exc})") from None
        pts_list = [p.pts for p in packets if not p.is_discard]
        if not pts_list:
            raise FlashVSRError(f"{path}: video stream has no frames")
        time_base = stream.time_base or Fraction(1, 90000)
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        seekable = None not in pts_list and len(set(pts_list)) == len(pts_list)
        if seekable:
            pts = np.sort(np.asarray(pts_list, dtype=np.int64))
            if fps is None and len(pts) > 1:
                fps = Fraction(len(pts) - 1) / ((int(pts[-1]) - int(pts[0])) * time_base)
        fps = Fraction(fps) if fps else IMAGE_FOLDER_FPS
        if not seekable:
            # No usable timestamps (raw elementary streams): number the frames at the nominal rate.
            time_base = 1 / fps
            pts = np.arange(len(pts_list), dtype=np.int64)
        has_audio = len(container.streams.audio) > 0
        has_subtitles = len(container.streams.subtitles) > 0
        sar = stream.sample_aspect_ratio
        declared = _declared_frames(container, stream, fps, len(packets))
    probe = FrameSource(path, "video", 0, 0, len(pts), fps, time_base, pts, _seekable=seekable)
    first = _first_frame(probe)  # proves the stream decodes and gives the real size and rotation
    rotation = first.rotation % 360 if first.rotation % 90 == 0 else 0
    width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    return FrameSource(path, "video", width, height, len(pts), fps, time_base, pts, has_audio, has_subtitles,
                       rotation=rotation, sample_aspect_ratio=sar if sar and sar != 1 else None,
                       declared_frames=declared, _seekable=seekable)


def _declared_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: Fraction,
                     found: int) -> int | None:
    """The frame count the container promises when the stream holds fewer (``found`` packets), else None.

    The promise is the stream's frame count (MP4/MOV sample tables) or, failing that, its duration (the stream's
    own, or Matroska's per-track DURATION tag, or the file's when the video is its only stream) times the frame
    rate; a duration is allowed one frame of rounding.
    """
    if stream.frames:
        return stream.frames if found < stream.frames else None
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif "DURATION" in stream.metadata:
        match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", stream.metadata["DURATION"].strip())
        if match:
            seconds = int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))
    elif container.duration and len(container.streams) == 1:
        seconds = container.duration / av.time_base
    if seconds is None:
        return None
    promised = round(seconds * fps)
    return promised if found < promised - 1 else None


def _first_frame(source: FrameSource) -> av.VideoFrame:
    with _open_container(source.path) as container:
        try:
            for frame in container.decode(_video_stream(container, source.path)):
                return frame
        except av.FFmpegError as exc:
            raise FlashVSRError(f"{source.path}: corrupt video ({exc.strerror or exc})") from None
    raise FlashVSRError(f"{source.path}: video stream has no decodable frames")


def _to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """Decoded picture -> uint8 [H, W, 3] with the stream's own YUV matrix, turned upright."""
    kwargs = {"interpolation": SWS_FLAGS}
    if frame.colorspace == 2:  # unspecified: players assume BT.709 for HD and BT.601 below it
        kwargs["src_colorspace"] = "itu709" if frame.height >= 720 else "itu601"
    rgb = frame.to_ndarray(format="rgb24", **kwargs)
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


def _decode_video(source: FrameSource, start: int, seek: bool = True) -> Iterator[Frame]:
    """Decode frames ``start..`` and check each timestamp against the table made when opening.

    With ``seek`` the demuxer jumps to the keyframe at or before ``start``; without it (or for sources whose
    timestamps cannot be trusted) decoding starts at frame 0 and the frames before ``start`` are dropped.
    """
    table = source.pts
    check = source._seekable  # compare decoded timestamps with the table, so a lost frame cannot shift the rest
    index = start if seek and check and start > 0 else 0
    with _open_container(source.path) as container:
        stream = _video_stream(container, source.path)
        stream.thread_type = "AUTO"  # frame threads: faster, and decoding stays bit-exact
        try:
            if index > 0:
                container.seek(int(table[index]), stream=stream, backward=True)
            for frame in container.decode(stream):
                if check and frame.pts is not None:
                    if frame.pts < table[index]:
                        continue  # decoded from the keyframe before the seek target
                    if frame.pts != table[index]:
                        if index == start > 0 and seek:
                            break  # the demuxer sought past the target: decode from the start instead
                        found = bisect.bisect_left(table, frame.pts)
                        raise FlashVSRError(f"{source.path}: frame {index} is missing or corrupt (decoder jumped "
                                            f"to frame {found} of {source.num_frames})")
                if index >= start:
                    yield Frame(index, int(table[index]), _to_rgb(frame, source.rotation))
                index += 1
                if index == source.num_frames:
                    return
            else:
                raise FlashVSRError(f"{source.path}: only {index} of {source.num_frames} frames could be decoded "
                                    "(truncated or corrupt file)")
        except av.FFmpegError as exc:
            raise FlashVSRError(f"{source.path}: corrupt video at frame {index} ({exc.strerror or exc})") from None
    yield from _decode_video(source, start, seek=False)
