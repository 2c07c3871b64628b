"""The demo: an honest tour whose videos play anywhere."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

from flashvsr_q.cli import main
from flashvsr_q.tasks.demo import NOTICE, most_different_window


def test_the_crop_is_where_two_versions_differ_most():
    a = np.zeros((60, 80, 3), np.uint8)
    b = a.copy()
    b[30:40, 50:60] = 200
    assert most_different_window(a, b, 10) == (30, 50)
    assert most_different_window(a, b, 200) == (0, 0)  # a window larger than the frame is the frame


@pytest.mark.slow
def test_demo_writes_playable_videos_a_labelled_comparison_and_says_what_the_model_is(tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.delenv("FLASHVSR_Q_CHECKPOINT", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--frames", "9", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert NOTICE in printed and "BELOW plain bicubic" in printed and "flashvsr-q fetch v1.1" in printed
    assert "| bicubic |" in printed and "| int8-weight-only |" in printed
    for name in ("lr", "ground-truth", "bicubic", "bf16", "int8-weight-only"):
        with av.open(str(out / f"{name}.mp4")) as video:
            codec = video.streams.video[0].codec_context
            assert (codec.name, codec.pix_fmt) == ("h264", "yuv420p"), name
    picture = Image.open(out / "side-by-side.png")
    assert picture.width > 5 * 176 and picture.height > 2 * 144  # five versions, whole frames and the crops
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["bicubic", "bf16", "int8-weight-only"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
