"""The streaming, tiled upscaler: uint8 frames in, uint8 frames out, one chunk in memory at a time.

Per chunk (25 LR frames for chunk 0, then 8):

    uint8 [h, w, 3] --PIL bicubic--> [sH, sW] --x/255*2-1, dtype--> --replicate pad--> [1, 3, T, PH, PW] (host)
    for each tile: crop -> device -> FlashVSRStream.step (its own KV cache, LQ and decoder state)
                   -> frames * blending weight, added into a float32 canvas [1, 3, T', PH, PW]
    canvas[..., :sH, :sW] -> colour fix against the upsampled LR frames (real picture area only) -> uint8

Output frame i is aligned with input frame i. The clip is padded at the end by repeating its last frame
(``padded_length``) and the output is cropped back, so N frames in give N frames out for any N >= 1, and the
frame count need not be known in advance. Host memory holds the current chunk's LR frames, the 4 frames of
look-ahead context, one canvas and the tiles' stream states; it does not grow with the video length.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flashvsr_q.attention import LCSASettings
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.colorfix import COLOR_FIXES, color_fix, to_uint8
from flashvsr_q.infer.memory import MemoryPlan, choose_plan, device_budget, fixed_plan, is_oom, module_bytes
from flashvsr_q.infer.resume import state_to
from flashvsr_q.infer.tiling import Geometry, TilePlan, parse_tile, plan_from_spec
from flashvsr_q.model import FlashVSR, FlashVSRStream, SeededNoise
from flashvsr_q.model.streaming import CHUNK_FRAMES, FIRST_CHUNK_FRAMES, LOOKAHEAD, StreamState

MAX_SCALE = 8

ProgressFn = Callable[[int, "int | None"], None]  # (frames done, total frames or None)


class Cancelled(FlashVSRError):
    """The run was cancelled through its cancel event/callback."""


@dataclass(frozen=True)
class UpscaleSettings:
    """What shapes the output besides the model and the tiling.

    Args:
        scale: integer output/input size ratio, 1..8 (FlashVSR is trained for 4).
        color_fix: ``adain`` (official), ``wavelet`` or ``none``.
        seed: latent noise seed (noise is a deterministic field over the padded frame).
        lcsa: sparse-attention settings.
    """

    scale: int = 4
    color_fix: str = "adain"
    seed: int = 0
    lcsa: LCSASettings = field(default_factory=LCSASettings)

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int) or not 1 <= self.scale <= MAX_SCALE:
            raise FlashVSRError(f"--scale must be an integer from 1 to {MAX_SCALE} (FlashVSR is trained for 4), "
                                f"got {self.scale!r}")
        if self.color_fix not in COLOR_FIXES:
            raise FlashVSRError(f"--color-fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")


def check_cancel(cancel: threading.Event | Callable[[], bool] | None) -> None:
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise Cancelled("cancelled")


# ---------------------------------------------------------------------------------------------------------------
# LR frames: decode -> bicubic -> [-1, 1] -> pad
# ---------------------------------------------------------------------------------------------------------------


def preprocess(rgb: np.ndarray, geometry: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [h, w, 3] -> [3, PH, PW] in ``dtype``: PIL bicubic to (sW, sH), x/255*2-1, replicate pad right/bottom."""
    if rgb.shape != (geometry.in_height, geometry.in_width, 3) or rgb.dtype != np.uint8:
        raise FlashVSRError(f"frame of {rgb.dtype} {list(rgb.shape)} in a clip of "
                            f"{geometry.in_width}x{geometry.in_height} RGB uint8 frames")
    size = (geometry.out_width, geometry.out_height)
    image = Image.fromarray(rgb, "RGB")
    up = np.asarray(image.resize(size, Image.BICUBIC) if geometry.scale != 1 else image)
    x = torch.from_numpy(up.copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    x = x.to(dtype).float()  # round to the model dtype first, as the official pipeline does
    pad_w, pad_h = geometry.padded_width - geometry.out_width, geometry.padded_height - geometry.out_height
    if pad_w or pad_h:
        x = F.pad(x[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    return x.to(dtype)


class LRFrames:
    """Upsampled, padded LR frames by index from an iterator of uint8 frames, read just in time.

    Past the end of the clip the last frame repeats (the temporal padding). ``first_index`` is the index of the
    iterator's first frame (resume); ``num_frames`` becomes known when the iterator is exhausted (or is given).
    """

    def __init__(self, frames: Iterable[np.ndarray], geometry: Geometry, dtype: torch.dtype, first_index: int = 0,
                 num_frames: int | None = None):
        self._it, self.geometry, self.dtype = iter(frames), geometry, dtype
        self._next = first_index  # index of the next frame the iterator gives
        self.num_frames = num_frames
        self._last: torch.Tensor | None = None

    def _pull(self) -> torch.Tensor:
        if self.num_frames is None or self._next < self.num_frames:
            try:
                rgb = next(self._it)
            except StopIteration:
                if self._last is None:
                    raise FlashVSRError("the input has no frames") from None
                self.num_frames = self._next
            else:
                self._last = preprocess(rgb, self.geometry, self.dtype)
                self._next += 1
                return self._last
        self._next += 1
        return self._last

    def take(self, start: int, end: int) -> torch.Tensor:
        """Frames ``[start, end)`` as [1, 3, T, PH, PW]; calls must ask for consecutive ranges."""
        if start != self._next:
            raise ValueError(f"frames must be taken in order: asked for {start}, next is {self._next}")
        frames = [self._pull() for _ in range(start, end)]
        return torch.stack(frames, dim=1)[None]

    def known_end(self, index: int) -> bool:
        """Whether frame ``index`` is known to lie past the end of the clip."""
        return self.num_frames is not None and index >= self.num_frames


# ---------------------------------------------------------------------------------------------------------------
# the tiled engine
# ---------------------------------------------------------------------------------------------------------------


class TiledStreams:
    """One ``FlashVSRStream`` per tile plus the blending weights; ``step`` turns an LR chunk into blended frames."""

    def __init__(self, model: FlashVSR, geometry: Geometry, memory_plan: MemoryPlan, settings: UpscaleSettings,
                 states: list[StreamState] | None = None):
        self.model, self.geometry, self.memory_plan = model, geometry, memory_plan
        self.plan: TilePlan = memory_plan.plan
        self.device = model.device
        self.canvas_device = self.device if memory_plan.canvas_on_device else torch.device("cpu")
        cond = model.conditioning()
        ph, pw, c = geometry.padded_height, geometry.padded_width, model.config.latent_channels
        self.streams = []
        for tile in self.plan.tiles:
            noise = SeededNoise(settings.seed, c, ph // 8, pw // 8, crop=(tile.top // 8, tile.left // 8,
                                                                          tile.height // 8, tile.width // 8))
            self.streams.append(FlashVSRStream(model, noise, settings.lcsa, conditioning=cond))
        if states is not None:
            if len(states) != len(self.streams):
                raise FlashVSRError(f"saved state holds {len(states)} tiles, the plan has {len(self.streams)}")
            for stream, state in zip(self.streams, states):
                stream.state = state
        self.weights = self.plan.weights(self.canvas_device)
        for stream in self.streams:
            state_to(stream.state, "cpu" if memory_plan.offload else self.device)

    @property
    def states(self) -> list[StreamState]:
        return [s.state for s in self.streams]

    @torch.no_grad()
    def step(self, lr: torch.Tensor, cancel=None) -> tuple[torch.Tensor, int]:
        """LR chunk [1, 3, T, PH, PW] (host) -> (blended frames [1, 3, T', PH, PW] float32, first output index)."""
        canvas, first = None, 0
        for tile, stream, weight in zip(self.plan.tiles, self.streams, self.weights):
            check_cancel(cancel)
            rows, cols = tile.slices
            if self.memory_plan.offload:
                state_to(stream.state, self.device)
            out = stream.step(lr[:, :, :, rows, cols].contiguous().to(self.device))
            if self.memory_plan.offload:
                state_to(stream.state, "cpu")
            frames = out.frames.to(self.canvas_device, torch.float32)
            if canvas is None:
                shape = (1, 3, frames.shape[2], self.geometry.padded_height, self.geometry.padded_width)
                canvas, first = torch.zeros(shape, device=self.canvas_device), out.first_frame
            canvas[:, :, :, rows, cols] += frames * weight
            del out, frames
        return canvas, first


@dataclass
class ChunkResult:
    """One chunk's output: ``frames`` uint8 [T, sH, sW, 3] for output frames ``start .. start+T-1``."""

    index: int
    start: int
    frames: np.ndarray
    lr_position: int  # LR frames consumed so far (the resume position)
    last: bool


class ChunkRunner:
    """Drives the chunk loop over an ``LRFrames`` reader; ``states``/``lr_tail`` can be snapshotted between chunks."""

    def __init__(self, engine: TiledStreams, reader: LRFrames, settings: UpscaleSettings, *, start_chunk: int = 0,
                 lr_tail: torch.Tensor | None = None, cancel=None):
        self.engine, self.reader, self.settings, self.cancel = engine, reader, settings, cancel
        self.chunk = start_chunk
        self.lr_tail = lr_tail  # the 4 LR frames before the next chunk's, [1, 3, 4, PH, PW] (colour-fix reference)

    @staticmethod
    def lr_range(chunk: int) -> tuple[int, int]:
        if chunk == 0:
            return 0, FIRST_CHUNK_FRAMES
        start = FIRST_CHUNK_FRAMES + CHUNK_FRAMES * (chunk - 1)
        return start, start + CHUNK_FRAMES

    def __iter__(self) -> Iterator[ChunkResult]:
        g, reader = self.engine.geometry, self.reader
        while True:
            start, end = self.lr_range(self.chunk)
            if self.chunk > 0 and reader.known_end(start - LOOKAHEAD):
                return  # the previous chunk already covered the last frame
            check_cancel(self.cancel)
            lr = reader.take(start, end)
            blended, first = self.engine.step(lr, self.cancel)
            count = blended.shape[2]
            reference = lr[:, :, : count] if self.chunk == 0 else torch.cat([self.lr_tail, lr[:, :, :LOOKAHEAD]], 2)
            self.lr_tail = lr[:, :, -LOOKAHEAD:].clone()
            n = reader.num_frames
            keep = count if n is None else max(0, min(count, n - first))
            frames = blended[:, :, :keep, : g.out_height, : g.out_width]
            ref = reference[:, :, :keep, : g.out_height, : g.out_width].to(frames.device)
            fixed = color_fix(frames, ref, self.settings.color_fix)
            out = to_uint8(fixed)[0].permute(1, 2, 3, 0).cpu().numpy()  # [T, sH, sW, 3]
            self.chunk += 1
            # with end - LOOKAHEAD >= num_frames, every real frame has been produced
            last = reader.num_frames is not None and end - LOOKAHEAD >= reader.num_frames
            yield ChunkResult(self.chunk - 1, first, out, end, last)
            if last:
                return


# ---------------------------------------------------------------------------------------------------------------
# planning helpers shared by the in-memory and file APIs
# ---------------------------------------------------------------------------------------------------------------


def plan_memory(model: FlashVSR, geometry: Geometry, tile: str, budget: int | None, settings: UpscaleSettings,
                max_tile_pixels: int | None = None) -> MemoryPlan:
    """The MemoryPlan for ``--tile`` (``auto``: the memory planner; ``off``/``SIZExOVERLAP``: as given)."""
    try:
        spec = parse_tile(tile, settings.scale)
    except ValueError as exc:
        raise FlashVSRError(str(exc)) from None
    kw = dict(kv_len=settings.lcsa.kv_len, backend=model.dit.backend.name, color_fix=settings.color_fix,
              local_range=settings.lcsa.local_range, vae=None if model.vae is None else model.vae.config)
    weights = module_bytes(model)
    if spec.mode == "auto" or max_tile_pixels is not None:
        overlap = spec.overlap if spec.mode == "manual" else 128
        return choose_plan(model.config, weights, model.dtype, geometry, budget, overlap=overlap,
                           max_tile_pixels=max_tile_pixels, **kw)
    return fixed_plan(model.config, weights, model.dtype, geometry, plan_from_spec(geometry, spec), budget, **kw)


def smaller_plan(model: FlashVSR, geometry: Geometry, current: MemoryPlan, budget: int | None,
                 settings: UpscaleSettings) -> MemoryPlan:
    """The OOM fallback: the best plan whose tiles hold at most ~60% of the current tiles' pixels (or fewer pixels
    than now, if no tiling is that small); raises FlashVSRError when the tiles cannot get smaller."""
    th, tw = current.plan.tile_size
    try:
        fallback = plan_memory(model, geometry, "auto", budget, settings, max_tile_pixels=int(th * tw * 0.6))
    except FlashVSRError:  # nothing that small: take the largest step down there is
        fallback = plan_memory(model, geometry, "auto", budget, settings, max_tile_pixels=th * tw - 1)
    if not fallback.offload and current.plan.tiled:  # smaller tiles alone freed nothing resident: offload too
        fallback = MemoryPlan(fallback.plan, True, False, fallback.estimate, budget)
    return fallback


def upscale_frames(
    model: FlashVSR, frames: Iterable[np.ndarray], *, scale: int = 4, tile: str = "auto", vram: int | None = None,
    color_fix: str = "adain", seed: int = 0, lcsa: LCSASettings | None = None, num_frames: int | None = None,
    progress: ProgressFn | None = None, cancel: threading.Event | Callable[[], bool] | None = None,
    on_plan: Callable[[MemoryPlan], None] | None = None,
) -> Iterator[np.ndarray]:
    """Upscale in memory: yields one uint8 [sH, sW, 3] frame per input frame, in order.

    Args:
        model: a loaded FlashVSR (its attention backend already chosen).
        frames: uint8 [H, W, 3] RGB frames (any iterable; read one chunk ahead at most).
        scale, color_fix, seed, lcsa: see :class:`UpscaleSettings`.
        tile: ``auto`` | ``off`` | ``SIZExOVERLAP`` (LR px).
        vram: device memory budget in bytes for ``auto`` (None: free CUDA memory, unlimited on CPU).
        num_frames: the frame count if known (for progress only; the end is detected anyway).
        progress: called with (frames done, total or None) after each chunk.
        cancel: an Event or a callable; checked between tiles, raises :class:`Cancelled`.
        on_plan: receives the chosen MemoryPlan before the first chunk.

    On a CUDA out-of-memory error in the first chunk the run restarts with smaller tiles (the frames of that
    chunk are kept); later OOMs are re-raised, because the frames already consumed are gone.
    """

    settings = UpscaleSettings(scale, color_fix, seed, lcsa or LCSASettings())
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise FlashVSRError("the input has no frames") from None
    geometry = Geometry(first.shape[1], first.shape[0], scale)
    budget = vram if vram is not None else device_budget(model.device)
    memory_plan = plan_memory(model, geometry, tile, budget, settings)
    buffered: list[np.ndarray] = [first]

    def source() -> Iterator[np.ndarray]:
        yield from buffered
        for rgb in it:
            if len(buffered) < FIRST_CHUNK_FRAMES:
                buffered.append(rgb)  # kept until chunk 0 is done, so an OOM there can be retried
            yield rgb

    while True:
        if on_plan is not None:
            on_plan(memory_plan)
        engine = TiledStreams(model, geometry, memory_plan, settings)
        runner = ChunkRunner(engine, LRFrames(source(), geometry, model.dtype, num_frames=num_frames), settings,
                             cancel=cancel)
        try:
            for result in runner:
                buffered.clear()
                yield from result.frames
                if progress is not None:
                    progress(result.start + len(result.frames), runner.reader.num_frames or num_frames)
            return
        except Exception as exc:
            if not is_oom(exc) or not buffered:
                raise
            del engine, runner
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            memory_plan = smaller_plan(model, geometry, memory_plan, budget, settings)
