"""Closed-form refit of the decoder's last convolution (a least-squares "linear probe" on training clips).

The last layer of the TCDecoder is a 3x3 conv from ``c3`` feature channels to RGB, i.e. a linear map of
``9 * c3 + 1`` numbers per output pixel. Given the features the (frozen) network computes on training clips, the
MSE-optimal weights are a ridge regression, solved exactly from the accumulated normal equations. On a CPU budget
this gets what many more gradient steps would; it runs after the gradient steps, on the same kind of batches
(different steps of the same seeded sampler, so still never the held-out clips).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashvsr_q.data.clips import ClipSpec, sample_batch
from flashvsr_q.model import FlashVSR
from flashvsr_q.train.forward import conditioning_with_grad, forward_first_chunk


@torch.no_grad()
def fit_output_layer(model: FlashVSR, spec: ClipSpec, seed: int, clips: int, first_step: int = 1_000_000,
                     ridge: float = 1e-3) -> dict[str, float]:
    """Replace ``model.decoder.decoder[-1]`` (conv c3 -> 3, 3x3) by the ridge-regression optimum on ``clips`` batches.

    Batches are ``sample_batch(spec, seed, first_step + i)``. Returns the mean squared error (in the decoder's
    [0, 1] units) on those batches before the fit, and the number of pixels fitted.
    """
    last = model.decoder.decoder[-1]
    captured: list[torch.Tensor] = []
    hook = last.register_forward_pre_hook(lambda module, args: captured.append(args[0].float()))
    n = last.in_channels * 9 + 1
    xtx = torch.zeros(n, n, dtype=torch.float64)
    xty = torch.zeros(n, 3, dtype=torch.float64)
    before, count = 0.0, 0
    cond = conditioning_with_grad(model)
    try:
        for i in range(clips):
            batch = sample_batch(spec, seed, first_step + i)
            captured.clear()
            frames = forward_first_chunk(model, batch["lr"], batch["noise"], cond)  # [B, 3, T, H, W]
            target = ((batch["hr"] + 1) / 2).transpose(1, 2).flatten(0, 1)  # [B*T, 3, H, W] in [0, 1]
            before += float((((frames + 1) / 2).transpose(1, 2).flatten(0, 1) - target).pow(2).sum())
            feats = captured[0][-target.shape[0]:]  # the decoder's last call: [B*T(+trimmed), c3, H, W]
            cols = F.unfold(feats, 3, padding=1).transpose(1, 2).reshape(-1, n - 1)  # [pixels, 9*c3]
            x = torch.cat([cols, torch.ones(cols.shape[0], 1)], dim=1).double()
            y = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
            xtx += x.T @ x
            xty += x.T @ y
            count += y.numel()
    finally:
        hook.remove()
    reg = ridge * torch.eye(n, dtype=torch.float64) * xtx.diagonal().mean()
    reg[-1, -1] = 0  # no penalty on the bias
    solution = torch.linalg.solve(xtx + reg, xty)  # [n, 3]
    weight = solution[:-1].T.reshape(3, last.in_channels, 3, 3)  # unfold order: (channel, ky, kx)
    last.weight.copy_(weight.to(last.weight.dtype))
    last.bias.copy_(solution[-1].to(last.bias.dtype))
    return {"mse_before": before / count, "pixels": count / 3}
