"""Frame geometry and the spatial tile planner: tiles on the 128-px output grid, blended by a partition of unity.

The model needs output sides that are multiples of 128 px (one LCSA window = 8x8 tokens of 16 px), so the
upsampled frame is padded on the right and bottom (replicate) to ``padded_height x padded_width`` and cropped
back afterwards. Tiles cut that padded frame; every tile's origin and size are multiples of 128 px, so tiles see
exactly the token grid, LCSA blocks and noise (``SeededNoise`` crop) that an untiled run sees at that place.

Blending: along each axis, consecutive tiles overlap; the seam between them gets a raised-cosine ramp over the
overlap (clipped so that at most two tiles share any pixel). At the picture borders there is no ramp, so there
are no dark edges. Ramp values are multiples of 2**-12, hence a tile's 2-D weight (the product of its two 1-D
weights) is a multiple of 2**-24 that float32 holds exactly, and the weights of all tiles sum to exactly 1.0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

GRID = 128  # output pixels per LCSA window side; tile origins, sizes and overlaps are multiples of it
RAMP_BITS = 12  # ramp values are k / 2**RAMP_BITS: exact sums (see the module docstring)
DEFAULT_TILE_LR = 256  # LR px: the --tile size used when a tiling must be chosen without a memory budget
DEFAULT_OVERLAP_LR = 32  # LR px: 128 output px at x4


@dataclass(frozen=True)
class Geometry:
    """Sizes of one clip: input, output (``scale`` times the input) and the padded size the model runs."""

    in_width: int
    in_height: int
    scale: int

    @property
    def out_width(self) -> int:
        return self.in_width * self.scale

    @property
    def out_height(self) -> int:
        return self.in_height * self.scale

    @property
    def padded_width(self) -> int:
        return max(GRID, -(-self.out_width // GRID) * GRID)

    @property
    def padded_height(self) -> int:
        return max(GRID, -(-self.out_height // GRID) * GRID)


@dataclass(frozen=True)
class Tile:
    """A rectangle of the padded output frame, in output pixels (all multiples of 128)."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


@dataclass(frozen=True)
class TileSpec:
    """What the user asked for: ``off``, ``auto``, or a maximum tile side and an overlap in output pixels."""

    mode: str  # "off" | "auto" | "manual"
    size: int = 0  # output px (multiple of 128), manual only
    overlap: int = 0  # output px (multiple of 128), manual only

    def describe(self) -> str:
        return self.mode if self.mode != "manual" else f"{self.size}/{self.overlap} px"


def parse_tile(text: str, scale: int = 4) -> TileSpec:
    """``off`` | ``auto`` | ``SIZE`` | ``SIZExOVERLAP`` in LR pixels (e.g. ``192x24``), rounded to the 128-px grid.

    The tile side becomes ``round(SIZE * scale / 128) * 128`` output px and the overlap the nearest multiple of 128
    (at least 128 unless 0 was asked for). A tile under 256 output px or an overlap over half the tile is an error
    (raised as ValueError), not silently changed.
    """
    text = text.strip().lower()
    if text in ("off", "auto"):
        return TileSpec(text)
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not match:
        raise ValueError(f"--tile takes auto, off, SIZE or SIZExOVERLAP in input pixels (e.g. 192x24), got {text!r}")
    size_lr = int(match.group(1))
    overlap_lr = int(match.group(2)) if match.group(2) is not None else DEFAULT_OVERLAP_LR
    size = round(size_lr * scale / GRID) * GRID
    overlap = 0 if overlap_lr == 0 else max(GRID, round(overlap_lr * scale / GRID) * GRID)
    if size < 2 * GRID:
        raise ValueError(f"--tile {text}: a tile is at least {2 * GRID} output px, i.e. {-(-3 * GRID // 2 // scale)} "
                         f"input px at x{scale}")
    if overlap > size // 2:
        raise ValueError(f"--tile {text}: the overlap ({overlap} output px) must be at most half the tile "
                         f"({size} output px); e.g. --tile {size_lr}x{size // 2 // GRID * GRID // scale}")
    return TileSpec("manual", size, overlap)


# ---------------------------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------------------------


def axis_tiles(length: int, max_size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, size) tiles covering ``[0, length)`` with exactly ``overlap`` between neighbours: the fewest tiles of
    at most ``max_size``, their sizes differing by at most one 128-px cell (so no pixel is computed needlessly).

    ``length``, ``max_size`` and ``overlap`` are multiples of 128. One tile when ``length <= max_size``.
    """
    cells, max_cells, ov = length // GRID, max(1, max_size // GRID), overlap // GRID
    if cells <= max_cells:
        return [(0, length)]
    if ov >= max_cells:
        raise ValueError(f"overlap {overlap} px must be smaller than the tile ({max_size} px)")
    n = -(-(cells - ov) // (max_cells - ov))
    total = cells + (n - 1) * ov  # cells computed; n * max_cells >= total by the choice of n
    sizes = [total // n + (1 if i < total % n else 0) for i in range(n)]
    tiles, start = [], 0
    for size in sizes:
        tiles.append((start * GRID, size * GRID))
        start += size - ov
    return tiles


@dataclass(frozen=True)
class TilePlan:
    """Tiles over the padded frame, as a grid of row bands x column bands (sizes may differ by one 128-px cell)."""

    height: int  # padded frame, output px
    width: int
    rows: tuple[tuple[int, int], ...]  # (top, height) per tile row
    cols: tuple[tuple[int, int], ...]  # (left, width) per tile column
    overlap: int  # the minimum overlap asked for (output px)

    @property
    def tiles(self) -> list[Tile]:
        return [Tile(top, left, h, w) for top, h in self.rows for left, w in self.cols]

    @property
    def tiled(self) -> bool:
        return len(self.rows) * len(self.cols) > 1

    @property
    def tile_size(self) -> tuple[int, int]:
        """(height, width) of the largest tile."""
        return max(h for _, h in self.rows), max(w for _, w in self.cols)

    @property
    def area_ratio(self) -> float:
        """Pixels computed / pixels of the padded frame (the tiling overhead, 1.0 untiled)."""
        return sum(h for _, h in self.rows) * sum(w for _, w in self.cols) / (self.height * self.width)

    def describe(self) -> str:
        if not self.tiled:
            return f"off ({self.width}x{self.height} in one piece)"
        th, tw = self.tile_size
        kind = "strips" if len(self.cols) == 1 or len(self.rows) == 1 else "tiles"
        return (f"{len(self.rows)}x{len(self.cols)} {kind} of {tw}x{th} px, overlap >= {self.overlap} px "
                f"(+{100 * (self.area_ratio - 1):.0f}% pixels)")

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "rows": [list(r) for r in self.rows],
                "cols": [list(c) for c in self.cols], "overlap": self.overlap}

    @classmethod
    def from_dict(cls, data: dict) -> TilePlan:
        return cls(data["height"], data["width"], tuple(tuple(r) for r in data["rows"]),
                   tuple(tuple(c) for c in data["cols"]), data["overlap"])

    def weights(self, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Per tile, its float32 blending weight [h, w]; over the padded frame they sum to exactly 1."""
        wy = axis_weights(self.height, self.rows)
        wx = axis_weights(self.width, self.cols)
        return [(y[:, None] * x[None, :]).to(device) for y in wy for x in wx]


def plan_tiles(height: int, width: int, max_tile: tuple[int, int] | None = None, overlap: int = GRID) -> TilePlan:
    """Tile the padded frame ``height x width`` with tiles of at most ``max_tile`` = (h, w) px; None: one tile."""
    if height % GRID or width % GRID:
        raise ValueError(f"the padded frame {width}x{height} is not a multiple of {GRID}")
    if max_tile is None:
        return TilePlan(height, width, ((0, height),), ((0, width),), overlap)
    return TilePlan(height, width, tuple(axis_tiles(height, max_tile[0], overlap)),
                    tuple(axis_tiles(width, max_tile[1], overlap)), overlap)


def plan_from_spec(geometry: Geometry, spec: TileSpec) -> TilePlan:
    """The plan for ``off`` or a manual size (``auto`` is decided by the memory planner)."""
    h, w = geometry.padded_height, geometry.padded_width
    if spec.mode == "manual":
        return plan_tiles(h, w, (spec.size, spec.size), spec.overlap)
    return plan_tiles(h, w)


def candidate_plans(geometry: Geometry, overlap: int = GRID) -> list[TilePlan]:
    """Every distinct balanced plan (full frame, strips, tiles) for the auto planner, fewest pixels first."""
    h, w = geometry.padded_height, geometry.padded_width
    plans: dict[tuple, TilePlan] = {}
    for th in range(GRID, h + GRID, GRID):
        for tw in range(GRID, w + GRID, GRID):
            if (th < h and th <= overlap) or (tw < w and tw <= overlap):
                continue
            plan = plan_tiles(h, w, (th, tw), overlap)
            plans.setdefault((plan.rows, plan.cols), plan)
    return sorted(plans.values(), key=lambda p: (p.area_ratio, len(p.rows) * len(p.cols)))


# ---------------------------------------------------------------------------------------------------------------
# blending weights
# ---------------------------------------------------------------------------------------------------------------


def _ramp(width: int) -> torch.Tensor:
    """Raised cosine rising over ``width`` px (pixel centres), quantised to multiples of 2**-12, float64."""
    x = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    scale = 2**RAMP_BITS
    return torch.round((0.5 - 0.5 * torch.cos(math.pi * x)) * scale) / scale


def axis_weights(length: int, bands: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> list[torch.Tensor]:
    """1-D weights of each band (start, size) along an axis of ``length`` px; they sum to exactly 1 everywhere.

    Seam ``i`` (between band i and i+1) ramps over their overlap, centred on it, and is clipped so that it never
    reaches the neighbouring seams; outside the ramps exactly one band has weight 1.
    """
    n = len(bands)
    centres, halves = [], []
    for (s0, n0), (s1, _) in zip(bands, bands[1:]):
        end0 = s0 + n0
        if s1 > end0:
            raise ValueError(f"bands {bands} leave a gap at {end0}..{s1}")
        centres.append((s1 + end0) // 2)
        halves.append((end0 - s1) // 2)
    for i in range(len(centres)):  # keep consecutive ramps apart (at most two bands per pixel)
        if i > 0:
            halves[i] = min(halves[i], (centres[i] - centres[i - 1]) // 2)
        if i + 1 < len(centres):
            halves[i] = min(halves[i], (centres[i + 1] - centres[i]) // 2)
    weights = []
    for b, (start, size) in enumerate(bands):
        w = torch.ones(size, dtype=torch.float64)
        pos = torch.arange(start, start + size)
        if b > 0 and halves[b - 1] > 0:  # rising ramp from the seam on the left
            c, h = centres[b - 1], halves[b - 1]
            w[pos < c - h] = 0
            inside = (pos >= c - h) & (pos < c + h)
            w[inside] = _ramp(2 * h)[pos[inside] - (c - h)]
        elif b > 0:
            w[pos < centres[b - 1]] = 0
        if b + 1 < n and halves[b] > 0:  # falling ramp into the seam on the right
            c, h = centres[b], halves[b]
            w[pos >= c + h] = 0
            inside = (pos >= c - h) & (pos < c + h)
            w[inside] = w[inside] * (1 - _ramp(2 * h)[pos[inside] - (c - h)])
        elif b + 1 < n:
            w[pos >= centres[b]] = 0
        weights.append(w.float())
    total = torch.zeros(length, dtype=torch.float64)
    for (start, size), w in zip(bands, weights):
        total[start : start + size] += w.double()
    if not torch.equal(total, torch.ones_like(total)):
        raise AssertionError(f"tile weights do not sum to one along an axis of {length} px: {bands}")
    return weights
