"""The ``triton`` backend against ``dense``: on CPU through Triton's interpreter (TRITON_INTERPRET=1), on CUDA compiled.

Triton fixes the mode when it is imported (it decorates its own library functions then), so the interpreter cases
run in a fresh ``pytest`` subprocess of this file with TRITON_INTERPRET=1 (``test_under_the_interpreter``); in the
parent process they skip. The interpreter runs numpy per tile: the inputs here are a few 128-token blocks.
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import REPO, random_lr, random_model, requires_cuda

from flashvsr_q.attention import available_backends, get_backend
from flashvsr_q.errors import BackendUnavailable

pytest.importorskip("triton")
from flashvsr_q.attention.triton_sparse import (  # noqa: E402 (after the importorskip)
    FALLBACK,
    INTERPRETED,
    KernelConfig,
    block_mask_to_lists,
    triton_block_sparse_attention,
)

dense = get_backend("dense")
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in test_under_the_interpreter's subprocess")


def test_under_the_interpreter(request):
    """Runs this file's interpreter cases in a subprocess with TRITON_INTERPRET=1 (same -m selection, no CUDA)."""
    if INTERPRETED:
        pytest.skip("already under the interpreter")
    markexpr = request.config.getoption("markexpr")
    select = f"({markexpr}) and not cuda" if markexpr else "not cuda"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", select],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"\d+ passed", run.stdout) and "failed" not in run.stdout, run.stdout[-2000:]


def inputs(seed=0, batch=1, heads=2, d=64, nq=2, nk=3, dtype=torch.float32):
    """Random q/k/v and a block mask with an empty query block (head 0, block 1) and a full one (head 1, block 0)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, nq * 128, d, generator=g).to(dtype)
    k = torch.randn(batch, heads, nk * 128, d, generator=g).to(dtype)
    v = torch.randn(batch, heads, nk * 128, d, generator=g).to(dtype)
    mask = torch.rand(batch, heads, nq, nk, generator=g) > 0.5
    mask[:, 0, 1] = False
    mask[:, 1, 0] = True
    return q, k, v, mask


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_block_mask_to_lists():
    mask = torch.tensor([[False, True, False, True], [False] * 4, [True] * 4]).view(1, 1, 3, 4)
    indices, counts = block_mask_to_lists(mask)
    assert indices.dtype == counts.dtype == torch.int32
    assert counts.tolist() == [2, 0, 4]
    assert indices[0, :2].tolist() == [1, 3] and indices[2].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("d", [32, 64])  # head dims of the `test` and `small` presets
@pytest.mark.parametrize("seed", [0, 1])
@interpreted
def test_matches_dense_fp32(d, seed):
    q, k, v, mask = inputs(seed, d=d)
    before = [t.clone() for t in (q, k, v, mask)]
    out = get_backend("triton", "cpu")(q, k, v, mask)
    ref = dense(q, k, v, mask)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel(out, ref) < 1e-5 and (out - ref).abs().max() < 1e-5
    assert torch.equal(out[0, 0, 128:256], torch.zeros(128, d))  # the empty query block
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v, mask)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@interpreted
def test_half_precision(dtype):
    q, k, v, mask = inputs(2, dtype=dtype)
    out = triton_block_sparse_attention(q, k, v, mask)
    assert out.dtype == dtype
    # dense upcasts the same half inputs to fp32; the kernel differs by rounding P to half before P.V
    assert rel(out, dense(q, k, v, mask)) < 1e-2
    assert torch.equal(out[0, 0, 128:256].float(), torch.zeros(128, 64))


@interpreted
def test_only_selected_blocks_are_read():
    """NaN keys and values in every unselected block change nothing: the kernel never loads them."""
    q, k, v, mask = inputs(3)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    for h in range(2):
        unused = ~mask[0, h].any(0)  # key blocks no query block of this head selected
        for j in unused.nonzero().flatten().tolist():
            poisoned_k[0, h, j * 128:(j + 1) * 128] = float("nan")
            poisoned_v[0, h, j * 128:(j + 1) * 128] = float("nan")
    assert poisoned_k.isnan().any()
    out = triton_block_sparse_attention(q, poisoned_k, poisoned_v, mask)
    assert not out.isnan().any() and rel(out, dense(q, k, v, mask)) < 1e-5


@pytest.mark.parametrize("config", [KernelConfig(64, 128, 4, 1), FALLBACK])
@interpreted
def test_sub_tiles_agree(config):
    q, k, v, mask = inputs(4)
    assert rel(triton_block_sparse_attention(q, k, v, mask, config), dense(q, k, v, mask)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("d", [128, 48])  # the official head dim; one that is not a power of two (padded)
@interpreted
def test_strided_batched_inputs(d):
    """Batch 2, q/k as transposed [B, L, H, d] views and v with a stride of 2 in d: no copies needed."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 256, 2, d, generator=g).transpose(1, 2)
    k = torch.randn(2, 384, 2, d, generator=g).transpose(1, 2)
    v = torch.randn(2, 2, 384, 2 * d, generator=g)[..., ::2]
    mask = torch.rand(2, 2, 2, 3, generator=g) > 0.5
    mask[1, 1] = True
    mask[0, 0, 0] = False
    out = triton_block_sparse_attention(q, k, v, mask)
    assert out.is_contiguous() and rel(out, dense(q, k, v, mask)) < 1e-5


@pytest.mark.slow
@interpreted
def test_model_end_to_end():
    """The `test` model (head dim 32) on a 25-frame clip: the same frames as with `sparse` (~5 s interpreted)."""
    from flashvsr_q.model.streaming import SeededNoise, run_clip

    model, lr = random_model("test"), random_lr(frames=25, height=128, width=256)
    frames = {}
    for name in ("sparse", "triton"):
        model.set_attention(name, "cpu")
        with torch.no_grad():
            frames[name], _ = run_clip(model, lr, SeededNoise(0, model.config.latent_channels, 16, 32))
    assert rel(frames["triton"], frames["sparse"]) < 1e-6


def test_bad_inputs_fail_loudly():
    q, k, v, mask = inputs(0)
    with pytest.raises(ValueError, match="do not match the block mask"):
        triton_block_sparse_attention(q, k, v, mask[..., :2])
    with pytest.raises(ValueError, match="one dtype"):
        triton_block_sparse_attention(q, k.half(), v, mask)
    with pytest.raises(ValueError, match="block mask"):
        triton_block_sparse_attention(q, k, v, None)
    with pytest.raises(ValueError, match="power of two"):
        KernelConfig(block_m=96)


def test_availability_on_cpu():
    if INTERPRETED:
        assert available_backends("cpu")["triton"] is None and get_backend("triton", "cpu").exact
    else:
        assert "TRITON_INTERPRET=1" in available_backends("cpu")["triton"]
        with pytest.raises(BackendUnavailable, match="'triton'.*CUDA"):
            get_backend("triton", "cpu")
    assert get_backend("auto", "cpu").name == "sparse"  # never the interpreter


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [64, 128])
def test_cuda_matches_dense(dtype, d):
    reason = available_backends("cuda")["triton"]
    if reason is not None:
        pytest.skip(reason)
    q, k, v, mask = inputs(6, heads=12 if d == 128 else 2, d=d, nq=6, nk=8)
    mask[0, 2] = True
    q, k, v, mask = (t.cuda() for t in (q.to(dtype), k.to(dtype), v.to(dtype), mask))
    before = [t.clone() for t in (q, k, v)]
    out = get_backend("triton", "cuda")(q, k, v, mask)
    ref = dense(q, k, v, mask)  # fp32 math on the same rounded inputs
    assert out.dtype == dtype and not out.isnan().any()
    assert rel(out, ref) < (1e-5 if dtype == torch.float32 else 1e-2)
    assert torch.equal(out[0, 0, 128:256], torch.zeros_like(out[0, 0, 128:256]))
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v)))
