"""The GUI's helpers without a browser: jobs (progress, cancel, errors), widget conversions, the library calls."""

from __future__ import annotations

import threading
import time

import pytest
from app.app_support import make_checkpoint, make_clip, probe

from flashvsr_q.app import calls
from flashvsr_q.app.jobs import (
    DEFAULT_CHOICE,
    RECIPE_NONE,
    Job,
    JobRegistry,
    Progress,
    backend_choices,
    comparison_frames,
    error_line,
    is_cancelled,
    output_name,
    recipe_choices,
    resolve_checkpoint,
    resolve_recipe,
    tile_arg,
    vram_arg,
)
from flashvsr_q.errors import CheckpointError, FlashVSRError
from flashvsr_q.infer import Cancelled


def test_job_relays_progress_and_result():
    def work(report, cancel):
        for i in range(3):
            report(i + 1, 3, "step", "items")
            time.sleep(0.05)
        return "answer"

    job = Job(work).start()
    updates = [u for u in job.updates(poll=0.01) if u is not None]
    assert updates and updates[-1] == Progress(3, 3, "step", "items") and updates[-1].fraction == 1.0
    assert job.result() == "answer"


def test_job_reraises_the_library_error():
    def work(report, cancel):
        raise CheckpointError("checkpoint folder /x does not exist\nsecond line")

    job = Job(work).start()
    list(job.updates(poll=0.01))
    with pytest.raises(CheckpointError) as info:
        job.result()
    assert error_line(info.value) == "checkpoint folder /x does not exist"


def test_registry_cancels_the_sessions_job_only():
    registry, started = JobRegistry(), threading.Event()

    def work(report, cancel):
        started.set()
        while not cancel.wait(0.01):
            pass
        raise Cancelled("cancelled")

    job = registry.start("a", work)
    started.wait(5)
    with pytest.raises(FlashVSRError, match="already running"):
        registry.start("a", work)
    assert not registry.cancel("b")
    assert registry.cancel("a")
    list(job.updates(poll=0.01))
    with pytest.raises(Cancelled) as info:
        job.result()
    assert is_cancelled(info.value)
    assert not registry.cancel("a")  # finished


def test_error_line_is_one_line_without_trace():
    assert error_line(FlashVSRError("bad input\n  detail")) == "bad input"
    assert error_line(ValueError("--tile takes auto")) == "--tile takes auto"
    assert error_line(RuntimeError("boom")) == "RuntimeError: boom"
    assert "server log" in error_line(RuntimeError())


def test_widget_conversions():
    assert tile_arg("auto") == "auto" and tile_arg("off", 1, 1) == "off"
    assert tile_arg("manual", 192, 24) == "192x24"
    with pytest.raises(FlashVSRError):
        tile_arg("manual", 0, 8)
    assert vram_arg("auto") is None and vram_arg("") is None
    assert vram_arg("8GB") == 8 * 1024**3
    with pytest.raises(FlashVSRError, match="memory size"):
        vram_arg("lots")
    assert resolve_checkpoint(DEFAULT_CHOICE) is None and resolve_checkpoint(" /a/b ") == "/a/b"
    assert resolve_recipe(RECIPE_NONE) is None and resolve_recipe("nf4") == "nf4"
    assert output_name("/x/clip.mov") == "clip_x4.mp4" and output_name("a.JPG", 2) == "a_x2.png"


def test_choices_come_from_the_library():
    names, note = backend_choices("cpu")
    assert names[0] == "auto" and "sparse" in names and "block_sparse" not in names
    assert "block_sparse" in note
    recipes = [value for _, value in recipe_choices()]
    assert recipes[0] == RECIPE_NONE and "int8-weight-only" in recipes
    assert "train-small" not in recipes  # a training recipe, not a quantization one


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "test")


def test_preflight_and_cancelled_upscale(checkpoint, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=3, size=(32, 16), audio=False)
    choice = calls.ModelChoice(str(checkpoint), None, "fp32", "cpu")
    text = calls.preflight(clip, choice, calls.UpscaleOptions(tile="off"))
    assert "32x16 -> 128x64" in text and "estimated peak device memory" in text
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        calls.run_upscale(clip, tmp_path / "out.mp4", choice, calls.UpscaleOptions(), cancel=cancel)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.slow
def test_upscale_and_comparison(checkpoint, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=3, size=(32, 16))
    done = []
    summary = calls.run_upscale(clip, tmp_path / "out.mp4", calls.ModelChoice(str(checkpoint), None, "fp32", "cpu"),
                                calls.UpscaleOptions(), report=lambda d, t: done.append((d, t)))
    assert done[-1] == (3, 3) and summary.output_size == (128, 64)
    assert probe(tmp_path / "out.mp4") == {"frames": 3, "width": 128, "height": 64, "audio": True}
    before, after = comparison_frames(clip, tmp_path / "out.mp4")
    assert before.shape == after.shape == (64, 128, 3)


def test_check_recipe_and_export(checkpoint, tmp_path):
    choice = calls.ModelChoice(str(checkpoint), None, "fp32", "cpu")
    text = calls.read_recipe_text("int8-weight-only")
    assert "int8_weight_only" in calls.check_recipe(text, choice)
    with pytest.raises(FlashVSRError, match="recipe"):
        calls.check_recipe("name: broken\n", choice)
    report = calls.export_checkpoint(text, choice, tmp_path / "int8", None)
    assert "compressed checkpoint" in report and (tmp_path / "int8" / "manifest.json").is_file()
    with pytest.raises(FlashVSRError, match="plain folder name"):
        calls.checkpoint_folder_name("../escape")


def test_cancellable_callback_stops_a_library_loop():
    cancel, seen = threading.Event(), []
    callback = calls.cancellable(lambda *args: seen.append(args), cancel)
    callback("layer", 1, 2)
    cancel.set()
    with pytest.raises(Cancelled):
        callback("layer", 2, 2)
    assert seen == [("layer", 1, 2)]


def test_metric_and_checkpoint_choices(checkpoint, tmp_path):
    metrics = dict((name, label) for label, name in calls.metric_choices())
    assert metrics["psnr"] == "PSNR ↑" and set(calls.default_metrics()) <= set(metrics)
    from flashvsr_q.app.jobs import checkpoint_choices

    values = [value for _, value in checkpoint_choices([checkpoint, tmp_path])]
    assert values[0] == DEFAULT_CHOICE and str(checkpoint) in values and str(tmp_path) not in values


@pytest.mark.slow
def test_evaluation_compares_configurations(checkpoint, tmp_path):
    hr = make_clip(tmp_path / "hr.mp4", frames=3, size=(32, 16), audio=False)
    entries = [(str(checkpoint), None), (str(checkpoint), "int8-weight-only")]
    result = calls.run_evaluation([str(hr)], entries, tmp_path / "eval",
                                  calls.EvaluateOptions(["psnr", "tdiff", "lpips"], dtype="fp32", device="cpu"))
    header, *rows = result.table
    assert header[0] == "configuration" and "PSNR↑" in header and "tDiff↓" in header
    assert [row[0] for row in rows] == ["test", "test+int8-weight-only"]
    assert all(float(row[header.index("PSNR↑")]) > 0 for row in rows)
    assert any(p.endswith("deltas.png") for p in result.plots)
    assert (tmp_path / "eval" / "report" / "report.md").is_file()
