"""Every shipped recipe, as a new user runs it on a CPU: quantize (after calibrate where the recipe needs it), then
upscale with the defaults; or a one-line refusal that names a recipe which does run here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flashvsr_q.cli import main
from flashvsr_q.quant.recipes import load_recipe, runnable_recipes, shipped_recipes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_quantize_then_upscale_with_the_defaults_on_a_cpu(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLASHVSR_Q_CHECKPOINT", raising=False)
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(image)
    extra = []
    if load_recipe(name).needs_calibration:
        stats = tmp_path / "stats.safetensors"
        assert main(["calibrate", "--recipe", name, "--footage", "builtin", "--clips", "1", "--frames", "33",
                     "--size", "128x128", "-o", str(stats)]) == 0
        extra = ["--calibration", str(stats)]
    code = main(["quantize", "--recipe", name, "-o", str(tmp_path / "q"), "--quiet", *extra])
    if name not in runnable_recipes("cpu"):
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "recipes that run on cpu: " in err
        assert any(other in err.split("recipes that run on cpu: ")[1] for other in runnable_recipes("cpu"))
        return
    assert code == 0, capsys.readouterr().err
    assert main(["upscale", str(image), "-o", str(tmp_path / "out.png"), "--checkpoint", str(tmp_path / "q"),
                 "--quiet"]) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "out.png").size == (80, 48)
