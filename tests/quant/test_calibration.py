"""Calibration: observers on known data, hooks over first and cache-warm chunks, SmoothQuant, the statistics file,
the calibration-set hash, and `flashvsr-q calibrate` end to end."""

from __future__ import annotations

import copy
import json
import re

import av
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import random_lr, random_model
from PIL import Image
from quant.quant_helpers import sqnr

from flashvsr_q.cli import main
from flashvsr_q.model import SeededNoise, run_clip, save_official
from flashvsr_q.quant.calibration import (
    DIT_BLOCK_LINEARS,
    ActivationRecorder,
    CalibrationConfig,
    FootageClips,
    TensorClips,
    calibrate,
    calibration_set_hash,
    observer_absmax,
    static_scale,
    stream_clip,
    with_static_ranges,
)
from flashvsr_q.quant.observers import AbsHistogram, LayerObserver, MinMaxObserver, MSEObserver, PercentileObserver
from flashvsr_q.quant.schemes import get_scheme
from flashvsr_q.quant.smoothquant import SmoothedLinear, alpha_for, apply_smoothing, smoothing_factors
from flashvsr_q.quant.stats import CalibrationStats, LayerCalibration
from flashvsr_q.shipped import calibration_dir, recipes_dir


def write_video(path, frames: int = 41, size: int = 128, seed: int = 0) -> None:
    """A short panning H.264 clip of smooth random texture."""
    rng = np.random.default_rng(seed)
    texture = np.asarray(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize((192, 192),
                                                                                                 Image.BICUBIC))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):
            rgb = np.ascontiguousarray(texture[i : i + size, i : i + size])
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------------------------------
# observers
# ---------------------------------------------------------------------------------------------------------------


def test_minmax_and_channel_absmax_are_exact():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 7, 5, generator=g) * (i + 1) for i in range(3)]
    obs = MinMaxObserver()
    layer = LayerObserver(5, MinMaxObserver())
    for b in batches:
        obs.update(b)
        layer.update(b, "first")
    everything = torch.cat([b.reshape(-1, 5) for b in batches])
    assert obs.clip() == float(everything.abs().max())
    assert torch.equal(layer.channel_absmax, everything.abs().amax(dim=0))
    assert layer.tokens == 42 and layer.calls == {"first": 3}
    with pytest.raises(ValueError):
        MinMaxObserver().clip()


def test_percentile_on_known_distributions():
    g = torch.Generator().manual_seed(0)
    # |N(0, 1)|: the 99th / 99.99th percentiles are 2.5758 / 3.8906
    obs = PercentileObserver(99.0)
    normal = torch.randn(400_000, generator=g)
    for part in normal.split(50_000):
        obs.update(part)
    assert obs.clip() == pytest.approx(2.5758, abs=0.02)
    obs.percentile = 99.99
    assert obs.clip() == pytest.approx(3.8906, abs=0.08)
    # log-spaced bins: the same relative precision for values of every scale, zeros counted apart
    hist = AbsHistogram()
    data = torch.cat([torch.rand(10_000, generator=g) * 1e-3, torch.rand(10_000, generator=g) * 13,
                      torch.zeros(5_000)])
    hist.update(data[torch.randperm(data.numel(), generator=g)])
    assert hist.total == 25_000 and hist.zeros == 5_000 and hist.counts.sum() == 20_000
    for q in (10.0, 30.0, 50.0, 90.0, 99.0):
        assert hist.percentile(q) == pytest.approx(float(torch.quantile(data, q / 100)), rel=0.012, abs=1e-9)
    assert hist.percentile(100.0) == float(data.max())


def test_mse_error_model_matches_brute_force_and_clips_heavy_tails():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    hist = AbsHistogram()
    hist.update(x)
    for clip in (0.5, 2.0, 4.0):
        step = clip / 127
        brute = ((torch.clamp(torch.round(x.abs() / step), 0, 127) * step - x.abs()) ** 2).mean()
        assert float(hist.quantization_mse(torch.tensor([clip]))) == pytest.approx(float(brute), rel=0.02)

    # heavy tails: the rare largest values cost less clipped than the coarser steps they would force. For a
    # Laplace(b = 1) the MSE-optimal 8-bit clip is 9.89 b (Banner et al., ACIQ); Student t(3) clips further.
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    mse = MSEObserver()
    mse.update(laplace)
    assert mse.clip() < 0.95 * mse.histogram.max and mse.clip() == pytest.approx(9.89, rel=0.05)
    student = torch.distributions.StudentT(3.0).sample((200_000,))
    mse = MSEObserver()
    for part in student.split(40_000):
        mse.update(part)
    assert mse.clip() < 0.8 * mse.histogram.max
    grid = torch.linspace(0.3, 1.0, 141) * student.abs().max()
    brute = [float(((torch.clamp(torch.round(student.abs() / (c / 127)), 0, 127) * c / 127 - student.abs()) ** 2)
                   .mean()) for c in grid]
    assert mse.clip() == pytest.approx(float(grid[int(np.argmin(brute))]), rel=0.05)
    # bounded, flat data: nothing to gain by clipping
    flat = MSEObserver()
    flat.update(torch.rand(100_000, generator=g) * 2 - 1)
    assert flat.clip() >= 0.95 * flat.histogram.max


def test_unknown_observer_is_rejected():
    with pytest.raises(Exception, match="unknown observer"):
        CalibrationConfig(observer="kl")


# ---------------------------------------------------------------------------------------------------------------
# hooks over streamed chunks
# ---------------------------------------------------------------------------------------------------------------


def test_hooks_see_first_and_cache_warm_chunks():
    model = random_model("test")
    clips = TensorClips([random_lr(41, seed=1), random_lr(33, seed=2)])  # 1 + 2 and 1 + 1 chunks
    stats = calibrate(model, clips, CalibrationConfig())
    tokens_per_latent = (128 // 16) ** 2
    assert stats.meta["chunks"] == {"first": 2, "later": 3}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert set(stats.layers) == set(linears)
    for fqn in linears:
        if fqn.startswith("dit.blocks.") and ".cross_attn.k" not in fqn and ".cross_attn.v" not in fqn:
            assert stats.meta["calls_per_phase"][fqn] == {"first": 2, "later": 3}, fqn
            assert stats.layers[fqn].num_samples == tokens_per_latent * (2 * 6 + 3 * 2), fqn
    # the prompt's K/V are computed once per stream, before any chunk
    assert stats.meta["calls_per_phase"]["dit.blocks.0.cross_attn.k"] == {"conditioning": 2}

    # tokens per phase, straight from the recorder: 6 latents in the first chunk, 2 in each cache-warm one
    fqn = "dit.blocks.1.self_attn.q"
    observers = {fqn: LayerObserver(model.config.dim)}
    with ActivationRecorder(model, observers) as recorder:
        assert stream_clip(model, random_lr(41, seed=1), recorder) == 3
    assert observers[fqn].phase_tokens == {"first": 6 * tokens_per_latent, "later": 2 * 2 * tokens_per_latent}
    assert not model.dit.blocks[1].self_attn.q._forward_pre_hooks  # removed on exit


# ---------------------------------------------------------------------------------------------------------------
# SmoothQuant
# ---------------------------------------------------------------------------------------------------------------


def test_smoothing_factors_formula_and_alpha_overrides():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 6, generator=g)
    absmax = torch.rand(6, generator=g) * 10
    absmax[2] = 0.0  # a channel that never fired keeps s = 1
    s = smoothing_factors(absmax, weight, 0.5)
    eps = torch.finfo(torch.float32).eps
    expected = (absmax + eps).sqrt() / (weight.abs().amax(0) + eps).sqrt()
    assert torch.allclose(s[[0, 1, 3, 4, 5]], expected[[0, 1, 3, 4, 5]]) and s[2] == 1.0
    overrides = {r"dit\.blocks\.\d+\.ffn\.2": 0.8, r"dit\..*": 0.3}
    assert alpha_for("dit.blocks.3.ffn.2", 0.5, overrides) == 0.8
    assert alpha_for("dit.blocks.3.ffn.0", 0.5, overrides) == 0.3
    assert alpha_for("lq_proj.linear_layers.0", 0.5, overrides) == 0.5
    with pytest.raises(ValueError):
        smoothing_factors(absmax, weight, 1.5)


@pytest.mark.parametrize("fold", [True, False])
def test_smoothquant_transform_is_exact_in_fp32(fold):
    model = random_model("test")
    lr = random_lr(33, seed=3)
    stats = calibrate(model, TensorClips([lr]), CalibrationConfig(alpha=0.5))
    factors = {fqn: entry.smoothing for fqn, entry in stats.layers.items() if entry.smoothing is not None}
    assert len(factors) == 20 and all(not torch.allclose(s, torch.ones_like(s)) for s in factors.values())
    noise = SeededNoise(0, 16, 16, 16)
    frames, latents = run_clip(model, lr, noise)
    smoothed = copy.deepcopy(model)
    how = apply_smoothing(smoothed, factors, fold=fold)
    assert (sorted(f for f, h in how.items() if h == "folded") ==
            (sorted(f for f in factors if f.endswith((".self_attn.o", ".cross_attn.o"))) if fold else []))
    frames_s, latents_s = run_clip(smoothed, lr, noise)
    assert torch.allclose(latents_s, latents, rtol=0, atol=1e-5)
    assert torch.allclose(frames_s, frames, rtol=0, atol=1e-5)


def test_smoothquant_improves_w8a8_on_an_outlier_channel():
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 64)
    x = torch.randn(1, 512, 64, generator=g)
    x[..., 5] *= 60.0  # one outlier channel, as in transformer activations
    reference = linear(x).detach()
    absmax = x.abs().amax(dim=(0, 1))
    s = smoothing_factors(absmax, linear.weight, 0.5)
    wrapped = SmoothedLinear(copy.deepcopy(linear), s)
    assert torch.allclose(wrapped(x), reference, atol=1e-5)
    for name in ("w8a8_int8_static", "w8a8_int8"):
        scheme = get_scheme(name)
        plain = scheme.quantize(copy.deepcopy(linear), LayerCalibration(absmax))
        smooth = scheme.quantize(copy.deepcopy(linear), LayerCalibration(absmax, s))
        with torch.no_grad():
            before, after = sqnr(reference, plain(x)), sqnr(reference, smooth(x))
        assert after > before + 6, (name, before, after)


# ---------------------------------------------------------------------------------------------------------------
# the statistics file and the calibration-set hash
# ---------------------------------------------------------------------------------------------------------------


def test_statistics_round_trip_and_static_scales(tmp_path):
    model = random_model("test")
    clips = TensorClips([random_lr(33, seed=4)])
    stats = calibrate(model, clips, CalibrationConfig(observer="percentile", percentile=99.0, alpha=0.5))
    path = stats.save(tmp_path / "stats.safetensors")
    back = CalibrationStats.load(path)
    assert back.source_hash == stats.source_hash == stats.meta["calibration_set_hash"]
    assert back.meta == json.loads(json.dumps(stats.meta))
    assert back.meta["observer"] == "percentile" and back.meta["percentile"] == 99.0
    assert back.meta["clips"] == clips.records
    for fqn, entry in stats.layers.items():
        other = back.layers[fqn]
        assert torch.equal(other.input_absmax, entry.input_absmax) and other.num_samples == entry.num_samples
        assert (other.smoothing is None) == (entry.smoothing is None)
        if entry.smoothing is not None:
            assert torch.equal(other.smoothing, entry.smoothing)
        for smoothed in ([False, True] if entry.smoothing is not None else [False]):
            scale = static_scale(back, fqn, smoothed)
            assert torch.equal(scale, static_scale(stats, fqn, smoothed))
            # the percentile clips: below the min-max scale, and what LayerCalibration derives from observer_absmax
            minmax = (entry.input_absmax / entry.smoothing if smoothed else entry.input_absmax).max() / 127
            assert scale <= minmax
            derived = LayerCalibration(observer_absmax(back, fqn, smoothed),
                                       entry.smoothing if smoothed else None).static_scale()
            assert torch.allclose(derived, scale, rtol=1e-6)
    fqn = "dit.blocks.0.ffn.2"
    assert static_scale(stats, fqn, False) < stats.layers[fqn].input_absmax.max() / 127


def test_calibration_set_hash_is_order_free_and_tracks_the_clips(tmp_path):
    a, b = {"file": "a.mp4", "bytes": 1, "sha256": "00", "clip": 0}, {"file": "b.mp4", "bytes": 2, "sha256": "11"}
    assert calibration_set_hash([a, b]) == calibration_set_hash([b, a])
    assert calibration_set_hash([a, b]) != calibration_set_hash([a])
    assert calibration_set_hash([a]) != calibration_set_hash([{**a, "clip": 1}])

    folder = tmp_path / "seq"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(36):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")

    def records(**kw):
        clips = FootageClips([folder], clips=2, frames=33, size=(128, 128), lr_input=True, **kw)
        return [c.record for c in clips]

    first = records()
    assert records() == first  # deterministic: same footage, same clips
    assert calibration_set_hash(records(seed=1)) != calibration_set_hash(first)
    assert calibration_set_hash(records(hash_mode="mtime")) != calibration_set_hash(first)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "007.png")  # new content
    assert calibration_set_hash(records()) != calibration_set_hash(first)


def test_smoothed_ranges_take_a_second_pass():
    model = random_model("test")
    clips = TensorClips([random_lr(33, seed=5)])
    stats = calibrate(model, clips, CalibrationConfig(observer="mse", alpha=0.5))
    for fqn in stats.meta["smoothed_layers"]:
        entry = stats.layers[fqn]
        exact_max = float((entry.input_absmax / entry.smoothing).max())
        assert 0 < stats.meta["smoothed_act_clip"][fqn] <= exact_max * (1 + 1e-6)
    block_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(
        DIT_BLOCK_LINEARS, n)]
    assert stats.meta["smoothed_layers"] == sorted(block_linears)


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint_and_clip(tmp_path):
    save_official(random_model("test"), tmp_path / "ckpt")
    write_video(tmp_path / "clip.mp4")
    return tmp_path / "ckpt", tmp_path / "clip.mp4"


def test_cli_calibrate_end_to_end_then_quantize(tmp_path, checkpoint_and_clip, capsys):
    ckpt, clip = checkpoint_and_clip
    out = tmp_path / "stats" / "stats.safetensors"
    rc = main(["calibrate", "--checkpoint", str(ckpt), "--footage", str(clip), "-o", str(out), "--clips", "2",
               "--frames", "33", "--size", "128x128", "--observer", "percentile", "--smoothquant-alpha", "0.5",
               "--alpha", r"dit\.blocks\.\d+\.ffn\.2=0.8", "--device", "cpu"])
    assert rc == 0
    stats = CalibrationStats.load(out)
    assert len(stats.layers) == 27 and stats.meta["chunks"] == {"first": 2, "later": 2}
    assert stats.meta["alpha_per_layer"]["dit.blocks.1.ffn.2"] == 0.8
    assert stats.meta["alpha_per_layer"]["dit.blocks.1.ffn.0"] == 0.5
    assert [c["source"]["video"]["file"] for c in stats.meta["clips"]] == ["clip.mp4", "clip.mp4"]
    assert "wrote" in capsys.readouterr().out

    # `quantize --calibration` reuses the file; the calibration-set hash lands in the manifest
    recipe = tmp_path / "static.yaml"
    shipped = (recipes_dir() / "w8a8-int8.yaml").read_text()
    recipe.write_text(shipped.replace("scheme: w8a8_int8\n", "scheme: w8a8_int8_static\n")
                      .replace("calibration: none", "calibration: required")
                      .replace("name: w8a8-int8\n", "name: w8a8-int8-static\n"))
    rc = main(["quantize", "--recipe", str(recipe), "--checkpoint", str(ckpt), "-o", str(tmp_path / "q"),
               "--calibration", str(out), "--dtype", "fp32", "--quiet"])
    assert rc == 0
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert stats.source_hash in json.dumps(manifest)


@pytest.mark.parametrize("bad", [
    ["--footage", "/nonexistent/clip.mp4"],
    ["--frames", "30"],
    ["--frames", "25"],
    ["--size", "100x100"],
    ["--size", "banana"],
    ["--smoothquant-alpha", "1.5"],
    ["--alpha", "no-equals-sign", "--smoothquant-alpha", "0.5"],
    ["--alpha", "x=0.5"],  # overrides without SmoothQuant
    ["--clips", "0"],
    ["--checkpoint", "/nonexistent/ckpt"],
])
def test_cli_calibrate_bad_input_fails_without_output(tmp_path, checkpoint_and_clip, bad, capsys):
    ckpt, clip = checkpoint_and_clip
    out = tmp_path / "stats.safetensors"
    args = {"--checkpoint": str(ckpt), "--footage": str(clip), "--frames": "33", "--size": "128x128", "--clips": "1"}
    for i in range(0, len(bad), 2):
        args[bad[i]] = bad[i + 1]
    argv = ["calibrate", "-o", str(out), "--device", "cpu"] + [x for kv in args.items() for x in kv]
    assert main(argv) != 0
    assert not out.exists() and not list(tmp_path.glob("*.safetensors*"))
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")


def test_cli_calibrate_refuses_to_overwrite(tmp_path, checkpoint_and_clip):
    ckpt, clip = checkpoint_and_clip
    out = tmp_path / "stats.safetensors"
    out.write_bytes(b"keep me")
    assert main(["calibrate", "--checkpoint", str(ckpt), "--footage", str(clip), "-o", str(out)]) != 0
    assert out.read_bytes() == b"keep me"
    with pytest.raises(SystemExit):
        main(["calibrate", "--checkpoint", str(ckpt), "--footage", str(clip), "-o", str(out), "--observer", "kl"])


def test_cli_calibrate_from_a_calibration_set_file(tmp_path, checkpoint_and_clip):
    ckpt, clip = checkpoint_and_clip
    (tmp_path / "sets").mkdir()
    set_file = tmp_path / "sets" / "mine.yaml"
    set_file.write_text("description: one clip\nfootage: [../clip.mp4]\nclips: 1\nframes: 33\nsize: 128x128\n"
                        "observer: percentile\npercentile: 99.9\nsmoothquant_alpha: 0.5\n"
                        "alpha: {'dit\\.blocks\\.\\d+\\.ffn\\.2': 0.7}\n")
    out = tmp_path / "stats.safetensors"
    assert main(["calibrate", "--checkpoint", str(ckpt), "--set", str(set_file), "-o", str(out), "--observer",
                 "mse", "--device", "cpu"]) == 0
    meta = CalibrationStats.load(out).meta
    assert meta["observer"] == "mse"  # the flag wins over the file
    assert len(meta["clips"]) == 1 and meta["clips"][0]["size"] == [128, 128]
    assert meta["alpha_per_layer"]["dit.blocks.0.ffn.2"] == 0.7 and meta["calibration_set_file"] == "mine.yaml"
    set_file.write_text("footage: [../clip.mp4]\nclip: 3\n")  # typo: unknown field
    out.unlink()
    assert main(["calibrate", "--checkpoint", str(ckpt), "--set", str(set_file), "-o", str(out)]) != 0
    assert not out.exists()


def test_shipped_calibration_sets_are_valid():
    from flashvsr_q.quant.calibration import load_calibration_set

    shipped = sorted((calibration_dir()).glob("*.yaml"))
    assert shipped
    for path in shipped:
        data = load_calibration_set(path)
        assert data["footage"] and (data["frames"] - 1) % 8 == 0 and data["frames"] >= 33, path


def test_static_scale_reaches_torchao():
    """The scale ``w8a8_int8_static`` hands to torchao is the observer's range / 127."""
    model = random_model("test")
    stats = calibrate(model, TensorClips([random_lr(33, seed=6)]), CalibrationConfig(observer="percentile"))
    fqn = "dit.blocks.0.ffn.2"
    layer = get_scheme("w8a8_int8_static").quantize(copy.deepcopy(model.get_submodule(fqn)),
                                                     with_static_ranges(stats, smoothed=False).layers[fqn])
    assert torch.allclose(layer.weight.act_quant_scale.flatten(), static_scale(stats, fqn).flatten(), rtol=1e-6)
    assert static_scale(stats, fqn) < stats.layers[fqn].input_absmax.max() / 127  # the percentile clipped


def test_footage_clips_from_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    frames = [[rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(34)] for _ in range(2)]
    datasets.Dataset.from_dict({"frames": frames}).save_to_disk(str(tmp_path / "ds"))
    clips = FootageClips([f"hf:{tmp_path / 'ds'}"], clips=2, frames=33, size=(128, 128), lr_input=True)
    got = list(clips)
    assert [tuple(c.lr.shape) for c in got] == [(1, 3, 33, 128, 128)] * 2
    assert [c.record["source"]["row"] for c in got] == [0, 1] and got[0].record["source"]["fingerprint"]
    again = FootageClips([f"hf:{tmp_path / 'ds'}"], clips=2, frames=33, size=(128, 128), lr_input=True)
    assert calibration_set_hash(c.record for c in again) == calibration_set_hash(c.record for c in got)


# ---------------------------------------------------------------------------------------------------------------
# PTQ takes the observer's range and the recipe's per-layer alpha
# ---------------------------------------------------------------------------------------------------------------

STATIC_RECIPE = """kind: quantization
name: one-static-layer
description: one w8a8_int8_static linear
gpu: any
expected_memory: {dit_gb: null}
calibration: required
keep: []
rules:
  - {pattern: 'lin', scheme: w8a8_int8_static, options: {granularity: per_row}}
"""


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def observed_stats(x: torch.Tensor, observer, path) -> CalibrationStats:
    """A statistics file for layer ``lin`` with ``observer``'s per-tensor range of ``x``, saved and read back."""
    layer = LayerObserver(x.shape[-1], observer)
    for part in x.split(512, dim=1):
        layer.update(part, "first")
    stats = CalibrationStats({"lin": LayerCalibration(layer.channel_absmax.clone(), None, layer.tokens)},
                             meta={**observer.settings(), "act_clip": {"lin": observer.clip()}})
    return CalibrationStats.load(stats.save(path))


def test_quantize_model_takes_the_percentile_observer_range(tmp_path):
    """A percentile statistics file reaches the static scale through ``quantize_model``: smaller than min-max on
    an outlier-heavy activation, and better on the ordinary tokens."""
    from flashvsr_q.quant import parse_recipe, quantize_model, resolve_plan

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4096, 64, generator=g)
    rare = torch.randperm(x.numel(), generator=g)[:20]  # 0.008 % of the values, 60-100x the typical magnitude
    x.view(-1)[rare] = (torch.rand(20, generator=g) * 40 + 60) * torch.sign(torch.randn(20, generator=g))
    model = OneLinear()
    reference = model(x).detach()
    plan = resolve_plan(parse_recipe(STATIC_RECIPE), model, "cpu")

    scales, outputs = {}, {}
    for name, observer in (("minmax", MinMaxObserver()), ("percentile", PercentileObserver(99.9))):
        stats = observed_stats(x, observer, tmp_path / f"{name}.safetensors")
        quantized = quantize_model(copy.deepcopy(model), plan, stats)
        scales[name] = quantized.lin.weight.act_quant_scale.flatten()
        assert torch.allclose(scales[name], static_scale(stats, "lin").flatten(), rtol=1e-6)
        with torch.no_grad():
            outputs[name] = quantized(x)
    assert torch.allclose(scales["minmax"], x.abs().max() / 127, rtol=1e-6)
    assert scales["percentile"] < scales["minmax"] / 10  # the clip ignores the rare outliers
    ordinary = ~(x.abs() > 10).any(dim=-1)  # tokens without an outlier
    assert sqnr(reference[ordinary], outputs["percentile"][ordinary]) > sqnr(reference[ordinary],
                                                                              outputs["minmax"][ordinary]) + 10


def smoothquant_recipe(overrides: str) -> str:
    shipped = (recipes_dir() / "w8a8-int8-smoothquant.yaml").read_text()
    assert "smoothquant: {alpha: 0.5}\n" in shipped
    return shipped.replace("smoothquant: {alpha: 0.5}\n", f"smoothquant: {{alpha: 0.5, overrides: {overrides}}}\n")


def test_recipe_alpha_overrides_reach_calibration_and_are_checked_by_ptq():
    from flashvsr_q.quant import RecipeError, parse_recipe, quantize_model, resolve_plan

    recipe = parse_recipe(smoothquant_recipe(r"{'dit\.blocks\.\d+\.ffn\.2': 0.8, 'dit\.blocks\.0\..*': 0.3}"))
    assert recipe.smoothquant_alpha("dit.blocks.1.ffn.2") == 0.8
    assert recipe.smoothquant_alpha("dit.blocks.0.ffn.2") == 0.8  # first match wins
    assert recipe.smoothquant_alpha("dit.blocks.0.ffn.0") == 0.3
    assert recipe.smoothquant_alpha("dit.blocks.1.self_attn.q") == 0.5
    model = random_model("test")
    clips = TensorClips([random_lr(33, seed=7)])
    plan = resolve_plan(recipe, model, "cpu")
    stats = calibrate(model, clips, CalibrationConfig(alpha=0.5, alpha_overrides=recipe.alpha_overrides))
    smoothed = [fqn for fqn, layer in plan.quantized.items() if layer.scheme.supports_smoothing]
    assert smoothed and len(smoothed) < len(plan.quantized)  # the LQ projection and decoder are weight-only
    for fqn in smoothed:
        assert stats.meta["alpha_per_layer"][fqn] == recipe.smoothquant_alpha(fqn)
        entry = stats.layers[fqn]
        expected = smoothing_factors(entry.input_absmax, model.get_submodule(fqn).weight,
                                     recipe.smoothquant_alpha(fqn))
        assert torch.equal(entry.smoothing, expected)
    quantized = quantize_model(copy.deepcopy(model), plan, stats)
    fqn = "dit.blocks.1.ffn.2"
    assert torch.allclose(quantized.get_submodule(fqn).weight.act_pre_scale.float(),
                          stats.layers[fqn].smoothing.reciprocal(), rtol=1e-2)

    # statistics made with one alpha everywhere do not match this recipe: refused before any weight changes
    uniform = calibrate(model, clips, CalibrationConfig(alpha=0.5))
    untouched = copy.deepcopy(model)
    with pytest.raises(RecipeError, match=r"another SmoothQuant alpha .* dit\.blocks\.0\.self_attn\.q "
                                          r"\(statistics 0\.5, recipe 0\.3\)"):
        quantize_model(untouched, plan, uniform)
    assert type(untouched.get_submodule(fqn).weight) is nn.Parameter
    assert type(untouched.get_submodule(fqn).weight.data) is torch.Tensor


def test_cli_calibrate_takes_the_recipe_alpha_overrides(tmp_path, checkpoint_and_clip):
    ckpt, clip = checkpoint_and_clip
    recipe = tmp_path / "sq.yaml"
    recipe.write_text(smoothquant_recipe(r"{'dit\.blocks\.\d+\.ffn\.2': 0.75}"))
    out = tmp_path / "stats.safetensors"
    assert main(["calibrate", "--checkpoint", str(ckpt), "--footage", str(clip), "-o", str(out), "--clips", "1",
                 "--frames", "33", "--size", "128x128", "--recipe", str(recipe), "--device", "cpu"]) == 0
    alphas = CalibrationStats.load(out).meta["alpha_per_layer"]
    assert alphas["dit.blocks.1.ffn.2"] == 0.75 and alphas["dit.blocks.1.ffn.0"] == 0.5 and len(alphas) == 20
    assert main(["quantize", "--recipe", str(recipe), "--checkpoint", str(ckpt), "-o", str(tmp_path / "q"),
                 "--calibration", str(out), "--dtype", "fp32", "--quiet"]) == 0
