"""Peak device memory of a run, estimated before it starts, and the tiling chosen for a memory budget.

Terms (bytes; ``b`` = bytes per element of the compute dtype, ``P = th * tw`` output pixels of a tile,
``n = P / 256`` tokens per latent frame, ``L`` layers, ``D`` width, ``F`` FFN width, ``G = kv_len``):

- weights: the bytes of every parameter and buffer as stored (quantized tensor subclasses are measured through
  their inner tensors), so int8 / fp8 / 4-bit checkpoints count what they really hold.
- KV cache per tile: ``L * 2 * (G + 1) * 2 * n * D * b``. ``G`` groups of 2 latent frames are kept, but the kept
  keys are a view of the concatenation with the current chunk, so ``G + 1`` groups stay allocated on the device.
- other stream state per tile: TCDecoder MemBlock memories ``3 * (c0/64 + c1/16 + c2/4) * P * b``, the LQ
  projection caches ``2 * (768 + c1) * n * b`` and 4 LR frames ``12 * P * b``.
- DiT activations of a chunk with ``Q`` tokens (``Q = 6n`` for chunk 0, ``2n`` later): the FFN holds its input,
  hidden and GELU output, ``Q * (2F + 4D) * b``, or ``Q * 10D * b`` around attention if that is larger; plus the LQ
  tokens ``2 * Q * D * b`` and the attention backend's scratch (sparse: the gathered K/V and output of the selected
  blocks, at most ``3 * 2**26 * b``; dense: the full ``[H, Q, K]`` score matrices in fp32).
- TCDecoder transients of chunk 0 (6 latents, 21 frames): the pixel-unshuffled conditioning ``3 * 6 * 784/64 * P
  * b``, the full-resolution tail (upsampled, TGrow output and two convolutions) ``(3 c2 + 2 c3) * P * b`` and the
  decoded frames (list, stack, rescale) ``3 * 21 * 3 * P * b``.
- I/O of the tile: its 25 LR frames ``75 * P * b``; and, when blending on the device, the float32 canvas of the
  padded frame ``21 * 3 * 4 * H * W`` plus the colour-fix temporaries (``4x`` the canvas for wavelet, ``2x`` adain).
- Full pipeline (a Wan2.1 VAE decoder of widths ``d0..d4`` instead of the TCDecoder): its causal cache per tile
  (``model.wan_vae.cache_elements``: 2 input frames of every causal conv, ~2,400 elements per output pixel at
  the official width) replaces the MemBlock memories, and the decoder phase is one latent step's transients at
  full resolution, 4 frames of ``max(d3 * (4 + b), 9 * d4 * b)`` bytes per pixel (the fp32 nearest upsampling of
  the last upsampling, or a residual block's input, skip, norm, SiLU, padded 6-frame window and output), plus the
  chunk's decoded frames and LR frames as for the TCDecoder. The weights term includes the VAE's (it is part of
  the model). Measured on CPU in fp32 at the official width: 13.4 KB per pixel for the step, 12.3 KB estimated.

Peak = weights + resident states (all tiles, or none when states are offloaded to host RAM between tiles) +
the largest tile's active state (when offloaded) + max(DiT phase, decoder phase) + canvas. The estimate is meant to
be a slight over-estimate; ``docs/upscaling.md`` compares it with measured peaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.tiling import Geometry, TilePlan, candidate_plans
from flashvsr_q.model.configs import DECODER_COND_CHANNELS, FlashVSRConfig
from flashvsr_q.model.streaming import FIRST_CHUNK_FRAMES, FIRST_CHUNK_OUTPUT
from flashvsr_q.model.wan_vae import WanVAEConfig, cache_elements

GIB = 1024**3
GATHER_ELEMENTS = 1 << 26  # flashvsr_q.attention.sparse.MAX_GATHER_ELEMENTS
BUDGET_MARGIN = 0.92  # of the free device memory: the allocator's fragmentation and the CUDA context


def parse_bytes(text: str | int | float) -> int:
    """``8GB``, ``7.5GiB``, ``512MB``, ``8G`` or a plain number of bytes -> bytes (GB and GiB both mean 2**30)."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"cannot read {text!r} as a memory size (e.g. 8GB, 7.5GiB, 512MB)")
    return int(float(match.group(1)) * 1024 ** "_kmgt".index(match.group(2) or "_"))


def format_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds; tensor subclasses (torchao, bitsandbytes) are measured by their parts."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    total = t.numel() * t.element_size()
    quant_state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit: absmax etc. live beside the data
    if quant_state is not None and hasattr(quant_state, "as_dict"):
        total += sum(v.numel() * v.element_size() for v in quant_state.as_dict(packed=True).values()
                     if isinstance(v, torch.Tensor))
    return total


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak device memory of a plan, by term (bytes)."""

    weights: int
    states: int  # stream states resident on the device (all tiles, or the active tile's when offloaded)
    dit: int  # DiT phase transients (largest tile)
    decoder: int  # decoder phase transients (largest tile)
    canvas: int  # blending canvas + colour fix on the device (0 when blending on the host)
    pipeline: str = "tiny"  # "full": ``decoder`` is the Wan VAE decoder's phase, ``states`` hold its caches

    @property
    def peak(self) -> int:
        return self.weights + self.states + max(self.dit, self.decoder) + self.canvas

    def to_dict(self) -> dict:
        return {"weights": self.weights, "states": self.states, "dit": self.dit, "decoder": self.decoder,
                "canvas": self.canvas, "peak": self.peak, "pipeline": self.pipeline}

    def describe(self) -> str:
        decoder = "Wan VAE decoder" if self.pipeline == "full" else "decoder"
        return (f"{format_bytes(self.peak)} = weights {format_bytes(self.weights)} + stream states "
                f"{format_bytes(self.states)} + max(DiT {format_bytes(self.dit)}, {decoder} "
                f"{format_bytes(self.decoder)}) + canvas {format_bytes(self.canvas)}")


def state_bytes(config: FlashVSRConfig, b: int, height: int, width: int, kv_groups: int,
                vae: WanVAEConfig | None = None) -> int:
    """One tile's stream state with ``kv_groups`` allocated KV groups (``vae``: the Full pipeline's decoder)."""
    p, n = height * width, height * width // 256
    c0, c1, c2, _ = config.decoder_channels
    kv = config.num_layers * 2 * kv_groups * 2 * n * config.dim * b
    decoder = cache_elements(vae, height, width) * b if vae is not None else \
        3 * (c0 * p // 64 + c1 * p // 16 + c2 * p // 4) * b
    lq = 2 * (DECODER_COND_CHANNELS + config.lq_channels[0]) * n * b
    return kv + decoder + lq + 12 * p * b


def dit_bytes(config: FlashVSRConfig, b: int, height: int, width: int, kv_len: int, backend: str,
              lcsa_range: int = 11) -> int:
    """DiT-phase transients of chunk 0 (the largest chunk) for one tile."""
    n = height * width // 256
    q = 6 * n
    act = q * max(2 * config.ffn_dim + 4 * config.dim, 10 * config.dim) * b + 2 * q * config.dim * b
    if backend == "dense":
        keys = q
        scratch = 3 * 4 * config.num_heads * q * keys + config.num_heads * q * keys
    elif backend == "sparse":  # gathers the selected key blocks, at most GATHER_ELEMENTS per call
        blocks = q // 128
        selected = min(blocks, 3 * lcsa_range**2)
        scratch = 3 * min(GATHER_ELEMENTS, blocks * selected * 128 * config.dim) * b
    else:
        scratch = 2 * q * config.dim * b
    c1, c2 = config.lq_channels
    lq = (DECODER_COND_CHANNELS * 6 + 2 * c1 * 6 + 2 * c2 * 2) * n * b
    return act + max(scratch, lq) + FIRST_CHUNK_FRAMES * 3 * height * width * b


def decoder_bytes(config: FlashVSRConfig, b: int, height: int, width: int) -> int:
    """Decoder-phase transients of chunk 0 for one tile (conditioning, full-resolution tail, output frames)."""
    p = height * width
    _, _, c2, c3 = config.decoder_channels
    cond = 3 * 6 * (DECODER_COND_CHANNELS + config.latent_channels) * p // 64 * b
    tail = (3 * c2 + 2 * c3) * p * b
    frames = 3 * FIRST_CHUNK_OUTPUT * 3 * p * b + FIRST_CHUNK_OUTPUT * 3 * p * 4  # + the weighted fp32 copy
    return cond + tail + frames + FIRST_CHUNK_FRAMES * 3 * p * b


def vae_bytes(vae: WanVAEConfig, b: int, height: int, width: int) -> int:
    """Wan VAE decoder-phase transients of chunk 0 for one tile: one latent step at full resolution (the largest),
    the chunk's decoded frames and its LR frames."""
    p = height * width
    *_, d3, d4 = vae.decoder_dims
    step = 4 * p * max(d3 * (4 + b), 9 * d4 * b)
    frames = 3 * FIRST_CHUNK_OUTPUT * 3 * p * b + FIRST_CHUNK_OUTPUT * 3 * p * 4  # + the weighted fp32 copy
    return step + frames + FIRST_CHUNK_FRAMES * 3 * p * b


def canvas_bytes(geometry: Geometry, color_fix: str) -> int:
    frame = FIRST_CHUNK_OUTPUT * 3 * 4
    canvas = frame * geometry.padded_height * geometry.padded_width
    fix = {"wavelet": 4, "adain": 2}.get(color_fix, 0) * frame * geometry.out_height * geometry.out_width
    return canvas + fix


def estimate(config: FlashVSRConfig, weights: int, dtype: torch.dtype, geometry: Geometry, plan: TilePlan, *,
             kv_len: int = 3, backend: str = "sparse", offload: bool = False, canvas_on_device: bool = True,
             color_fix: str = "adain", local_range: int = 11, vae: WanVAEConfig | None = None) -> MemoryEstimate:
    """Estimate the peak device memory of running ``plan`` (see the module docstring for the formula); ``vae``:
    the Full pipeline's decoder config (None: Tiny, the TCDecoder)."""
    b = torch.empty((), dtype=dtype).element_size()
    th, tw = plan.tile_size
    full_state = [state_bytes(config, b, t.height, t.width, kv_len + 1, vae) for t in plan.tiles]
    states = max(full_state) if offload else sum(full_state)
    decoder = vae_bytes(vae, b, th, tw) if vae is not None else decoder_bytes(config, b, th, tw)
    return MemoryEstimate(
        weights=weights, states=states, dit=dit_bytes(config, b, th, tw, kv_len, backend, local_range),
        decoder=decoder, canvas=canvas_bytes(geometry, color_fix) if canvas_on_device else 0,
        pipeline="tiny" if vae is None else "full")


@dataclass(frozen=True)
class MemoryPlan:
    """The tiling and placement chosen for a run, with its estimate and the budget it was chosen for."""

    plan: TilePlan
    offload: bool  # tile stream states live in host RAM between their chunks
    canvas_on_device: bool  # blend and colour-fix on the compute device (else on the host)
    estimate: MemoryEstimate
    budget: int | None

    def describe(self) -> str:
        where = [] if not self.offload else ["tile states offloaded to host RAM between chunks"]
        if not self.canvas_on_device:
            where.append("blending on the host")
        budget = f" (budget {format_bytes(self.budget)})" if self.budget else " (no budget)"
        if self.budget and self.estimate.peak > self.budget:
            budget += " -- OVER the budget: expect an out-of-memory error (then smaller tiles are tried)"
        return (f"tiling: {self.plan.describe()}{'; ' + ', '.join(where) if where else ''}\n"
                f"estimated peak device memory: {self.estimate.describe()}{budget}")


def device_budget(device: torch.device) -> int | None:
    """Free memory of a CUDA device (plus what this process already holds there) with a margin; None on CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int((free + torch.cuda.memory_reserved(device)) * BUDGET_MARGIN)


def _placements(plan: TilePlan):
    yield False, True
    yield False, False
    if plan.tiled:
        yield True, True
        yield True, False


def choose_plan(config: FlashVSRConfig, weights: int, dtype: torch.dtype, geometry: Geometry, budget: int | None,
                *, overlap: int = 128, kv_len: int = 3, backend: str = "sparse", color_fix: str = "adain",
                local_range: int = 11, max_tile_pixels: int | None = None, vae: WanVAEConfig | None = None
                ) -> MemoryPlan:
    """The cheapest plan (fewest extra pixels, then fewest tiles; states on the device preferred) within ``budget``.

    ``budget`` None means no limit (one tile). ``max_tile_pixels`` excludes larger tiles (the OOM fallback).
    ``vae``: the Full pipeline's Wan VAE config (its cache and transients are counted per tile).
    Raises ``FlashVSRError`` when even the smallest tiles do not fit, saying how much they need.
    """
    kw = dict(kv_len=kv_len, backend=backend, color_fix=color_fix, local_range=local_range, vae=vae)
    plans = [p for p in candidate_plans(geometry, overlap)
             if max_tile_pixels is None or p.tile_size[0] * p.tile_size[1] <= max_tile_pixels]
    if not plans:
        raise FlashVSRError("no smaller tiling is left to try (tiles are already 256x256 px)")
    if budget is None:
        plan = plans[0]
        return MemoryPlan(plan, False, True, estimate(config, weights, dtype, geometry, plan, **kw), None)
    best = None
    for offload_pass in (False, True):
        for plan in plans:
            for offload, on_device in _placements(plan):
                if offload != offload_pass:
                    continue
                est = estimate(config, weights, dtype, geometry, plan, offload=offload, canvas_on_device=on_device,
                               **kw)
                if est.peak <= budget:
                    return MemoryPlan(plan, offload, on_device, est, budget)
                if best is None or est.peak < best.peak:
                    best = est
    raise FlashVSRError(f"the smallest tiling needs about {format_bytes(best.peak)} of device memory but the budget "
                        f"is {format_bytes(budget)}; use a smaller --scale or input, a compressed checkpoint, "
                        "--dtype bf16, or --device cpu")


def fixed_plan(config: FlashVSRConfig, weights: int, dtype: torch.dtype, geometry: Geometry, plan: TilePlan,
               budget: int | None, **kw) -> MemoryPlan:
    """A user-chosen plan: states offloaded only if the budget requires it (never refused: the user asked)."""
    for offload, on_device in _placements(plan):
        est = estimate(config, weights, dtype, geometry, plan, offload=offload, canvas_on_device=on_device, **kw)
        if budget is None or est.peak <= budget:
            return MemoryPlan(plan, offload, on_device, est, budget)
    return MemoryPlan(plan, plan.tiled, False, est, budget)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA's, or a RuntimeError that says so)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def peak_device_memory(device: torch.device) -> dict[str, int] | None:
    """Peak allocated / reserved bytes on a CUDA device since the last reset; None elsewhere."""
    if device.type != "cuda":
        return None
    return {"allocated": torch.cuda.max_memory_allocated(device), "reserved": torch.cuda.max_memory_reserved(device)}
