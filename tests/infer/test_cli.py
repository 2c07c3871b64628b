"""`flashvsr-q upscale` end to end: every input kind, audio and timestamps kept, and bad input refused cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import random_model
from infer.upscale_support import IdentityStream, make_clip
from PIL import Image

from flashvsr_q.cli import main
from flashvsr_q.infer.colorfix import to_uint8
from flashvsr_q.infer.pipeline import preprocess
from flashvsr_q.infer.tiling import Geometry
from flashvsr_q.model import save_official
from flashvsr_q.shipped import small_model_dir
from flashvsr_q.video.sources import open_source


def upscale_cli(*args) -> int:
    return main(["upscale", *map(str, args), "--device", "cpu", "--dtype", "fp32", "--quiet"])


@pytest.fixture
def identity(monkeypatch):
    monkeypatch.setattr("flashvsr_q.infer.pipeline.FlashVSRStream", IdentityStream)


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


# -- every kind of input ---------------------------------------------------------------------------------------


def test_video_with_audio(tmp_path, checkpoint_dir, capsys):
    clip = make_clip(tmp_path / "in.mp4", frames=10, size=(32, 18))
    out = tmp_path / "out.mp4"
    assert upscale_cli(clip, "-o", out, "--checkpoint", checkpoint_dir, "--json", "--preset", "ultrafast") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 10 and summary["output_size"] == [128, 72] and summary["peak_rss"] > 0
    src, dst = open_source(clip), open_source(out)
    assert (dst.width, dst.height, dst.num_frames) == (128, 72, 10)
    assert np.array_equal(dst.pts, src.pts) and dst.time_base == src.time_base and dst.fps == src.fps
    assert dst.has_audio and audio_packets(out) == audio_packets(clip)  # audio copied packet for packet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]  # no leftovers


def test_no_audio_flag(tmp_path, checkpoint_dir, identity):
    clip = make_clip(tmp_path / "in.mp4", frames=3, size=(16, 16))
    out = tmp_path / "out.mkv"
    assert upscale_cli(clip, "-o", out, "--checkpoint", checkpoint_dir, "--no-audio", "--preset", "ultrafast") == 0
    assert not open_source(out).has_audio and open_source(out).num_frames == 3


def test_image_to_image(tmp_path, checkpoint_dir):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert upscale_cli(tmp_path / "in.png", "-o", out, "--checkpoint", checkpoint_dir, "--color-fix", "wavelet") == 0
    assert np.asarray(Image.open(out)).shape == (12, 20, 3)


def test_image_folder_to_folder(tmp_path, checkpoint_dir, identity):
    src = tmp_path / "frames"
    src.mkdir()
    frames = [np.random.default_rng(i).integers(0, 256, (6, 7, 3), dtype=np.uint8) for i in range(3)]
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / f"f{i + 1}.jpg" if i else src / "f10.png")  # natural order: f2, f3, f10
    out = tmp_path / "up"
    assert upscale_cli(src, "-o", out, "--checkpoint", checkpoint_dir, "--color-fix", "none") == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["f10.png", "f2.png", "f3.png"]
    g = Geometry(7, 6, 4)
    for name, source in (("f10.png", "f10.png"), ("f2.png", "f2.jpg"), ("f3.png", "f3.jpg")):
        f = np.asarray(Image.open(src / source).convert("RGB"))  # jpg is lossy: compare with what was decoded
        expected = to_uint8(preprocess(f, g, torch.float32)[:, :24, :28]).permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(Image.open(out / name)), expected)  # identity model: frame i stays frame i
    assert not (tmp_path / "up.parts").exists()


def test_folder_of_videos_is_a_batch(tmp_path, checkpoint_dir, identity):
    src = tmp_path / "videos"
    src.mkdir()
    make_clip(src / "a.mp4", frames=3, size=(16, 16), audio=False)
    make_clip(src / "b.mkv", frames=5, size=(8, 8))
    out = tmp_path / "up"
    assert upscale_cli(src, "-o", out, "--checkpoint", checkpoint_dir, "--preset", "ultrafast") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mkv"]
    assert open_source(out / "a.mp4").num_frames == 3 and open_source(out / "b.mkv").num_frames == 5
    assert open_source(out / "b.mkv").has_audio
    # --resume skips finished outputs; without it the existing outputs are refused
    assert upscale_cli(src, "-o", out, "--checkpoint", checkpoint_dir, "--resume") == 0
    assert upscale_cli(src, "-o", out, "--checkpoint", checkpoint_dir) == 2


def test_overwrite(tmp_path, checkpoint_dir, identity, capsys):
    clip = make_clip(tmp_path / "in.mp4", frames=2, size=(8, 8))
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    assert upscale_cli(clip, "-o", out, "--checkpoint", checkpoint_dir) == 2
    assert out.read_bytes() == b"precious" and "--overwrite" in capsys.readouterr().err
    assert upscale_cli(clip, "-o", out, "--checkpoint", checkpoint_dir, "--overwrite", "--preset", "ultrafast") == 0
    assert open_source(out).num_frames == 2


# -- bad input ---------------------------------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _ffv1_clip(path: Path, width: int, height: int) -> Path:
    """A lossless 2-frame clip of any size (x264 needs even sizes)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv444p"
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _mismatched_checkpoint(tmp_path: Path, good: Path) -> Path:
    bad = tmp_path / "bad_ckpt"
    shutil.copytree(good, bad)
    other = tmp_path / "other"
    save_official(random_model("test"), other)  # a different decoder width
    shutil.copy(other / "TCDecoder.ckpt", bad / "TCDecoder.ckpt")
    return bad


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "no_video", "scale", "unwritable", "extension",
                                  "checkpoint", "odd_video", "tile", "vram"])
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(case, tmp_path, checkpoint_dir, capsys):
    clip = tmp_path / "in.mp4"
    out = tmp_path / "out.mp4"
    extra: list = ["--checkpoint", checkpoint_dir]
    if case == "missing":
        clip = tmp_path / "nope.mp4"
    elif case == "empty":
        clip.write_bytes(b"")
    elif case == "corrupt":
        clip.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "no_video":
        clip = _audio_only(tmp_path / "in.wav")
    elif case != "odd_video":
        make_clip(clip, frames=2, size=(8, 6))
    if case == "scale":
        extra += ["--scale", "9"]
    elif case == "unwritable":
        out = Path("/proc/flashvsr-q-test.mp4")  # /proc exists but takes no new files, even for root
    elif case == "extension":
        out = tmp_path / "out.avi"
    elif case == "checkpoint":
        extra = ["--checkpoint", _mismatched_checkpoint(tmp_path, checkpoint_dir)]
    elif case == "odd_video":
        clip = _ffv1_clip(tmp_path / "in.mkv", 9, 6)  # x3 gives 27 px: 4:2:0 video needs even sizes
        extra += ["--scale", "3"]
    elif case == "tile":
        extra += ["--tile", "big"]
    elif case == "vram":
        extra += ["--vram", "lots"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert upscale_cli(clip, "-o", out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


# -- a recipe applied on the fly, the LQ variant, the dry run -----------------------------------------------------


def _image(tmp_path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    rgb = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    return tmp_path / "in.png"


def _dry_run(capsys, *args) -> dict:
    capsys.readouterr()
    assert upscale_cli(*args, "--dry-run", "--json") == 0
    (report,) = json.loads(capsys.readouterr().out)
    return report


def test_recipe_on_the_fly_equals_quantize_then_upscale(tmp_path):
    from flashvsr_q.checkpoints import load_checkpoint

    image = _image(tmp_path)
    shipped = small_model_dir()  # trained weights: a random model's outputs saturate
    quantized = tmp_path / "int8"
    assert main(["quantize", "--recipe", "int8-weight-only", "--checkpoint", str(shipped), "-o", str(quantized),
                 "--dtype", "fp32", "--device", "cpu", "--quiet"]) == 0
    # the same weights, bit for bit, and not the float ones
    on_the_fly = load_checkpoint(shipped, dtype=torch.float32, recipe="int8-weight-only").state_dict()
    compressed = load_checkpoint(quantized, dtype=torch.float32).state_dict()
    original = load_checkpoint(shipped, dtype=torch.float32).state_dict()
    assert list(on_the_fly) == list(compressed)
    changed = 0
    for name, tensor in on_the_fly.items():
        assert type(tensor) is type(compressed[name]), name
        value = tensor.dequantize() if type(tensor) is not torch.Tensor else tensor
        assert torch.equal(value, compressed[name].dequantize() if type(tensor) is not torch.Tensor
                           else compressed[name]), name
        if name in original:  # weight-only convolutions store codes and scales under new names
            changed += not torch.equal(value, original[name])
    assert changed >= 40  # every DiT linear
    outs = {name: tmp_path / f"{name}.png" for name in ("on_the_fly", "compressed")}
    assert upscale_cli(image, "-o", outs["on_the_fly"], "--checkpoint", shipped, "--recipe", "int8-weight-only") == 0
    assert upscale_cli(image, "-o", outs["compressed"], "--checkpoint", quantized) == 0
    pixels = {name: np.asarray(Image.open(path)) for name, path in outs.items()}
    assert pixels["on_the_fly"].shape == (24, 32, 3)
    assert np.array_equal(pixels["on_the_fly"], pixels["compressed"])


def test_dry_run_counts_the_recipe_weights_and_writes_nothing(tmp_path, checkpoint_dir, capsys):
    image = _image(tmp_path)
    out = tmp_path / "out.png"
    plain = _dry_run(capsys, image, "-o", out, "--checkpoint", checkpoint_dir, "--vram", "1GB")
    int8 = _dry_run(capsys, image, "-o", out, "--checkpoint", checkpoint_dir, "--vram", "1GB",
                    "--recipe", "int8-weight-only")
    from flashvsr_q.quant import load_recipe, resolve_plan

    plan = resolve_plan(load_recipe("int8-weight-only"), random_model("test"), "cpu")
    int8_params = sum(layer.numel for layer in plan.quantized.values())
    saved = plain["estimate"]["weights"] - int8["estimate"]["weights"]
    # fp32 -> int8 plus scales: per row for linears, per group of 128 for the convolutions, whose scales weigh more
    # on the test model's narrow layers
    assert 0.6 * 3 * int8_params < saved < 3 * int8_params
    assert int8["estimate"]["peak"] - int8["estimate"]["weights"] == plain["estimate"]["peak"] - \
        plain["estimate"]["weights"]  # only the weight term changes
    assert (plain["input_size"], plain["output_size"], plain["frames"]) == ([8, 6], [32, 24], 1)
    assert plain["budget"] == 1024**3 and plain["output"] == str(out) and plain["tiles"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
    assert upscale_cli(image, "-o", out, "--checkpoint", checkpoint_dir, "--dry-run") == 0  # text form
    text = capsys.readouterr().out
    assert "in.png (image, 8x6, 1 frames" in text and "estimated peak device memory" in text


def test_library_preflight_matches_the_loaded_model(checkpoint_dir, tmp_path):
    from flashvsr_q.checkpoints import load_checkpoint
    from flashvsr_q.infer.memory import module_bytes
    from flashvsr_q.tasks.upscale import UpscaleOptions, preflight

    lines: list[str] = []
    (report,) = preflight(UpscaleOptions(_image(tmp_path), checkpoint=checkpoint_dir, recipe="int8-weight-only",
                                         device="cpu", dtype="fp32"), log=lines.append)
    model = load_checkpoint(checkpoint_dir, dtype=torch.float32, device="cpu", recipe="int8-weight-only")
    assert report.memory.estimate.weights == module_bytes(model) and report.output is None
    assert any(line.startswith("plan: recipe int8-weight-only") for line in lines)
    assert report.to_dict()["model"] == model.config.name and report.describe().startswith(str(tmp_path))


def test_resume_fingerprint_tells_recipes_apart(checkpoint_dir):
    from flashvsr_q.checkpoints import load_checkpoint
    from flashvsr_q.infer.resume import model_fingerprint

    def fingerprint(recipe):
        model = load_checkpoint(checkpoint_dir, dtype=torch.float32, device="cpu", recipe=recipe)
        return model_fingerprint(model)

    int8, w8a8 = fingerprint("int8-weight-only"), fingerprint("w8a8-int8")
    assert len({int8, w8a8, fingerprint(None)}) == 3  # another recipe is refused
    code = ("import sys, torch\n"
            "from flashvsr_q.checkpoints import load_checkpoint\n"
            "from flashvsr_q.infer.resume import model_fingerprint\n"
            f"m = load_checkpoint({str(checkpoint_dir)!r}, dtype=torch.float32, device='cpu', recipe='w8a8-int8')\n"
            "print(model_fingerprint(m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[-1] == w8a8  # the same recipe in another process (a resumed run) is accepted


def test_variant_is_passed_to_official_folders_and_checked_against_recorded_ones(tmp_path, checkpoint_dir,
                                                                                  monkeypatch, capsys):
    import flashvsr_q.checkpoints as checkpoints

    image = _image(tmp_path)
    seen = []
    real = checkpoints.load_official
    monkeypatch.setattr(checkpoints, "load_official", lambda *a, **kw: seen.append(kw["variant"]) or real(*a, **kw))
    _dry_run(capsys, image, "-o", tmp_path / "out.png", "--checkpoint", checkpoint_dir, "--variant", "v1.1")
    assert seen == ["v1.1"]
    # the test checkpoint records v1.1 in its config sidecar: v1 contradicts it
    assert upscale_cli(image, "-o", tmp_path / "out.png", "--checkpoint", checkpoint_dir, "--variant", "v1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "records its LQ projection as v1.1" in err and len(err.splitlines()) == 1
    v1 = tmp_path / "v1"
    save_official(random_model("test", variant="v1"), v1)
    seen.clear()
    assert _dry_run(capsys, image, "-o", tmp_path / "out.png", "--checkpoint", v1, "--variant", "v1")["tiles"] == 1
    assert seen == ["v1"]


def test_calibration_for_recipes_with_static_scales(tmp_path, checkpoint_dir, capsys):
    from quant_measure import synthetic_calibration

    from flashvsr_q.quant import load_recipe, resolve_plan

    image = _image(tmp_path)
    out = tmp_path / "out.png"
    recipe = ["--checkpoint", checkpoint_dir, "--recipe", "w8a8-int8-smoothquant"]
    assert upscale_cli(image, "-o", out, *recipe) == 2  # needs statistics: refused before any work
    err = capsys.readouterr().err.strip()
    assert "calibrat" in err and len(err.splitlines()) == 1 and not out.exists()
    assert upscale_cli(image, "-o", out, "--checkpoint", checkpoint_dir, "--calibration", tmp_path / "x") == 2
    assert "--calibration only applies with --recipe" in capsys.readouterr().err
    assert upscale_cli(image, "-o", out, *recipe, "--calibration", tmp_path / "missing.safetensors") == 2
    assert "do not exist" in capsys.readouterr().err
    stats = tmp_path / "stats.safetensors"
    plan = resolve_plan(load_recipe("w8a8-int8-smoothquant"), random_model("test"), "cpu")
    synthetic_calibration(plan).save(stats)
    assert upscale_cli(image, "-o", out, *recipe, "--calibration", stats) == 0
    assert np.asarray(Image.open(out)).shape == (24, 32, 3)


def test_bad_recipe_and_recipe_on_a_quantized_model_are_one_line_errors(tmp_path, checkpoint_dir, capsys):
    image = _image(tmp_path)
    assert upscale_cli(image, "-o", tmp_path / "o.png", "--checkpoint", checkpoint_dir, "--recipe", "nope") == 2
    assert "recipe" in capsys.readouterr().err
    quantized = tmp_path / "int8"
    assert main(["quantize", "--recipe", "int8-weight-only", "--checkpoint", str(checkpoint_dir), "-o",
                 str(quantized), "--dtype", "fp32", "--quiet"]) == 0
    assert upscale_cli(image, "-o", tmp_path / "o.png", "--checkpoint", quantized, "--recipe",
                       "int8-weight-only") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "int8"]


# -- the library surface -------------------------------------------------------------------------------------------


def test_public_names_are_lazy_and_video_io_does_not_import_torch():
    import flashvsr_q.infer as infer

    assert sorted(infer.__all__) == sorted(infer._MODULE_OF)
    assert all(getattr(infer, name) is not None for name in infer.__all__)
    with pytest.raises(AttributeError):
        infer.no_such_name  # noqa: B018
    code = ("import sys, flashvsr_q.video.sources\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "from flashvsr_q.infer import run_job, resolve_device\n"
            "assert 'torch' in sys.modules and callable(run_job)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
