"""Tile planner and blending weights: grid alignment, coverage, overlap, exact partition of unity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashvsr_q.infer.tiling import GRID, Geometry, axis_tiles, axis_weights, candidate_plans, parse_tile, plan_tiles


@settings(max_examples=200, deadline=None)
@given(cells=st.integers(1, 40), tile_cells=st.integers(2, 16), overlap_cells=st.integers(0, 8))
def test_axis_tiles_cover_the_axis_on_the_grid(cells, tile_cells, overlap_cells):
    overlap_cells = min(overlap_cells, tile_cells // 2)
    length, size, overlap = cells * GRID, tile_cells * GRID, overlap_cells * GRID
    bands = axis_tiles(length, size, overlap)
    assert bands[0][0] == 0 and bands[-1][0] + bands[-1][1] == length
    for (s0, n0), (s1, _) in zip(bands, bands[1:]):
        assert s0 < s1 == s0 + n0 - overlap  # ordered, no gap, exactly the asked overlap
    for start, n in bands:
        assert start % GRID == 0 and n % GRID == 0 and n <= max(size, GRID)
    assert max(n for _, n in bands) - min(n for _, n in bands) <= GRID  # balanced
    if length <= size:
        assert bands == [(0, length)]


@settings(max_examples=200, deadline=None)
@given(cells=st.integers(1, 40), tile_cells=st.integers(2, 16), overlap_cells=st.integers(0, 8))
def test_axis_weights_are_an_exact_partition_of_unity(cells, tile_cells, overlap_cells):
    overlap_cells = min(overlap_cells, tile_cells // 2)
    length = cells * GRID
    bands = axis_tiles(length, tile_cells * GRID, overlap_cells * GRID)
    weights = axis_weights(length, bands)
    total = torch.zeros(length, dtype=torch.float32)
    active = torch.zeros(length, dtype=torch.int64)
    for (start, n), w in zip(bands, weights):
        assert w.dtype == torch.float32 and w.shape == (n,)
        assert bool(((w >= 0) & (w <= 1)).all())
        total[start : start + n] += w
        active[start : start + n] += (w > 0).long()
    assert torch.equal(total, torch.ones(length))  # exactly one, not approximately
    assert int(active.max()) <= 2  # a pixel blends at most two tiles per axis
    assert weights[0][0] == 1 and weights[-1][-1] == 1  # no ramp at the picture borders


@pytest.mark.parametrize("shape, tile, overlap", [((1152, 1920), 1024, 128), ((640, 640), 256, 128),
                                                  ((128, 3840), 512, 256), ((896, 128), 384, 0)])
def test_2d_weights_sum_to_exactly_one(shape, tile, overlap):
    plan = plan_tiles(*shape, (tile, tile), overlap)
    total = torch.zeros(shape)
    for t, w in zip(plan.tiles, plan.weights()):
        assert t.top % GRID == 0 and t.left % GRID == 0 and t.height % GRID == 0 and t.width % GRID == 0
        total[t.slices] += w
    assert torch.equal(total, torch.ones(shape))
    if overlap:  # ramps are smooth: inside an overlap, weights move by small steps
        w0 = plan.weights()[0]
        assert float((w0[:, 1:] - w0[:, :-1]).abs().max()) < 0.05


def test_ramps_only_where_tiles_overlap():
    bands = axis_tiles(5 * GRID, 3 * GRID, GRID)  # [0, 384) and [256, 640)
    assert bands == [(0, 384), (256, 384)]
    left, right = axis_weights(5 * GRID, bands)
    assert torch.equal(left[:256], torch.ones(256)) and torch.equal(right[128:], torch.ones(256))
    ramp = right[:128]
    assert bool((ramp[1:] >= ramp[:-1]).all()) and ramp[0] < 0.01 and ramp[-1] > 0.99


def test_geometry_pads_to_the_grid():
    g = Geometry(2, 2, 4)
    assert (g.out_width, g.out_height, g.padded_width, g.padded_height) == (8, 8, 128, 128)
    g = Geometry(33, 17, 4)
    assert (g.out_width, g.out_height, g.padded_width, g.padded_height) == (132, 68, 256, 128)
    g = Geometry(480, 270, 4)
    assert (g.padded_width, g.padded_height) == (1920, 1152)


def test_parse_tile():
    assert parse_tile("off").mode == "off" and parse_tile("auto").mode == "auto"
    spec = parse_tile("192x24")  # LR px -> 768 / 96 output px -> grid: 768 / 128
    assert (spec.mode, spec.size, spec.overlap) == ("manual", 768, 128)
    assert (parse_tile("256").size, parse_tile("256").overlap) == (1024, 128)
    assert parse_tile("64x0").overlap == 0 and parse_tile("48x16").size == 256
    with pytest.raises(ValueError, match="at least 256 output px"):  # said, not silently enlarged
        parse_tile("16x16")
    with pytest.raises(ValueError, match="at most half the tile"):  # said, not silently cut
        parse_tile("64x64", scale=4)
    with pytest.raises(ValueError, match="at least 256"):
        parse_tile("8x100")
    with pytest.raises(ValueError, match="SIZExOVERLAP"):
        parse_tile("big")


def test_candidate_plans_are_sorted_by_overhead():
    plans = candidate_plans(Geometry(480, 270, 4))
    assert not plans[0].tiled  # the whole frame costs nothing extra
    ratios = [p.area_ratio for p in plans]
    assert ratios == sorted(ratios)
    assert len({(p.rows, p.cols) for p in plans}) == len(plans)
    plan = plans[1]
    assert plan.from_dict(plan.to_dict()) == plan
