"""Temporal consistency: warping error (E*warp), tLP, and a weight-free frame-difference error.

All three are streaming meters: feed frames with ``update`` (uint8 ``[H, W, 3]`` or float ``[3, H, W]`` in [0, 1],
the layouts :func:`flashvsr_q.eval.metrics.to_tensor` accepts) and read one value per consecutive pair with
``values``; only the previous frame is kept. The functions at the bottom run a meter over a whole clip.

- ``ewarp`` (Lai et al., ECCV 2018): for each pair (t, t+1), RAFT-large flow both ways on frames halved
  bilinearly; frame t+1 is warped back onto t; pixels failing the forward-backward check, on motion boundaries or
  warped from outside the frame are masked out; the masked MSE on [0, 1] RGB, x1000. Uses the SR clip only.
  Values compare only within this implementation (flow model, resolution and mask differ between papers).
- ``tlp`` (TecoGAN): ``|LPIPS(gt[t-1], gt[t]) - LPIPS(sr[t-1], sr[t])| x 100``; LPIPS weights needed.
- ``tdiff``: ``mean |(sr[t] - sr[t-1]) - (gt[t] - gt[t-1])|`` in 8-bit levels; flicker the GT does not have.
  No weights, so it always runs (CI uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.eval.metrics import RAFT_LARGE, Frames, build_metric, paired, resolve_device, to_tensor
from flashvsr_q.eval.weights import MetricUnavailable, require

TEMPORAL_METRICS = ("ewarp", "tlp", "tdiff")


class PairMeter:
    """A streaming meter over consecutive frames: keeps the previous frame only and one value per pair."""

    def __init__(self) -> None:
        self._prev = None
        self._values: list[float] = []

    def _push(self, current, score: Callable[[object, object], float]) -> None:
        """Record ``score(previous, current)`` (from the second frame on) and make ``current`` the previous one."""
        if self._prev is not None:
            self._values.append(score(self._prev, current))
        self._prev = current

    def values(self) -> list[float]:
        """One value per consecutive pair seen so far."""
        return list(self._values)

    def reset(self) -> None:
        """Forget the previous frame and the values: ready for the next clip (models stay loaded)."""
        self._prev = None
        self._values = []


class FrameDifferenceError(PairMeter):
    """``tdiff``: mean absolute difference between SR's and GT's frame-to-frame changes, in 8-bit levels."""

    name = "tdiff"
    needs_reference = True

    def update(self, sr: torch.Tensor, gt: torch.Tensor | None = None) -> None:
        if gt is None:
            raise FlashVSRError("tdiff needs GT frames")
        self._push((to_tensor(sr), to_tensor(gt)),
                   lambda prev, cur: float(((cur[0] - prev[0]) - (cur[1] - prev[1])).abs().mean()) * 255)


class TLP(PairMeter):
    """``tlp``: how much SR's perceptual frame-to-frame change differs from GT's (LPIPS, x100)."""

    name = "tlp"
    needs_reference = True

    def __init__(self, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.lpips = build_metric("lpips", device)  # raises MetricUnavailable naming the LPIPS files

    def update(self, sr: torch.Tensor, gt: torch.Tensor | None = None) -> None:
        if gt is None:
            raise FlashVSRError("tlp needs GT frames")
        self._push((to_tensor(sr), to_tensor(gt)),
                   lambda prev, cur: abs(self.lpips(prev[1], cur[1]) - self.lpips(prev[0], cur[0])) * 100)


def load_raft(device: str | torch.device | None = None) -> torch.nn.Module:
    """torchvision's RAFT-large with the ``C_T_V2`` (FlyingChairs + FlyingThings) weights from the weights folder.

    Raises:
        MetricUnavailable: ``<weights>/checkpoints/raft_large_C_T_V2-1bb1363a.pth`` is missing or unreadable.
    """
    from torchvision.models.optical_flow import raft_large

    (path,) = require("E*warp (RAFT)", (RAFT_LARGE,))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = raft_large(weights=None, progress=False)
        model.load_state_dict(state)
    except Exception as exc:  # wrong or truncated file: say which
        raise MetricUnavailable(f"E*warp: cannot load RAFT weights {path}: {exc}") from exc
    return model.eval().to(resolve_device(device))


def _pad_for_raft(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    # RAFT needs sides divisible by 8 and at least 128 (its correlation pyramid has four levels)
    height, width = x.shape[-2:]
    pad_h = max(128, -(-height // 8) * 8) - height
    pad_w = max(128, -(-width // 8) * 8) - width
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"), height, width


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``image`` ``[N, C, H, W]`` at ``x + flow(x)``; also return the in-frame mask ``[N, 1, H, W]``."""
    n, _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=image.device, dtype=image.dtype),
                            torch.arange(width, device=image.device, dtype=image.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    grid = torch.stack((2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1), dim=-1)  # [N, H, W, 2]
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    inside = ((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)).unsqueeze(1)
    return warped, inside


def occlusion_mask(flow_fw: torch.Tensor, flow_bw: torch.Tensor) -> torch.Tensor:
    """Non-occluded pixels of frame t ``[N, 1, H, W]`` (bool) from forward (t->t+1) and backward (t+1->t) flow.

    Forward-backward consistency and the motion-boundary test of Sundaram et al. (ECCV 2010), as used by Lai et
    al.'s warping-error code: ``|fw + bw(x+fw)|^2 < 0.01 (|fw|^2 + |bw(x+fw)|^2) + 0.5`` and
    ``|grad fw|^2 < 0.01 |fw|^2 + 0.002``.
    """
    bw_at_target, inside = backward_warp(flow_bw, flow_fw)
    mismatch = (flow_fw + bw_at_target).pow(2).sum(1, keepdim=True)
    magnitude = flow_fw.pow(2).sum(1, keepdim=True) + bw_at_target.pow(2).sum(1, keepdim=True)
    consistent = mismatch < 0.01 * magnitude + 0.5
    du_dx = F.pad(flow_fw[:, :, :, 1:] - flow_fw[:, :, :, :-1], (0, 1, 0, 0))
    du_dy = F.pad(flow_fw[:, :, 1:, :] - flow_fw[:, :, :-1, :], (0, 0, 0, 1))
    gradient = du_dx.pow(2).sum(1, keepdim=True) + du_dy.pow(2).sum(1, keepdim=True)
    smooth = gradient < 0.01 * flow_fw.pow(2).sum(1, keepdim=True) + 0.002
    return consistent & smooth & inside


class WarpingError(PairMeter):
    """``ewarp``: masked MSE between frame t and frame t+1 warped back by RAFT flow, x1000 (SR clip only).

    ``flow`` may be given (any callable ``(a, b) -> [N, 2, H, W]`` flow from a to b in pixels, inputs ``[N, 3, H, W]``
    in [0, 1]); by default RAFT-large runs with 20 refinement steps on frames halved bilinearly.
    """

    name = "ewarp"
    needs_reference = False

    def __init__(self, device: str | torch.device | None = None, flow=None, half_resolution: bool = True,
                 iterations: int = 20) -> None:
        super().__init__()
        self.device = resolve_device(device)
        self.raft = None if flow is not None else load_raft(self.device)
        self.flow = flow or self._raft_flow
        self.half_resolution = half_resolution
        self.iterations = iterations

    @torch.no_grad()
    def _raft_flow(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        both, height, width = _pad_for_raft(torch.cat((a, b)) * 2 - 1)  # RAFT takes [-1, 1]
        flow = self.raft(both[:1], both[1:], num_flow_updates=self.iterations)[-1]
        return flow[..., :height, :width]

    @torch.no_grad()
    def update(self, sr: torch.Tensor, gt: torch.Tensor | None = None) -> None:
        frame = to_tensor(sr).to(self.device)
        if self.half_resolution:
            frame = F.interpolate(frame, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=False)
        self._push(frame, self._pair_error)

    def _pair_error(self, prev: torch.Tensor, frame: torch.Tensor) -> float:
        flow_fw = self.flow(prev, frame)
        flow_bw = self.flow(frame, prev)
        warped, _ = backward_warp(frame, flow_fw)
        mask = occlusion_mask(flow_fw, flow_bw).to(frame.dtype)
        # mean over the three channels of the masked pixels; an all-occluded pair falls back to the full frame
        count = mask.sum() * frame.shape[1]
        diff = (warped - prev).pow(2) * mask
        error = diff.sum() / count if count > 0 else (warped - prev).pow(2).mean()
        return float(error) * 1000


def build_temporal(name: str, device: str | torch.device | None = None):
    """A fresh meter for temporal metric ``name`` (``ewarp``, ``tlp`` or ``tdiff``).

    Raises:
        MetricUnavailable: ``ewarp`` without RAFT weights, ``tlp`` without LPIPS weights (the message names the
            file and the folder it goes in, under ``weights_dir()``).
    """
    if name == "tdiff":
        return FrameDifferenceError()
    if name == "tlp":
        return TLP(device)
    if name == "ewarp":
        return WarpingError(device)
    raise FlashVSRError(f"unknown temporal metric {name!r}; choose from {', '.join(TEMPORAL_METRICS)}")


def compute_temporal_metrics(sr: Frames, gt: Frames | None = None, metrics: Sequence[str] = ("tdiff",),
                             device: str | torch.device | None = None) -> dict[str, list[float]]:
    """Per-pair values (T-1 of them) of temporal metrics over a clip, streaming (inputs as in compute_frame_metrics).

    Raises:
        MetricUnavailable: see :func:`build_temporal`; nothing is computed then.
        FlashVSRError: GT missing for ``tlp`` / ``tdiff``, size or length mismatch.
    """
    meters = [build_temporal(name, device) for name in metrics]
    if gt is None and any(m.needs_reference for m in meters):
        raise FlashVSRError(f"{', '.join(m.name for m in meters if m.needs_reference)} need GT frames")
    for _, sr_frame, gt_frame in paired(sr, gt):
        for meter in meters:
            meter.update(sr_frame[0], None if gt_frame is None else gt_frame[0])
    return {meter.name: meter.values() for meter in meters}

