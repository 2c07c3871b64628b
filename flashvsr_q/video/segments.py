"""Segmented, resumable video writing: encode segments as they come, remux them into one file at the end.

The upscaler produces frames in order, a chunk at a time. Each chunk of frames (the caller chooses how many)
is encoded by a fresh encoder into ``<work>/seg_00000.mkv``, ``seg_00001.mkv`` ..., so every segment starts
with an IDR frame and depends only on its own frames. A segment is written under a temporary name, flushed
to disk, described by a small ``seg_NNNNN.json`` and only then renamed: a ``seg_*.mkv`` that exists is
complete, and a run that was killed can be resumed by skipping the segments ``completed()`` lists.

``finalize()`` copies the packets of all segments (no re-encode) into one file next to the output, gives
output frame ``i`` the timestamp of input frame ``i``, interleaves the source's audio and subtitle packets
(copied packet by packet), renames the result onto the output path and deletes the work folder.

Determinism: the encoder's thread count is fixed (x264/x265 pick it from the CPU count otherwise, and it
changes the bitstream), the muxers run with ``+bitexact`` (no random Matroska UIDs, no version strings),
and a segment's bytes depend only on its frames and the settings. So re-encoding a segment gives the same
bytes, and the final file is the same whether the segments came from one run or several.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import write_json
from flashvsr_q.video.sources import SWS_FLAGS, FrameSource
from flashvsr_q.video.streams import copied_streams, copy_stream, open_input, timed_packets

CODECS = ("libx264", "libx265")
PIXEL_FORMATS = ("yuv420p", "yuv420p10le")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_BITEXACT = {"fflags": "+bitexact"}
_STATE_VERSION = 1


@dataclass(frozen=True)
class EncoderSettings:
    """How segments are encoded. All fields take part in the resume check (``writer.json``).

    Args:
        codec: ``libx264`` or ``libx265``.
        crf: constant rate factor, 0 (lossless) .. 51; 18 is visually near-lossless.
        preset: x264/x265 speed preset, ``ultrafast`` .. ``veryslow``.
        pix_fmt: ``yuv420p`` (8-bit) or ``yuv420p10le`` (10-bit; x264 then uses the High 10 profile).
        threads: encoder threads. Fixed rather than automatic because the thread count changes the bytes.
        gop: maximum keyframe interval in frames (0: ten seconds of video).
    """

    codec: str = "libx264"
    crf: float = 18
    preset: str = "medium"
    pix_fmt: str = "yuv420p"
    threads: int = 4
    gop: int = 0

    def check(self) -> None:
        """Raise ``FlashVSRError`` naming the first bad field, or a codec this FFmpeg build lacks."""
        if self.codec not in CODECS:
            raise FlashVSRError(f"codec {self.codec!r} is not supported; use one of {', '.join(CODECS)}")
        if self.pix_fmt not in PIXEL_FORMATS:
            raise FlashVSRError(f"pixel format {self.pix_fmt!r} is not supported; "
                                f"use one of {', '.join(PIXEL_FORMATS)}")
        if not 0 <= self.crf <= 51:
            raise FlashVSRError(f"crf {self.crf} is outside 0..51")
        if self.preset not in PRESETS:
            raise FlashVSRError(f"preset {self.preset!r} is unknown; use one of {', '.join(PRESETS)}")
        if self.threads < 1 or self.gop < 0:
            raise FlashVSRError(f"threads must be >= 1 and gop >= 0 (got {self.threads}, {self.gop})")
        try:
            codec = av.codec.Codec(self.codec, "w")
        except av.FFmpegError:
            raise FlashVSRError(f"the FFmpeg inside PyAV {av.__version__} has no {self.codec} encoder; "
                                f"use --codec {'libx264' if self.codec != 'libx264' else 'libx265'}") from None
        if self.pix_fmt not in {f.name for f in codec.video_formats or ()}:
            raise FlashVSRError(f"the {self.codec} in PyAV {av.__version__} cannot encode {self.pix_fmt}; "
                                "use yuv420p")

    def options(self) -> dict[str, str]:
        """Encoder options (AVOptions of the libavcodec wrapper)."""
        opts = {"crf": f"{self.crf:g}", "preset": self.preset}
        if self.codec == "libx264":
            if self.pix_fmt == "yuv420p10le":
                opts["profile"] = "high10"
        else:
            # x265 defaults to open GOPs and a thread pool sized by the CPU count; pin both.
            opts["x265-params"] = (f"pools={self.threads}:frame-threads={min(self.threads, 4)}:open-gop=0:"
                                   "log-level=error")
        return opts


@dataclass(frozen=True)
class SegmentInfo:
    """A complete segment: output frames ``start .. start+frames-1``.

    ``reorder`` is how many frames the encoder delayed decoding timestamps by (B-frames); the remux uses it to
    make decoding timestamps that keep increasing across segment boundaries.
    """

    index: int
    start: int
    frames: int
    reorder: int
    bytes: int


class SegmentEncoder:
    """Encodes one segment. Use as a context manager: a clean exit commits, an exception discards."""

    def __init__(self, writer: SegmentedWriter, index: int, start: int) -> None:
        self._writer, self.index, self.start = writer, index, start
        self.frames = 0
        self._path = writer.segment_path(index)
        self._tmp = self._path.with_name(self._path.name + ".tmp")
        s = writer.settings
        self._container = av.open(str(self._tmp), "w", format="matroska", container_options=_BITEXACT)
        stream = self._container.add_stream(s.codec, rate=writer.fps, options=s.options())
        stream.width, stream.height, stream.pix_fmt = writer.width, writer.height, s.pix_fmt
        # Local frame numbers as timestamps: the segment's bytes must not depend on where it sits.
        stream.time_base = stream.codec_context.time_base = 1 / writer.fps
        stream.thread_count = s.threads
        stream.gop_size = s.gop or max(1, round(10 * writer.fps))
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, limited range
        if writer.sample_aspect_ratio:
            cc.sample_aspect_ratio = writer.sample_aspect_ratio
        self._stream = stream
        self._decode_pos = 0  # packets out so far, in decoding order
        self._reorder = 0
        self.info: SegmentInfo | None = None  # set once the segment is committed

    def write(self, rgb: np.ndarray) -> None:
        """Encode the next frame: ``[H, W, 3]`` RGB, uint8 (0..255) or uint16 (0..65535, for 10-bit)."""
        w = self._writer
        if rgb.shape != (w.height, w.width, 3) or rgb.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected uint8/uint16 [{w.height}, {w.width}, 3], got {rgb.dtype} {list(rgb.shape)}")
        if self.start + self.frames >= w.num_frames:
            raise ValueError(f"segment {self.index} would go past the last frame ({w.num_frames})")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), "rgb24" if rgb.dtype == np.uint8 else "rgb48le")
        frame = frame.reformat(format=w.settings.pix_fmt, dst_colorspace="itu709", dst_color_range="MPEG",
                               interpolation=SWS_FLAGS)
        frame.pts = self.frames
        self._mux(self._stream.encode(frame))
        self.frames += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._reorder = max(self._reorder, self._decode_pos - packet.dts)
            self._decode_pos += 1
            self._container.mux(packet)

    def close(self) -> SegmentInfo:
        """Flush the encoder, sync to disk, write the description, then rename (the commit point)."""
        if self.frames == 0:
            self.abort()
            raise ValueError(f"segment {self.index} has no frames")
        try:
            self._mux(self._stream.encode(None))
            self._container.close()
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            info = SegmentInfo(self.index, self.start, self.frames, self._reorder, self._tmp.stat().st_size)
            write_json(self._path.with_suffix(".json"), asdict(info))
            os.replace(self._tmp, self._path)
        except (av.FFmpegError, OSError) as exc:  # typically a full disk
            self.abort()
            raise FlashVSRError(f"{self._path}: cannot write the segment ({exc})") from None
        self.info = info
        return info

    def abort(self) -> None:
        """Drop the half-written segment."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - already failing; the temporary file is removed either way
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SegmentEncoder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class SegmentedWriter:
    """Writes ``len(pts)`` frames of ``width x height`` as segments, then one output file.

    Args:
        output: final path (``.mp4``, ``.m4v``, ``.mov`` or ``.mkv``).
        width, height: output frame size.
        fps: nominal frame rate (stored in the stream; timestamps come from ``pts``).
        pts: int64 ``[N]`` timestamps in ``time_base`` units; output frame ``i`` gets ``pts[i]``.
        time_base: unit of ``pts`` in seconds.
        settings: encoder settings.
        audio_source: file whose audio and subtitle streams are copied into the output (``None``: none).
        copy_audio: ``False`` drops audio and subtitles even when ``audio_source`` has them.
        sample_aspect_ratio: pixel aspect ratio to signal, ``None`` for square pixels.
        work_dir: where segments go; default ``<output>.parts`` next to the output.

    Opening a work folder made with different settings or a different frame table raises ``FlashVSRError``.
    """

    def __init__(self, output: str | os.PathLike, *, width: int, height: int, fps: Fraction, pts: Sequence[int],
                 time_base: Fraction, settings: EncoderSettings | None = None,
                 audio_source: str | os.PathLike | None = None, copy_audio: bool = True,
                 sample_aspect_ratio: Fraction | None = None, work_dir: str | os.PathLike | None = None) -> None:
        self.output = Path(output)
        self.settings = settings or EncoderSettings()
        self.settings.check()
        if self.output.suffix.lower() not in OUTPUT_FORMATS:
            raise FlashVSRError(f"{self.output}: unsupported video extension; use {', '.join(OUTPUT_FORMATS)}")
        if width % 2 or height % 2:
            raise FlashVSRError(f"{self.output}: {width}x{height} is odd; 4:2:0 video needs even sizes")
        self.width, self.height, self.fps = width, height, Fraction(fps)
        self.time_base = Fraction(time_base)
        self.pts = np.asarray(pts, dtype=np.int64)
        if len(self.pts) == 0 or np.any(np.diff(self.pts) <= 0):
            raise ValueError("pts must be non-empty and strictly increasing")
        self.num_frames = len(self.pts)
        self.audio_source = Path(audio_source) if audio_source is not None and copy_audio else None
        self.sample_aspect_ratio = sample_aspect_ratio
        self.work_dir = Path(work_dir) if work_dir else self.output.with_name(self.output.name + ".parts")
        self._check_muxable()
        self._open_work_dir()

    @classmethod
    def for_source(cls, output: str | os.PathLike, source: FrameSource, scale: int = 4,
                   **kwargs) -> SegmentedWriter:
        """A writer for ``source`` upscaled ``scale`` times: same timestamps, its audio and subtitles."""
        return cls(output, width=source.width * scale, height=source.height * scale, fps=source.fps,
                   pts=source.pts, time_base=source.time_base,
                   audio_source=source.path if source.kind == "video" else None,
                   sample_aspect_ratio=source.sample_aspect_ratio, **kwargs)

    # -- work folder ------------------------------------------------------------------------------------------

    def segment_path(self, index: int) -> Path:
        return self.work_dir / f"seg_{index:05d}.mkv"

    def _state(self) -> dict:
        return {"version": _STATE_VERSION, **asdict(self.settings), "width": self.width, "height": self.height,
                "fps": str(self.fps), "time_base": str(self.time_base), "num_frames": self.num_frames,
                "pts_sha256": hashlib.sha256(self.pts.tobytes()).hexdigest(),
                "sample_aspect_ratio": str(self.sample_aspect_ratio) if self.sample_aspect_ratio else None}

    def _open_work_dir(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        state_file = self.work_dir / "writer.json"
        if state_file.exists():
            old = json.loads(state_file.read_text())
            changed = [k for k, v in self._state().items() if old.get(k) != v]
            if changed:
                raise FlashVSRError(f"{self.work_dir}: segments were made with a different {', '.join(changed)}; "
                                    "resume with the same settings or delete the folder")
        else:
            write_json(state_file, self._state())
        # Leftovers of a killed run: temporary files, and descriptions whose segment never got renamed.
        for path in self.work_dir.iterdir():
            if path.suffix == ".tmp" or (path.name.startswith("seg_") and path.suffix == ".json"
                                         and not path.with_suffix(".mkv").exists()):
                path.unlink()

    def completed(self) -> dict[int, SegmentInfo]:
        """Segments fully on disk, by index (a resumed run skips these)."""
        done = {}
        for path in sorted(self.work_dir.glob("seg_*.mkv")):
            meta = path.with_suffix(".json")
            try:
                info = SegmentInfo(**json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if info.bytes == path.stat().st_size and path == self.segment_path(info.index):
                done[info.index] = info
        return done

    def resume_point(self) -> tuple[int, int]:
        """(next segment index, next frame) after the run of complete segments that starts at frame 0."""
        done, index, start = self.completed(), 0, 0
        while index in done and done[index].start == start:
            start += done[index].frames
            index += 1
        return index, start

    # -- writing ---------------------------------------------------------------------------------------------

    def open_segment(self, index: int, start: int) -> SegmentEncoder:
        """Start segment ``index`` holding frames from ``start`` on; write frames, then ``close()`` it."""
        if not 0 <= start < self.num_frames:
            raise ValueError(f"start={start} outside 0..{self.num_frames - 1}")
        try:
            return SegmentEncoder(self, index, start)
        except av.FFmpegError as exc:
            raise FlashVSRError(f"{self.output}: cannot start the {self.settings.codec} encoder ({exc})") from None

    def write_segment(self, index: int, start: int, frames: Iterable[np.ndarray]) -> SegmentInfo:
        """Encode ``frames`` (``[H, W, 3]`` uint8/uint16 each) as segment ``index`` starting at frame ``start``."""
        with self.open_segment(index, start) as segment:
            for rgb in frames:
                segment.write(rgb)
        return segment.info

    def discard(self) -> None:
        """Delete the work folder and everything in it."""
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- finalize ------------------------------------------------------------------------------------------

    def finalize(self) -> Path:
        """Remux all segments (and the copied streams) into the output, atomically; remove the work folder.

        Raises ``FlashVSRError`` if segments are missing or do not cover the frames exactly; nothing is then
        written at the output path and the segments stay for another attempt.
        """
        segments = self._check_coverage()
        reorder = max(s.reorder for s in segments)
        tmp = self.output.with_name(f".{self.output.stem}.partial{self.output.suffix}")
        try:
            self._remux(tmp, segments, reorder)
            os.replace(tmp, self.output)
        except av.FFmpegError as exc:
            tmp.unlink(missing_ok=True)
            raise FlashVSRError(f"{self.output}: cannot write the video ({exc})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.discard()
        return self.output

    def _check_coverage(self) -> list[SegmentInfo]:
        done, expected = self.completed(), 0
        segments = [done[i] for i in sorted(done)]
        for i, seg in enumerate(segments):
            if seg.index != i or seg.start != expected:
                raise FlashVSRError(f"{self.work_dir}: segment {i} (frame {expected} on) is missing or does not "
                                    "follow the previous one; run the upscale again to fill it in")
            expected += seg.frames
        if expected != self.num_frames:
            raise FlashVSRError(f"{self.work_dir}: segments hold {expected} of {self.num_frames} frames; "
                                "run the upscale again to finish")
        return segments

    def _check_muxable(self) -> None:
        """Fail now, not after hours of upscaling, if the output container cannot hold a stream."""
        fmt = OUTPUT_FORMATS[self.output.suffix.lower()]
        if self.audio_source is not None:
            with open_input(self.audio_source) as src:
                for stream in copied_streams(src):
                    # One trial header per stream, so the message can name the stream that does not fit.
                    with av.open(io.BytesIO(), "w", format=fmt) as out:
                        try:
                            out.add_stream_from_template(stream)
                            out.start_encoding()
                        except (av.FFmpegError, ValueError):
                            raise FlashVSRError(
                                f"{self.output}: {stream.type} stream #{stream.index} ({stream.codec_context.name})"
                                f" of {self.audio_source.name} cannot go into {self.output.suffix}; write .mkv "
                                "or turn off audio copying") from None

    def _video_packets(self, segments: list[SegmentInfo], reorder: int,
                       out_stream: av.stream.Stream) -> Iterator[tuple[float, av.Packet, av.stream.Stream]]:
        """Segment packets with final timestamps, in decoding order, keyed by decoding time in seconds."""
        pts, tb = self.pts, self.time_base
        frame_ticks = max(1, round(1 / (self.fps * tb)))
        for seg in segments:
            path = self.segment_path(seg.index)
            with open_input(path) as container:
                stream = container.streams.video[0]
                for pos, packet in enumerate(p for p in container.demux(stream) if p.size):
                    # Matroska stores milliseconds; the local frame number is recovered exactly by rounding.
                    local = round(packet.pts * stream.time_base * self.fps)
                    if not 0 <= local < seg.frames or pos >= seg.frames:
                        raise FlashVSRError(f"{path}: damaged segment (packet {pos}); delete it and resume")
                    g = seg.start + pos - reorder  # decoding timestamp: the presentation time `reorder` back
                    dts = int(pts[g]) if g >= 0 else int(pts[0]) + g * frame_ticks
                    i = seg.start + local
                    nxt = int(pts[i + 1]) if i + 1 < self.num_frames else int(pts[i]) + frame_ticks
                    packet.pts, packet.dts, packet.duration = int(pts[i]), dts, nxt - int(pts[i])
                    packet.time_base = tb
                    yield float(dts * tb), packet, out_stream

    def _remux(self, tmp: Path, segments: list[SegmentInfo], reorder: int) -> None:
        fmt = OUTPUT_FORMATS[self.output.suffix.lower()]
        options = dict(_BITEXACT, **({"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}))
        with av.open(str(tmp), "w", format=fmt, container_options=options) as out:
            with open_input(self.segment_path(0)) as first:
                video = out.add_stream_from_template(first.streams.video[0])
            video.time_base = self.time_base
            src = open_input(self.audio_source) if self.audio_source else None
            try:
                copies = {s.index: copy_stream(out, s) for s in (copied_streams(src) if src else [])}
                parts = [self._video_packets(segments, reorder, video)]
                if copies:
                    parts.append(timed_packets(src, copies))
                for _, packet, stream in heapq.merge(*parts, key=lambda item: item[0]):
                    packet.stream = stream
                    out.mux(packet)
            finally:
                if src:
                    src.close()
