"""LCSA semantics (spec §5) against brute-force definitions, incl. the local window and the shared budget that the
conformance reference (one window per frame group) cannot exercise."""

import math

import pytest
import torch

from flashvsr_q.attention import from_windows, local_mask, select_blocks, to_windows, topk_budget


def brute_local_mask(bh: int, bw: int, r: int) -> torch.Tensor:
    mask = torch.zeros(bh * bw, bh * bw, dtype=torch.bool)
    for qi in range(bh * bw):
        qr, qc = divmod(qi, bw)
        for ki in range(bh * bw):
            kr, kc = divmod(ki, bw)
            mask[qi, ki] = (qr - r // 2 <= kr <= qr - r // 2 + r - 1) and (qc - r // 2 <= kc <= qc - r // 2 + r - 1)
    return mask


@pytest.mark.parametrize("bh,bw,r", [(5, 7, 3), (4, 4, 11), (6, 3, 4), (1, 1, 11), (9, 9, 9)])
def test_local_mask_matches_definition(bh, bw, r):
    assert torch.equal(local_mask(bh, bw, r), brute_local_mask(bh, bw, r))


def test_local_window_is_not_clamped_at_edges():
    m = local_mask(10, 10, 3)
    assert m[0].sum() == 4  # corner block: truncated 3x3 window (2x2 inside the picture)
    assert m[55].sum() == 9


def brute_select(q, k, heads, bh, bw, r, topk):
    """Loops over heads and query groups, straight from §5.3."""
    b, lq, dim = q.shape
    d = dim // heads
    nq, nk, ws = lq // 128, k.shape[1] // 128, bh * bw
    qm = q.view(b, nq, 128, dim).mean(2)
    km = k.view(b, nk, 128, dim).mean(2)
    allowed = brute_local_mask(bh, bw, r).repeat(nq // ws, nk // ws)
    out = torch.zeros(b, heads, nq, nk, dtype=torch.bool)
    for h in range(heads):
        s = qm[0, :, h * d:(h + 1) * d] @ km[0, :, h * d:(h + 1) * d].T / math.sqrt(d)
        p = s.float().masked_fill(~allowed, float("-inf")).softmax(-1)
        for g in range(nq // ws):
            block = p[g * ws:(g + 1) * ws].flatten()
            kk = min(topk, block.numel() - 1)
            thr = block.sort(descending=True).values[kk]
            out[0, h, g * ws:(g + 1) * ws] = (block > thr).view(ws, nk)
    return out


@pytest.mark.parametrize("q_groups,k_groups,bh,bw,r,topk", [
    (3, 3, 2, 3, 3, 10), (1, 4, 3, 3, 11, 20), (1, 4, 3, 4, 3, 5), (3, 3, 1, 1, 11, 119), (1, 2, 2, 2, 1, 1000),
])
def test_select_blocks_matches_brute_force(q_groups, k_groups, bh, bw, r, topk):
    g = torch.Generator().manual_seed(q_groups * 100 + topk)
    heads, dim, ws = 2, 32, bh * bw
    q = torch.randn(1, q_groups * ws * 128, dim, generator=g)
    k = torch.randn(1, k_groups * ws * 128, dim, generator=g) + torch.randn(1, k_groups * ws, 1, dim, generator=g) \
        .repeat_interleave(128, 1).view(1, -1, dim)
    ours = select_blocks(q, k, heads, (bh, bw), r, topk)
    assert torch.equal(ours, brute_select(q, k, heads, bh, bw, r, topk))


def test_budget_is_shared_within_a_query_group():
    # 4 spatial blocks share one budget: a block with strong keys may take more than its "share"
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4 * 128, 16, generator=g)
    q[:, :128] *= 20  # the first query block has a very peaked draft distribution
    k = torch.randn(1, 8 * 128, 16, generator=g)
    mask = select_blocks(q, k, 1, (2, 2), 11, topk=6)
    assert mask.sum() == 6
    per_block = mask[0, 0].sum(-1)
    assert per_block.max() != per_block.min()


def test_masked_blocks_are_never_selected_and_ties_are_dropped():
    q = torch.zeros(1, 128, 8)
    k = torch.zeros(1, 3 * 128, 8)
    mask = select_blocks(q, k, 1, (1, 1), 11, topk=1)  # three equal probabilities: all tied at the threshold
    assert mask.sum() == 0
    mask = select_blocks(torch.randn(1, 9 * 128, 8), torch.randn(1, 9 * 128, 8), 1, (3, 3), 1, topk=10_000)
    assert torch.equal(mask[0, 0] & ~local_mask(3, 3, 1), torch.zeros(9, 9, dtype=torch.bool))


def test_budget_formula():
    assert topk_budget(1, 128, 128, 2.0) == 119  # the conformance run
    assert topk_budget(66, 768, 1408, 2.0) in (7918, 7919)  # §5.3 worked example
    # rescaled per tile: the per-query-block budget stays ~60 * sparse_ratio
    for ws, hpx, wpx in ((4, 256, 256), (16, 512, 512), (48, 768, 1024)):
        assert abs((topk_budget(ws, hpx, wpx, 1.5) + 1) / ws - 90) < 1


def test_windows_round_trip_and_layout():
    grid = (4, 16, 24)
    x = torch.arange(math.prod(grid)).float().view(1, -1, 1)
    w = to_windows(x, grid)
    assert torch.equal(from_windows(w, grid), x)
    # window 1 = frame group 0, row block 0, column block 1: tokens (t, y, x) with x in 8..15
    first = w[0, 128:256, 0].long()
    f, r, c = first // (16 * 24), first // 24 % 16, first % 24
    assert set(f.tolist()) == {0, 1} and set(r.tolist()) == set(range(8)) and set(c.tolist()) == set(range(8, 16))
    with pytest.raises(ValueError, match="multiple"):
        to_windows(torch.zeros(1, 3 * 16 * 16, 1), (3, 16, 16))
