"""Clips for evaluation and degradation: frames in and out of video files and PNG folders, and codec round trips.

Frames are uint8 numpy arrays ``[H, W, 3]``, RGB. Nothing here holds a whole clip: readers are generators, the
writer encodes as it goes, and the codec round trip keeps only the encoder's own lookahead in flight. Outputs are
written under a hidden temporary name and renamed when complete (DESIGN: nothing half-written).
"""

from __future__ import annotations

import fractions
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.video.sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images, read_image
from flashvsr_q.video.streams import remux_with_streams_of

DEFAULT_FPS = fractions.Fraction(25)


@dataclass(frozen=True)
class ClipInfo:
    """What :func:`probe` learned about a clip: its kind, frame size, frame rate and (if known) frame count."""

    path: Path
    kind: str  # "video" or "images"
    width: int
    height: int
    fps: fractions.Fraction
    frames: int | None


def is_video_path(path: str | os.PathLike) -> bool:
    """True if ``path`` names a video file by its extension (the file need not exist)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise FlashVSRError(f"cannot read video {path}: {exc.strerror or exc}") from exc
    if not container.streams.video:
        container.close()
        raise FlashVSRError(f"{path} has no video stream")
    return container


def probe(path: str | os.PathLike) -> ClipInfo:
    """Check that ``path`` is a readable video file or a folder of images and describe it.

    Raises:
        FlashVSRError: missing path, unreadable or corrupt file, no video stream, empty folder.
    """
    path = Path(path)
    if not path.exists():
        raise FlashVSRError(f"no such file or folder: {path}")
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise FlashVSRError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        height, width = read_image(images[0]).shape[:2]
        return ClipInfo(path, "images", width, height, DEFAULT_FPS, len(images))
    with _open_video(path) as container:
        stream = container.streams.video[0]
        fps = fractions.Fraction(stream.average_rate) if stream.average_rate else DEFAULT_FPS
        frames = stream.frames or None
        try:  # the header's size can lie (or be absent); the first decoded frame cannot
            first = next(container.decode(stream))
        except StopIteration:
            raise FlashVSRError(f"{path} has a video stream but no decodable frames") from None
        except av.error.FFmpegError as exc:
            raise FlashVSRError(f"cannot decode video {path}: {exc.strerror or exc}") from exc
        return ClipInfo(path, "video", first.width, first.height, fps, frames)


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or image folder, one at a time, as uint8 ``[H, W, 3]`` RGB.

    Raises:
        FlashVSRError: as :func:`probe`, or when decoding fails midway or image sizes differ within a folder.
    """
    info = probe(path)
    if info.kind == "images":
        for image_path in list_images(info.path):
            frame = read_image(image_path)
            if frame.shape[:2] != (info.height, info.width):
                raise FlashVSRError(f"{image_path} is {frame.shape[1]}x{frame.shape[0]}, "
                                    f"other frames are {info.width}x{info.height}")
            yield frame
        return
    with _open_video(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise FlashVSRError(f"cannot decode video {info.path}: {exc.strerror or exc}") from exc


def partial_path(dst: Path) -> Path:
    """The hidden temporary name an output is written under (keeps the extension so the muxer can be chosen)."""
    return dst.with_name(f".{dst.stem}.partial{dst.suffix}") if dst.suffix else dst.with_name(f".{dst.name}.partial")


class ClipWriter:
    """Write frames to a video file or a PNG folder; rename into place on :meth:`close`.

    Videos are H.264 that plays everywhere by default (yuv420p, CRF 18; yuv444p when a side is odd, which 4:2:0
    cannot hold); ``lossless=True`` writes ``libx264rgb`` at CRF 0 instead, so the frames read back are exactly the
    frames written (LR footage made for evaluation should carry only the degradation that was asked for; most
    browsers and phones cannot play it). ``audio_from``: a video whose audio and subtitle streams are copied in.
    PNG folders get ``00000000.png``, ``00000001.png``, ... Use as a context manager: an exception inside the block
    removes the temporary output.
    """

    def __init__(self, dst: str | os.PathLike, fps: fractions.Fraction = DEFAULT_FPS, overwrite: bool = False, *,
                 lossless: bool = False, crf: int = 18, audio_from: str | os.PathLike | None = None):
        self.dst = Path(dst)
        if self.dst.exists() and not overwrite:
            raise FlashVSRError(f"{self.dst} already exists (--overwrite / overwrite=True replaces it)")
        if not self.dst.parent.is_dir():
            raise FlashVSRError(f"output folder {self.dst.parent} does not exist")
        self.video = is_video_path(self.dst)
        self.tmp = partial_path(self.dst)
        self.fps = fps
        self.lossless, self.crf = lossless, crf
        self.audio_from = Path(audio_from) if audio_from is not None and is_video_path(audio_from) else None
        self.count = 0
        self.pix_fmt: str | None = None
        self.audio_copied = False
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        _remove(self.tmp)  # a leftover from an interrupted run
        if not self.video:
            self.tmp.mkdir()

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 ``[H, W, 3]`` RGB frame."""
        if self.video:
            if self._container is None:
                self._open(frame.shape[1], frame.shape[0])
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            self._container.mux(self._stream.encode(video_frame))
        else:
            Image.fromarray(frame).save(self.tmp / f"{self.count:08d}.png", compress_level=1)
        self.count += 1

    def _open(self, width: int, height: int) -> None:
        self._container = av.open(str(self.tmp), "w")
        if self.lossless:
            codec, self.pix_fmt, options = "libx264rgb", "rgb24", {"crf": "0", "preset": "medium"}
        else:
            codec, options = "libx264", {"crf": str(self.crf), "preset": "medium"}
            self.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._stream = self._container.add_stream(codec, rate=self.fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = self.pix_fmt
        self._stream.options = options

    def describe(self) -> str:
        """What was (or will be) written, for the summary line."""
        if not self.video:
            return f"{self.count} PNG frames"
        if self.lossless:
            kind = "lossless H.264 RGB (libx264rgb CRF 0: exact frames, for evaluation; not every player plays it)"
        elif self.pix_fmt == "yuv444p":
            kind = f"H.264 yuv444p CRF {self.crf} (an odd side rules out 4:2:0; plays in VLC and ffmpeg)"
        else:
            kind = f"H.264 yuv420p CRF {self.crf} (plays everywhere)"
        return f"{self.count} frames, {kind}" + (", audio copied" if self.audio_copied else "")

    def close(self) -> Path:
        """Finish the file (flush the encoder, copy the audio) and move it to ``dst``; returns ``dst``."""
        if self.count == 0:
            self.abort()
            raise FlashVSRError(f"no frames to write to {self.dst}")
        if self._container is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None
        if self.video and self.audio_from is not None:
            with_audio = self.tmp.with_name(f".{self.dst.stem}.audio{self.dst.suffix}")
            try:
                self.audio_copied = remux_with_streams_of(self.tmp, self.audio_from, with_audio)
                if self.audio_copied:
                    os.replace(with_audio, self.tmp)
            finally:
                _remove(with_audio)
        if self.dst.exists():
            old = self.dst.with_name(f".{self.dst.name}.old")
            _remove(old)
            os.replace(self.dst, old)
            os.replace(self.tmp, self.dst)
            _remove(old)
        else:
            os.replace(self.tmp, self.dst)
        return self.dst

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                pass
            self._container = None
        _remove(self.tmp)

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# decoder for each encoder name RealBasicVSR draws from ("h264" is an alias of libx264 in FFmpeg builds)
_DECODERS = {"libx264": "h264", "h264": "h264", "mpeg4": "mpeg4"}


def codec_roundtrip(frames: Iterable[np.ndarray], codec: str, bitrate: int,
                    rate: int = 1) -> Iterator[np.ndarray]:
    """Encode ``frames`` with ``codec`` at ``bitrate`` bit/s and yield the decoded frames, in memory, streaming.

    ``rate`` is the nominal frame rate: RealBasicVSR encodes at 1 fps, so ``bitrate`` is the bit budget per frame.
    Frames are padded to even sizes for yuv420p and cropped back. Output is bit-exact across runs: both codecs run
    single-threaded, and x264's macroblock-tree pass is off (with it on, identical input gave different bitstreams
    in about one run in fifty, and never with ``asm=0``: a SIMD path reading uninitialised memory). mbtree only
    redistributes bits between frames; the bitrate-starved H.264 character of the degradation is unchanged.
    """
    if codec not in _DECODERS:
        raise FlashVSRError(f"unknown codec {codec!r}; choose from {', '.join(_DECODERS)}")
    encoder = decoder = None
    size: tuple[int, int] | None = None
    count_in = count_out = 0

    def decode(packets: Iterable[av.Packet | None]) -> Iterator[np.ndarray]:
        nonlocal count_out
        for packet in packets:
            for decoded in decoder.decode(packet):
                count_out += 1
                yield decoded.to_ndarray(format="rgb24")[: size[0], : size[1]].copy()

    for frame in frames:
        if encoder is None:
            size = frame.shape[:2]
            encoder = av.CodecContext.create(codec, "w")
            encoder.height, encoder.width = size[0] + size[0] % 2, size[1] + size[1] % 2
            encoder.pix_fmt = "yuv420p"
            encoder.bit_rate = int(bitrate)
            encoder.time_base = fractions.Fraction(1, rate)
            encoder.framerate = rate
            encoder.thread_count = 1
            if codec != "mpeg4":
                encoder.options = {"x264-params": "mbtree=0"}
            decoder = av.CodecContext.create(_DECODERS[codec], "r")
            decoder.thread_count = 1
        if frame.shape[:2] != size:
            raise FlashVSRError(f"frame {count_in} is {frame.shape[1]}x{frame.shape[0]}, expected {size[1]}x{size[0]}")
        padded = np.pad(frame, ((0, size[0] % 2), (0, size[1] % 2), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24").reformat(
            format="yuv420p")
        video_frame.pts = count_in
        count_in += 1
        yield from decode(encoder.encode(video_frame))
    if encoder is None:
        return
    yield from decode(encoder.encode(None))
    yield from decode([None])
    if count_out != count_in:  # a codec that drops or duplicates frames would break the frame alignment with GT
        raise FlashVSRError(f"{codec} round trip returned {count_out} frames for {count_in}")
