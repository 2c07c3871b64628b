"""Progress of long work: a bar on a terminal, plain lines with an ETA when piped, nothing when quiet."""

from __future__ import annotations

import io
import json

from flashvsr_q import progress
from flashvsr_q.cli import main
from flashvsr_q.progress import ProgressBar


def test_piped_output_gets_plain_lines_with_rate_and_eta(monkeypatch):
    stream = io.StringIO()  # not a terminal
    ticks = iter(range(0, 1000, 10))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(ticks)))
    with ProgressBar("calibrate", 20, unit="clips", stream=stream) as bar:
        for done in range(1, 21):
            bar.update(done)
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 21 and "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert lines[0].startswith("calibrate: 2/20 clips (10%)") and "clips/s" in lines[0] and "ETA 0:" in lines[0]
    assert lines[-1].startswith("calibrate: 20/20 clips (100%)") and "ETA" not in lines[-1]


def test_quiet_prints_nothing():
    stream = io.StringIO()
    with ProgressBar("eval", 3, enabled=False, stream=stream) as bar:
        bar.update(3)
    assert stream.getvalue() == ""


def test_calibrate_json_summary_and_quiet(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLASHVSR_Q_CHECKPOINT", raising=False)  # the shipped small model
    out = tmp_path / "stats.safetensors"
    assert main(["calibrate", "--footage", "builtin", "--clips", "1",
                 "--frames", "33", "--size", "128x128", "-o", str(out), "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["output"] == str(out) and summary["layers"] > 0 and summary["report"] is None
    assert "clips" not in captured.err  # --quiet: no progress
