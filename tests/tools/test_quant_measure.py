"""The quality table of `python tools/quant_measure.py quality`, on a random model and tiny clips."""

from __future__ import annotations

import torch
from helpers import random_model
from quant_measure import STATIC_VARIANTS, quality_markdown, quality_table

from flashvsr_q.model import save_official


def test_quality_table_rows_and_markdown(tmp_path):
    save_official(random_model("test"), tmp_path / "ckpt")
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 25, 16, 16, generator=g), size=(25, 128, 128),
                                             mode="trilinear")
    clips = {"tiny": (smooth[0].transpose(0, 1) * 255).to(torch.uint8)}  # [T, 3, H, W]
    rows, info = quality_table(tmp_path / "ckpt", ["int8-weight-only", "w8a8-int8-smoothquant", "w8a8-fp8"],
                               calibration_clips=1, progress=lambda line: None, clips=clips)
    by_name = {r.name: r for r in rows}
    assert list(by_name) == ["fp32", "bf16", "int8-weight-only", "w8a8-int8-smoothquant", "w8a8-fp8",
                             *STATIC_VARIANTS]
    assert by_name["bf16"].clips["tiny"]["vs_bf16"] == by_name["bf16"].clips["tiny"]["latent_snr"] == float("inf")
    for name in ("fp32", "int8-weight-only", "w8a8-int8-smoothquant", *STATIC_VARIANTS):
        scores = by_name[name].clips["tiny"]
        assert 0 < scores["ssim"] <= 1 and scores["psnr"] > 5 and scores["vs_bf16"] > 15, (name, scores)
        assert 10 < scores["latent_snr"] < 100, (name, scores)  # quantized: close to bf16, not equal
    assert by_name["w8a8-fp8"].note.startswith("GPU: open") and not by_name["w8a8-fp8"].clips
    assert info["calibration"] and info["clips"] == {"tiny": "128x128, 21 frames"}
    table = quality_markdown(rows, info)
    assert table.count("\n| ") == len(rows) and "| bf16 | float model, bf16 (reference) |" in table
    assert "GPU: open" in table and "Δ vs bf16" in table
