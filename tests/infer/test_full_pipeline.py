"""The Full pipeline (Wan2.1 VAE decoder) in the streaming upscaler: exact geometry, streamed decode equal to the
whole-clip decode, the VAE cache in resume snapshots, tiled vs untiled quality, the memory plan, and the
missing / bad VAE file as a one-line error. The VAE is the official architecture at width 8 (``small``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import one_torch_thread
from infer.upscale_support import fast_model, make_clip, random_frames
from PIL import Image

import flashvsr_q as fq
from flashvsr_q import upscale
from flashvsr_q.checkpoints import load_checkpoint
from flashvsr_q.errors import CheckpointError, FlashVSRError
from flashvsr_q.eval.configs import parse_config, sweep
from flashvsr_q.infer.memory import GIB, choose_plan, estimate, module_bytes
from flashvsr_q.infer.pipeline import Cancelled, UpscaleSettings, plan_memory, upscale_frames
from flashvsr_q.infer.resume import MANIFEST_NAME, load_states, save_states
from flashvsr_q.infer.tiling import Geometry, plan_tiles
from flashvsr_q.model import (
    PRESETS,
    WAN_VAE_FILE,
    WAN_VAE_PRESETS,
    FeatureCache,
    FlashVSRStream,
    SeededNoise,
    WanVAEDecoder,
    WanVAEStream,
    run_clip,
    save_official,
    save_wan_vae,
    synthetic_wan_vae_state,
)
from flashvsr_q.model.wan_vae import LATENT_MEAN, LATENT_STD, cache_elements

SMALL_VAE = WAN_VAE_PRESETS["small"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on two shared cores, OpenMP spin-waiting makes two threads several times slower under load."""
    with one_torch_thread():
        yield


def small_vae(state: dict[str, torch.Tensor] | None = None) -> WanVAEDecoder:
    vae = WanVAEDecoder(SMALL_VAE)
    vae.load_state_dict(state or synthetic_wan_vae_state(SMALL_VAE, 0, decoder_only=True))
    return vae.eval()


@pytest.fixture(scope="module")
def full_model():
    model = fast_model()
    model.vae = small_vae()
    return model


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """The fast test model in the official layout plus a ``Wan2.1_VAE.pth`` of the small VAE (random weights)."""
    path = tmp_path_factory.mktemp("full-ckpt")
    save_official(fast_model(), path, overwrite=True)
    save_wan_vae(synthetic_wan_vae_state(SMALL_VAE, 0), path / WAN_VAE_FILE)
    return path


# -- geometry and streaming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, h, w, tile", [(1, 3, 5, "off"),  # 66 -> 264 px: 2 tiles
                                           pytest.param(22, 30, 66, "64x32", marks=pytest.mark.slow)])
def test_full_pipeline_exact_geometry(n, h, w, tile, full_model):
    out = list(upscale_frames(full_model, random_frames(n, h, w, seed=n), tile=tile))
    assert len(out) == n and all(o.shape == (4 * h, 4 * w, 3) and o.dtype == np.uint8 for o in out)


def test_full_pipeline_decodes_chunk_by_chunk_as_the_whole_clip(full_model):
    """The stream decodes each chunk's latents with the VAE cache carried over: the frames equal the official-style
    decode of all latents at once after the last chunk (spec §7.2), bit for bit (the same per-latent steps)."""
    lr = torch.rand(1, 3, 33, 128, 128) * 2 - 1  # 2 chunks: 6 + 2 latents
    frames, latents = run_clip(full_model, lr, SeededNoise(0, 16, 16, 16))
    whole = WanVAEStream(full_model.vae).decode(latents)
    assert frames.shape == (1, 3, 29, 128, 128) == whole.shape  # F - 4 frames, as the Tiny pipeline
    assert torch.equal(frames, whole)
    tiny_frames, tiny_latents = run_clip(fast_model(), lr, SeededNoise(0, 16, 16, 16))  # same weights, no VAE
    assert torch.equal(tiny_latents, latents) and not torch.equal(tiny_frames, frames)  # only the decoder differs


def test_vae_cache_is_in_the_state_snapshot(full_model, tmp_path):
    """The VAE's causal cache is part of a tile's StreamState: saved, loaded and resumed exactly."""
    lr = torch.rand(1, 3, 33, 128, 128) * 2 - 1
    stream = FlashVSRStream(full_model, SeededNoise(1, 16, 16, 16))
    stream.step(lr[:, :, :25])
    assert stream.state.vae.steps == 6 and stream.state.vae.nbytes() > 0
    save_states(tmp_path / "state.safetensors", [stream.state], {"chunks": 1})
    (restored,), extra = load_states(tmp_path / "state.safetensors", "cpu")
    assert restored.vae.steps == 6 and restored.vae.frames.keys() == stream.state.vae.frames.keys()
    assert all(torch.equal(restored.vae.frames[k], v) for k, v in stream.state.vae.frames.items())
    resumed = FlashVSRStream(full_model, SeededNoise(1, 16, 16, 16))
    resumed.state = restored
    assert torch.equal(resumed.step(lr[:, :, 25:]).frames, stream.step(lr[:, :, 25:]).frames)


# -- memory ---------------------------------------------------------------------------------------------------------


def test_vae_cache_formula_matches_the_cache():
    vae = small_vae()
    cache = FeatureCache()
    with torch.no_grad():
        vae.decode(torch.randn(1, 16, 3, 6, 10), cache)
    assert cache.nbytes() == 4 * cache_elements(SMALL_VAE, 48, 80)
    # the official width: ~2,400 elements per output pixel (~9 KiB in fp32, spec §9's "the peak stage")
    assert 2300 < cache_elements(WAN_VAE_PRESETS["wan2.1"], 1080, 1920) / (1080 * 1920) < 2500


def test_full_pipeline_memory_plan_counts_the_vae():
    official, g = PRESETS["flashvsr-v1.1"], Geometry(480, 270, 4)  # -> 1920x1080
    weights, vae = int(3.6 * GIB), WAN_VAE_PRESETS["wan2.1"]
    whole = plan_tiles(g.padded_height, g.padded_width)
    tiny = estimate(official, weights, torch.bfloat16, g, whole)
    full = estimate(official, weights, torch.bfloat16, g, whole, vae=vae)
    assert full.pipeline == "full" and "Wan VAE decoder" in full.describe()
    assert full.states - tiny.states > 9 * GIB  # the untiled VAE cache at 1080p in bf16 (~9.6 GiB)
    assert full.decoder > 10 * GIB > tiny.decoder  # one latent step at full resolution
    # the reported untiled Full decode at 1080p is ~22 GB: the estimate is in that range
    assert 20 * GIB < full.states - tiny.states + full.decoder < 30 * GIB
    # with a 16 GB budget the planner tiles the Full pipeline more finely than the Tiny one
    fit_tiny = choose_plan(official, weights, torch.bfloat16, g, 16 * GIB)
    fit_full = choose_plan(official, weights, torch.bfloat16, g, 16 * GIB, vae=vae)
    assert fit_full.estimate.peak <= 16 * GIB
    size = lambda mp: mp.plan.tile_size[0] * mp.plan.tile_size[1]  # noqa: E731
    assert size(fit_full) < size(fit_tiny)


def test_full_pipeline_dry_run_shows_the_vae(full_checkpoint, tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=3, size=(32, 24), audio=False)
    out = subprocess.run([sys.executable, "-m", "flashvsr_q.cli", "upscale", str(clip), "-o", str(tmp_path / "o.mp4"),
                          "--checkpoint", str(full_checkpoint), "--pipeline", "full", "--device", "cpu", "--dry-run",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (report,) = json.loads(out.stdout)
    assert report["pipeline"] == "full" and report["estimate"]["pipeline"] == "full"
    model = load_checkpoint(full_checkpoint, dtype=torch.float32, pipeline="full")
    assert report["estimate"]["weights"] == module_bytes(model)  # the VAE's weights are counted
    assert report["estimate"]["decoder"] > 0 and not (tmp_path / "o.mp4").exists()


# -- resume -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_pipeline_resume_is_byte_identical(tmp_path, full_checkpoint):
    def run(out, **kw):
        return upscale(clip, out, checkpoint=full_checkpoint, pipeline="full", device="cpu", dtype="fp32",
                       segment_frames=8, show_progress=False, log=lambda m: None, preset="ultrafast", **kw)

    clip = make_clip(tmp_path / "in.mp4", frames=30, size=(32, 24))
    reference = tmp_path / "ref.mp4"
    assert run(reference).pipeline == "full"
    out, done = tmp_path / "out.mp4", []
    with pytest.raises(Cancelled):  # cancelled once the first segment (21 frames) is on disk
        run(out, progress=lambda d, t: done.append(d), cancel=lambda: bool(done))
    work = out.with_name(out.name + ".parts")
    assert json.loads((work / MANIFEST_NAME).read_text())["progress"]["frames"] == 21
    summary = run(out, resume=True)
    assert summary.resumed_from_frame == 21 and summary.frames == 30
    assert out.read_bytes() == reference.read_bytes()


# -- tiled vs untiled ---------------------------------------------------------------------------------------------


def passthrough_vae_state(seed: int = 0, strength: float = 0.5) -> dict[str, torch.Tensor]:
    """Small-VAE weights that decode a picture: channels 0-2 of a latent are RGB, channel 3 a constant. Every stage
    carries channels 0-3 through (identity taps in conv1, the shortcuts, upsamplings and the head), and every
    residual branch and the per-frame attention add a random context-dependent term (``strength`` times the random
    init), so the output is a picture that depends on its spatial neighbourhood, as a real decoder's does, and tile
    edges matter."""
    state = synthetic_wan_vae_state(SMALL_VAE, seed, decoder_only=True)
    for key, value in state.items():
        if key.endswith("gamma"):
            value.fill_(1)
        elif key.endswith("bias"):
            value.zero_()
        elif key.endswith(("residual.6.weight", "proj.weight")):
            value.mul_(strength)  # the branches added to the carried channels
        elif not key.endswith(("residual.2.weight", "to_qkv.weight")):  # a carrier: identity on channels 0-3
            value.zero_()
            now = (value.shape[2] - 1,) if value.ndim == 5 else ()  # causal convs: the last tap is the current frame
            centre = tuple(k // 2 for k in value.shape[-2:])
            for c in range(3 if key == "decoder.head.2.weight" else 4):
                for out in (c, c + value.shape[1]) if "time_conv" in key else (c,):
                    value[(out, c, *now, *centre)] = 1.0
    std, mean = torch.tensor(LATENT_STD), torch.tensor(LATENT_MEAN)
    state["conv2.weight"][:, :, 0, 0, 0] = torch.diag(1 / std)  # undo z * std + mean: carry the latent itself
    state["conv2.bias"].copy_(-mean / std)
    return state


def picture_noise(hr: np.ndarray, value: float = 4.0):
    """A stand-in for SeededNoise that returns the 8x-pooled HR picture as latents (channels 0-2: RGB in [-1, 1],
    channel 3: ``value``, the rest 0) at every latent index, cropped like the noise field."""
    pooled = torch.from_numpy(hr.copy()).permute(2, 0, 1).float().div(127.5).sub(1)
    pooled = torch.nn.functional.avg_pool2d(pooled[None], 8)[0]

    class PictureNoise:
        def __init__(self, seed, channels, height, width, crop=None, dtype=torch.float32):
            field = torch.zeros(channels, height, width)
            field[:3, : pooled.shape[1], : pooled.shape[2]] = pooled
            field[3] = value
            top, left, h, w = crop or (0, 0, height, width)
            self.field, self.dtype = field[:, top : top + h, left : left + w], dtype

        def __call__(self, start, count, device):
            return self.field[:, None].expand(-1, count, -1, -1)[None].to(device, self.dtype)

    return PictureNoise


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.slow
def test_full_pipeline_tiled_vs_untiled_psnr_within_005_db(monkeypatch):
    """A DiT whose head is zero passes its noise through as latents; the noise is replaced by a picture in latent
    form (8x-pooled RGB) and the VAE carries it to the output (:func:`passthrough_vae_state`). So the output is that
    picture, up to what the decoder's random branches add, and its PSNR against the picture (8x8 blocks, what these
    latents can hold) is meaningful: tiling (2 tiles, each with its own VAE cache and attention context, blended over
    128 px) changes it by at most 0.05 dB."""
    skimage_data = pytest.importorskip("skimage.data")
    crop = Image.fromarray(skimage_data.astronaut()).crop((0, 96, 512, 267)).resize((48, 16), Image.BOX)
    hr = np.asarray(crop.resize((384, 128), Image.NEAREST))  # the picture the latents encode
    lr = np.asarray(Image.fromarray(hr).resize((96, 32), Image.BICUBIC))
    model = fast_model()
    with torch.no_grad():
        model.dit.head.head.weight.zero_()
        model.dit.head.head.bias.zero_()
    model.vae = small_vae(passthrough_vae_state(strength=0.1))
    monkeypatch.setattr("flashvsr_q.infer.pipeline.SeededNoise", picture_noise(hr))
    plan = plan_memory(model, Geometry(96, 32, 4), "64x32", None, UpscaleSettings())
    assert plan.plan.cols == ((0, 256), (128, 256))  # 2 tiles of 256 px overlapping on [128, 256)
    untiled, tiled = (np.stack(list(upscale_frames(model, [lr] * 21, tile=tile))) for tile in ("off", "64x32"))
    per_frame = [(psnr(u, hr), psnr(t, hr)) for u, t in zip(untiled, tiled)]
    # measured: 23.8-26.9 dB per frame untiled; |tiled - untiled| at most 0.042 dB; pixels differ by up to 2 levels
    assert min(u for u, _ in per_frame) > 20  # the picture, not noise: the comparison means something
    assert max(abs(u - t) for u, t in per_frame) <= 0.05
    assert np.abs(untiled.astype(int) - tiled.astype(int)).max() >= 2  # and the tiles were decoded apart


# -- the VAE file -------------------------------------------------------------------------------------------------


def _cli_upscale(clip, out, checkpoint) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashvsr_q.cli", "upscale", str(clip), "-o", str(out),
                           "--checkpoint", str(checkpoint), "--pipeline", "full", "--device", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing", "garbage", "other keys"])
def test_missing_or_bad_vae_file_is_one_line_error(case, tmp_path):
    ckpt = tmp_path / "ckpt"
    save_official(fast_model(), ckpt)
    if case == "garbage":
        (ckpt / WAN_VAE_FILE).write_bytes(b"not a torch file")
    elif case == "other keys":
        state = synthetic_wan_vae_state(SMALL_VAE, 0)
        del state["decoder.head.2.bias"]
        save_wan_vae(state, ckpt / WAN_VAE_FILE)
    clip = make_clip(tmp_path / "in.mp4", frames=2, size=(16, 16), audio=False)
    out = tmp_path / "out.mp4"
    proc = _cli_upscale(clip, out, ckpt)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert WAN_VAE_FILE in lines[0] and "flashvsr-q fetch v1.1 --full" in lines[0] and str(ckpt) in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists() and not out.with_name("out.mp4.parts").exists()
    with pytest.raises(CheckpointError, match=WAN_VAE_FILE):
        load_checkpoint(ckpt, dtype=torch.float32, pipeline="full")
    assert load_checkpoint(ckpt, dtype=torch.float32).pipeline == "tiny"  # Tiny does not need the file


# -- the faces: eval configurations, the library --------------------------------------------------------------------


def test_full_pipeline_in_eval_configs_and_the_api(full_model):
    assert parse_config("vae:pipeline=full,tile=off").pipeline == "full"
    assert all(c.pipeline == "full" for c in sweep(recipes=[None], pipeline="full", bicubic=False))
    with pytest.raises(FlashVSRError, match="pipeline must be one of tiny, full"):
        parse_config("x:pipeline=huge")
    tiny = fast_model()
    with pytest.raises(FlashVSRError, match="runs the tiny pipeline"):
        next(fq.upscale([np.zeros((8, 8, 3), np.uint8)], model=tiny, pipeline="full"))
    out = list(fq.upscale([np.zeros((8, 8, 3), np.uint8)], model=full_model, pipeline="full", tile="off"))
    assert [o.shape for o in out] == [(32, 32, 3)]
