"""Streams copied unchanged from an input into an output (audio and subtitles), shared by every writer that keeps
them: the upscaler's segment remux and the evaluation/degradation clip writer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path

import av

from flashvsr_q.errors import FlashVSRError


def open_input(path: Path) -> av.container.InputContainer:
    """Open a media file for reading; an unreadable one is a one-line FlashVSRError."""
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise FlashVSRError(f"{path}: cannot read ({exc.strerror or exc})") from None


def copied_streams(container: av.container.InputContainer) -> list[av.stream.Stream]:
    """The streams copied into the output: audio and subtitles (not data tracks or cover art)."""
    return [s for s in container.streams if s.type in ("audio", "subtitle")]


def copy_stream(out: av.container.OutputContainer, stream: av.stream.Stream) -> av.stream.Stream:
    """An output stream that takes ``stream``'s packets unchanged (codec, language, title, disposition)."""
    copy = out.add_stream_from_template(stream)
    for key in ("language", "title"):
        if key in stream.metadata:
            copy.metadata[key] = stream.metadata[key]
    copy.disposition = stream.disposition
    return copy


def timed_packets(src: av.container.InputContainer, copies: dict[int, av.stream.Stream]
                   ) -> Iterator[tuple[float, av.Packet, av.stream.Stream]]:
    """The source's audio/subtitle packets in file order, keyed by decoding time in seconds."""
    last = float("-inf")
    for packet in src.demux(*(src.streams[i] for i in copies)):
        if packet.size == 0 or (packet.dts is None and packet.pts is None):
            continue  # demuxer flush packets
        if packet.dts is None:
            packet.dts = packet.pts
        # Keys must not decrease within one input of heapq.merge; file order is the muxing order we keep.
        last = max(last, float(packet.dts * packet.time_base))
        yield last, packet, copies[packet.stream.index]


def remux_with_streams_of(video: Path, source: Path, out: Path) -> bool:
    """Write ``out``: the video stream of ``video`` plus ``source``'s audio and subtitle streams, no re-encoding.

    Returns False (and writes nothing) when ``source`` has no such streams.
    """
    with open_input(source) as src:
        if not copied_streams(src):
            return False
        with open_input(video) as vid, av.open(str(out), "w") as dst:
            vstream = vid.streams.video[0]
            vcopy = copy_stream(dst, vstream)
            copies = {s.index: copy_stream(dst, s) for s in copied_streams(src)}

            def video_packets() -> Iterator[tuple[float, av.Packet, av.stream.Stream]]:
                for packet in vid.demux(vstream):
                    if packet.size == 0 or packet.dts is None:
                        continue
                    yield float(packet.dts * packet.time_base), packet, vcopy

            for _, packet, stream in heapq.merge(video_packets(), timed_packets(src, copies), key=lambda x: x[0]):
                packet.stream = stream
                dst.mux(packet)
    return True
