"""Every registered backend against the `dense` reference, and the registry's loud failures."""

import pytest
import torch
from helpers import requires_cuda

from flashvsr_q.attention import available_backends, backend_names, get_backend
from flashvsr_q.errors import BackendUnavailable

# bounds for the quantized paths, measured on these inputs (≈2-3x margin): int8 Q/K with fp16 P.V (sage),
# int8 Q/K with fp8 e4m3 P and V (sparge)
QUANTIZED_BOUND = {"sage": 3e-2, "sparge": 8e-2}
CPU_BACKENDS = [n for n, reason in available_backends("cpu").items() if reason is None]


def inputs(seed=0, heads=2, d=64, nq=3, nk=4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, nq * 128, d, generator=g)
    k = torch.randn(1, heads, nk * 128, d, generator=g)
    v = torch.randn(1, heads, nk * 128, d, generator=g)
    mask = torch.rand(1, heads, nq, nk, generator=g) > 0.4
    if nq > 1:
        mask[0, 0, 1] = False  # an empty query block
    return q, k, v, mask


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_cpu_has_the_portable_backends():
    assert {"dense", "sparse", "flex", "sage", "sparge", "full"} <= set(CPU_BACKENDS)


@pytest.mark.parametrize("name", [n for n in CPU_BACKENDS if n not in ("dense", "full")])
@pytest.mark.parametrize("seed", [0, 1])
def test_backend_matches_dense(name, seed):
    q, k, v, mask = inputs(seed)
    backend = get_backend(name)
    out = backend(q, k, v, mask)
    ref = get_backend("dense")(q, k, v, mask)
    assert out.shape == ref.shape and out.dtype == q.dtype
    bound = 1e-5 if backend.exact else QUANTIZED_BOUND[name]
    assert rel(out, ref) < bound
    assert not out.isnan().any()
    assert torch.equal(out[0, 0, 128:256], torch.zeros(128, 64))  # empty query block -> zeros


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_backends_never_modify_their_inputs(name):
    q, k, v, mask = inputs(3)
    before = [t.clone() for t in (q, k, v, mask)]
    get_backend(name)(q, k, v, mask if get_backend(name).uses_lcsa else None)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v, mask)))


def test_dense_is_exact_masked_softmax():
    q, k, v, mask = inputs(2, heads=1, nq=1, nk=2)
    mask[:] = torch.tensor([True, False])
    out = get_backend("dense")(q, k, v, mask)
    expected = torch.softmax(q[0, 0] @ k[0, 0, :128].T / 8.0, -1) @ v[0, 0, :128]
    assert torch.allclose(out[0, 0], expected, atol=1e-5)


def test_full_ignores_lcsa():
    assert get_backend("full").uses_lcsa is False
    q, k, v, _ = inputs()
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v
    assert rel(get_backend("full")(q, k, v, None), ref) < 1e-5


def test_auto_picks_and_unknown_or_unavailable_fail_loudly():
    assert get_backend("auto", "cpu").name == "sparse"
    with pytest.raises(BackendUnavailable, match="unknown attention backend 'nope'.*sparse"):
        get_backend("nope")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="block_sparse.*CUDA.*available"):
            get_backend("block_sparse", "cpu")
    assert set(backend_names()) >= {"dense", "sparse", "flex", "block_sparse", "triton", "sage", "sparge", "full"}


def test_sparse_bounds_its_gather(monkeypatch):
    import flashvsr_q.attention.sparse as sparse

    monkeypatch.setattr(sparse, "MAX_GATHER_ELEMENTS", 128 * 64)  # one key block per call
    q, k, v, mask = inputs(4)
    assert rel(get_backend("sparse")(q, k, v, mask), get_backend("dense")(q, k, v, mask)) < 1e-5


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["sparse", "flex", "sage", "sparge", "block_sparse", "triton"])
def test_cuda_backend_matches_dense(name):
    if available_backends("cuda")[name] is not None:
        pytest.skip(available_backends("cuda")[name])
    q, k, v, mask = (t.cuda() for t in inputs())
    q, k, v = (t.bfloat16() for t in (q, k, v))
    k_before = k.clone()
    out = get_backend(name, "cuda")(q, k, v, mask)
    assert torch.equal(k, k_before)  # the KV cache must never be modified
    assert rel(out.float(), get_backend("dense", "cuda")(q.float(), k.float(), v.float(), mask)) < 5e-2
