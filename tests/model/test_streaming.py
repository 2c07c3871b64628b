"""Streaming: schedule, determinism, KV-cache contents, LQ-projection variants, decoder chunk invariance."""

import subprocess
import sys

import pytest
import torch
from helpers import random_lr, random_model

from flashvsr_q.model import FlashVSRStream, SeededNoise, chunk_lr_ranges, padded_length, run_clip, tensor_noise
from flashvsr_q.model.lq_proj import LQProjState
from flashvsr_q.model.tc_decoder import DecoderState


def test_frame_bookkeeping():
    assert padded_length(1) == 25 and padded_length(21) == 25 and padded_length(22) == 33
    assert padded_length(101) == 105 and padded_length(100) == 105
    assert chunk_lr_ranges(41) == [(0, 25), (25, 33), (33, 41)]
    with pytest.raises(ValueError):
        chunk_lr_ranges(40)
    for n in range(1, 60):
        f = padded_length(n)
        assert (f - 1) % 8 == 0 and f - 4 >= n and f - 12 < n or f == 25


def test_chunks_outputs_and_alignment(tiny_model):
    lr = random_lr(41)
    noise = SeededNoise(0, 16, 16, 16)
    chunks = []
    frames, latents = run_clip(tiny_model, lr, noise, on_chunk=chunks.append)
    assert frames.shape == (1, 3, 37, 128, 128) and latents.shape == (1, 16, 10, 16, 16)
    assert [c.first_frame for c in chunks] == [0, 21, 29]
    assert [c.frames.shape[2] for c in chunks] == [21, 8, 8]
    assert torch.equal(chunks[1].lr, lr[:, :, 21:29])  # decoder/colour-fix reference aligned with the output


def test_streaming_is_deterministic(tiny_model):
    lr = random_lr(33, seed=3)
    a = run_clip(tiny_model, lr, SeededNoise(5, 16, 16, 16))[0]
    b = run_clip(tiny_model, lr, SeededNoise(5, 16, 16, 16))[0]
    c = run_clip(tiny_model, lr, SeededNoise(6, 16, 16, 16))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_seeded_noise_is_a_field():
    full = SeededNoise(1, 16, 32, 48)
    tile = SeededNoise(1, 16, 32, 48, crop=(8, 16, 16, 16))
    dev = torch.device("cpu")
    assert torch.equal(full(0, 6, dev)[..., 8:24, 16:32], tile(0, 6, dev))
    assert torch.equal(full(0, 8, dev)[:, :, 6:], full(6, 2, dev))  # chunking does not change the noise


def test_explicit_noise_is_used(tiny_model):
    lr = random_lr(25)
    noise = torch.randn(1, 16, 6, 16, 16)
    _, latents = run_clip(tiny_model, lr, tensor_noise(noise))
    stream = FlashVSRStream(tiny_model, tensor_noise(noise), decode=False)
    out = stream.step(lr)
    assert out.frames is None and torch.equal(out.latents, latents)


def test_kv_cache_holds_the_last_three_groups(tiny_model):
    lr = random_lr(49)
    stream = FlashVSRStream(tiny_model, SeededNoise(0, 16, 16, 16), decode=False)
    group_tokens = 1 * 128  # 128x128 output: one window per frame group
    layer0 = stream.state.caches[0]
    keys_seen = []
    for i, (s, e) in enumerate(chunk_lr_ranges(49)):
        stream.step(lr[:, :, s:e])
        assert layer0.k.shape[1] == 3 * group_tokens and layer0.v.shape == layer0.k.shape
        keys_seen.append(layer0.k.clone())
    # after chunk c >= 1 the cache holds latents 2c..2c+5: the oldest group of the previous cache was dropped
    for prev, cur in zip(keys_seen, keys_seen[1:]):
        assert torch.equal(prev[:, group_tokens:], cur[:, : 2 * group_tokens])


def test_rope_positions_are_absolute(tiny_model):
    """Chunk 1 uses frame positions 6, 7: feeding it at offset 0 gives a different result."""
    from flashvsr_q.attention import LCSASettings

    lr = random_lr(33)
    stream = FlashVSRStream(tiny_model, SeededNoise(0, 16, 16, 16), decode=False)
    stream.step(lr[:, :, :25])
    caches = [c for c in stream.state.caches]
    snapshot = [(c.k.clone(), c.v.clone()) for c in caches]
    tokens = [tiny_model.lq_proj(clip, stream.state.lq) for clip in lr[:, :, 25:33].split(4, dim=2)]
    noise = SeededNoise(0, 16, 16, 16)(6, 2, torch.device("cpu"))
    outs = []
    for offset in (6, 0):
        for c, (k, v) in zip(caches, snapshot):
            c.k, c.v = k, v
        outs.append(tiny_model.dit(noise, torch.cat(tokens, 1), stream.cond, caches, offset, LCSASettings()))
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("variant", ["v1", "v1.1"])
def test_lq_projection_cache_rule(variant):
    model = random_model("test", variant=variant)
    lr = random_lr(9, seed=1)
    other = random_lr(9, seed=2)

    def tokens_of_second_clip(history):
        state = LQProjState()
        model.lq_proj(history[:, :, :1], state)
        model.lq_proj(history[:, :, 1:5], state)
        return model.lq_proj(lr[:, :, 5:9], state)

    same = torch.equal(tokens_of_second_clip(lr), tokens_of_second_clip(other))
    assert same == (variant == "v1")  # v1 ignores history (own-tail quirk); v1.1 is truly causal


def test_decoder_chunk_by_chunk_equals_whole_clip(tiny_model):
    latents = torch.randn(1, 10, 16, 16, 16)
    cond = random_lr(37)
    whole = tiny_model.decoder(latents, cond, DecoderState())
    state = DecoderState()
    parts = [tiny_model.decoder(latents[:, :6], cond[:, :, :21], state),
             tiny_model.decoder(latents[:, 6:8], cond[:, :, 21:29], state),
             tiny_model.decoder(latents[:, 8:], cond[:, :, 29:], state)]
    assert whole.shape == (1, 37, 3, 128, 128)
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5)


def test_test_model_upscales_a_clip_end_to_end(tiny_model):
    """A few seconds on CPU (timed in the benchmarks, not here)."""
    lr = random_lr(padded_length(30), 256, 384)
    frames, _ = run_clip(tiny_model, lr, SeededNoise(0, 16, 32, 48))
    assert frames.shape == (1, 3, padded_length(30) - 4, 256, 384) and torch.isfinite(frames).all()


def test_model_package_imports_nothing_from_the_rest():
    code = ("import sys, flashvsr_q.model; bad = [m for m in sys.modules if m.startswith(('flashvsr_q.quant', "
            "'flashvsr_q.infer', 'flashvsr_q.eval', 'lightning', 'torchao', 'bitsandbytes'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
