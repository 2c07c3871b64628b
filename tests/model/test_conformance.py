"""Our float32 port reproduces the official FlashVSR v1 code tensor by tensor (shared/conformance, 2-block DiT).

Tolerances are the ones the reference's README derives (≈10x its measured noise floor, ≈40x below real bugs).
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import CONFORMANCE
from PIL import Image

from flashvsr_q.attention import get_backend
from flashvsr_q.attention.registry import AttentionBackend
from flashvsr_q.infer.colorfix import adain, to_uint8
from flashvsr_q.model import get_config, load_official, run_clip, tensor_noise

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CONFORMANCE / "reference_v1_L2.pt").exists(), reason="shared/conformance not available"),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def reference():
    return torch.load(CONFORMANCE / "reference_v1_L2.pt", weights_only=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, reference):
    """Write the reference weights with the official generator, load them through our loader, run the clip."""
    weights = tmp_path_factory.mktemp("conformance") / "weights-L2"
    subprocess.run([sys.executable, str(CONFORMANCE / "make_weights.py"), "--out", str(weights), "--layers", "2"],
                   check=True, capture_output=True)
    model = load_official(weights, get_config("flashvsr-v1").replace(num_layers=2), dtype=torch.float32)
    masks, captured, chunks = [], {}, []
    dense = get_backend("dense")
    model.set_attention(AttentionBackend("recording-dense", lambda q, k, v, m: (masks.append(m), dense(q, k, v, m))[1],
                                         True, True, "dense that records the LCSA masks", lambda d: None))

    def capture(name):
        return lambda module, inputs, output: captured.setdefault(name, []).append(output)

    block0 = model.dit.blocks[0]
    block0.self_attn.register_forward_hook(capture("self_attn"))
    block0.cross_attn.register_forward_hook(capture("cross_attn"))
    block0.ffn.register_forward_hook(capture("ffn"))
    for i, block in enumerate(model.dit.blocks):
        block.register_forward_hook(capture(f"block{i}"))
    frames, latents = run_clip(model, reference["lq_video"], tensor_noise(reference["noise"]), on_chunk=chunks.append)
    cond = model.conditioning()
    context = model.dit.text_embedding(model.prompt)
    return dict(model=model, masks=masks, captured=captured, chunks=chunks, frames=frames, latents=latents,
                cond=cond, context=context)


def test_preprocessing_is_bit_identical(reference):
    lr = reference["lr_frames_uint8"].numpy()
    up = np.stack([np.asarray(Image.fromarray(f).resize((128, 128), Image.BICUBIC)) for f in lr])
    x = (torch.from_numpy(up).permute(3, 0, 1, 2).float() / 255 * 2 - 1).to(torch.bfloat16).float()
    x = torch.cat([x, x[:, -1:].expand(-1, 4, -1, -1)], dim=1)[None, :, :41]
    assert torch.equal(x, reference["lq_video"])


def test_time_and_text_embeddings(run, reference):
    assert rel(run["cond"].t, reference["t"]) <= 1e-6
    assert rel(run["cond"].t_mod, reference["t_mod"]) <= 1e-6
    assert rel(run["context"][:, :64], reference["text_context_rows0_63"]) <= 1e-6


def test_lcsa_block_masks_are_identical(run, reference):
    layers = len(run["model"].dit.blocks)
    for c, expected in enumerate(reference["block_masks"]):
        ours = torch.stack([m[0] for m in run["masks"][c * layers:(c + 1) * layers]])
        assert torch.equal(ours, expected), f"chunk {c}"


def test_block_states_and_latents(run, reference):
    cap = run["captured"]
    for c in range(3):
        assert rel(cap["self_attn"][c], reference["block0_self_attn_out"][c]) <= 1e-5
        for layer in range(2):
            assert rel(cap[f"block{layer}"][c], reference["chunk_block_output"][c][layer]) <= 1e-5
        assert rel(run["chunks"][c].latents, reference["chunk_x0"][c]) <= 1e-5
    assert rel(cap["cross_attn"][0], reference["block0_cross_attn_out_chunk0"]) <= 1e-5
    assert rel(cap["ffn"][0], reference["block0_ffn_out_chunk0"]) <= 1e-5
    assert rel(run["latents"].transpose(1, 2), reference["latents"]) <= 1e-5


def test_decoded_frames_colour_fix_and_uint8(run, reference):
    assert run["frames"].shape == (1, 3, 37, 128, 128)
    assert rel(run["frames"], reference["frames_before_colorfix"]) <= 1e-5
    fixed = adain(run["frames"], reference["lq_video"][:, :, :37])[0]
    assert rel(fixed, reference["frames_after_colorfix"]) <= 2e-5
    assert (fixed - reference["frames_after_colorfix"]).abs().max() <= 1e-4
    diff = (to_uint8(fixed).permute(1, 2, 3, 0).int() - reference["frames_uint8"].int()).abs()
    assert diff.max() <= 1
    assert (diff > 0).float().mean() <= 1e-3
