"""`flashvsr-q export` -> a ComfyUI-native DiT file -> `--checkpoint FILE` (upscale, inspect), on the test-size model.

The source model's weights are rounded to bf16 first (as the conformance weights are), so the official files
(LQ projection bf16, decoder fp32) and a compressed checkpoint (bf16) hold the same values.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import random_model
from PIL import Image
from quant.quant_helpers import dit_output, sqnr
from safetensors import safe_open
from safetensors.torch import save_file

from flashvsr_q.checkpoints import checkpoint_kind, load_checkpoint
from flashvsr_q.cli import main
from flashvsr_q.errors import CheckpointError, FlashVSRError
from flashvsr_q.model import OFFICIAL_FILES, save_official
from flashvsr_q.model.loading import CONFIG_SIDECAR
from flashvsr_q.quant.comfy import ComfyFormatError
from flashvsr_q.tasks.export import CARD_MARKER, ExportOptions, export

PARTS = [OFFICIAL_FILES[p] for p in ("lq_proj", "decoder", "prompt")] + [CONFIG_SIDECAR]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "test-model"
    save_official(random_model("test").to(torch.bfloat16).float(), path)
    return path


@pytest.fixture(scope="module")
def convrot(official, tmp_path_factory):
    out = tmp_path_factory.mktemp("convrot") / "w8a8-int8-convrot"
    assert main(["quantize", "--recipe", "w8a8-int8-convrot", "--checkpoint", str(official), "-o", str(out),
                 "--quiet"]) == 0
    return out


def with_parts(file, official):
    """The import layout: the DiT file with the official LQ projection, decoder, prompt (and config) beside it."""
    for name in PARTS:
        shutil.copy(official / name, file.parent / name)
    return file


def upscale_image(checkpoint, tmp_path, name):
    src = tmp_path / "in.png"
    if not src.exists():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(src)
    out = tmp_path / f"{name}.png"
    # one dtype for both: a compressed checkpoint alone would run in its own (bf16), a ComfyUI file in the CPU's fp32
    assert main(["upscale", str(src), "-o", str(out), "--checkpoint", str(checkpoint), "--tile", "off",
                 "--dtype", "fp32"]) == 0
    return np.asarray(Image.open(out))


def test_export_import_upscale_gives_the_checkpoints_frames(official, convrot, tmp_path, capsys):
    folder = tmp_path / "comfy"
    folder.mkdir()
    file = folder / "test-int8_convrot.safetensors"
    assert main(["export", str(convrot), "--format", "comfy-int8-convrot", "-o", str(file)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "inf dB" in printed  # the file computes exactly what the checkpoint computes
    with safe_open(str(file), framework="pt") as f:
        assert f.metadata() in (None, {}) and "blocks.0.ffn.0.comfy_quant" in f.keys()

    card = (folder / "test-int8_convrot.md").read_text()
    for fragment in (CARD_MARKER, "comfy-int8-convrot", "sha256", "w8a8-int8-convrot", "ComfyUI-FlashVSR-Stock",
                     "FlashVSR_Ultra_Fast"):
        assert fragment in card, fragment

    with_parts(file, official)
    assert checkpoint_kind(file) == "comfy"
    ours = upscale_image(convrot, tmp_path, "checkpoint")
    theirs = upscale_image(file, tmp_path, "comfy")
    assert ours.shape == (128, 192, 3) and np.array_equal(ours, theirs)

    assert main(["inspect", str(file)]) == 0
    text = capsys.readouterr().out
    for fragment in ("comfy checkpoint, model test (2 blocks)", "ComfyUI int8-convrot FlashVSR DiT",
                     "int8_tensorwise (convrot 64)", "LQ_proj_in.ckpt", "sha256"):
        assert fragment in text, fragment


def test_bf16_export_is_the_official_model_in_bf16(official, tmp_path):
    result = export(ExportOptions(official, "bf16", tmp_path / "dit-bf16.safetensors", prefix=True))
    assert result.quality["dit_snr_db"] > 40 and result.sha256
    model = load_checkpoint(with_parts(result.output, official), dtype=torch.bfloat16)
    reference = load_checkpoint(official, dtype=torch.bfloat16)
    assert torch.equal(dit_output(model), dit_output(reference))


def test_int8_export_from_official_runs_close_to_float(official, tmp_path):
    result = export(ExportOptions(official, "comfy-int8", tmp_path / "dit-int8.safetensors"))
    model = load_checkpoint(with_parts(result.output, official), dtype=torch.float32)
    assert sqnr(dit_output(load_checkpoint(official, dtype=torch.float32)), dit_output(model)) > 30


def test_output_safety(official, convrot, tmp_path, capsys):
    file = tmp_path / "x.safetensors"
    assert main(["export", str(convrot), "--format", "comfy-int8-convrot", "-o", str(file), "--no-measure"]) == 0
    before = file.read_bytes()
    cases = [
        (["-o", str(file)], "already exists"),                                                  # no --overwrite
        (["-o", str(official / OFFICIAL_FILES["dit"]), "--overwrite"], "the output is the input"),
        (["-o", str(convrot / "dit.safetensors"), "--overwrite"], "the output is the input"),
        (["-o", str(tmp_path)], "is a folder"),
        (["-o", str(tmp_path / "missing" / "x.safetensors")], "does not exist"),
    ]
    for extra, message in cases:
        source = official if "official" in extra[1] else convrot
        assert main(["export", str(source), "--format", "comfy-int8-convrot", "--no-measure", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert file.read_bytes() == before
    assert main(["export", str(official), "--format", "comfy-fp8", "-o", str(tmp_path / "f.safetensors")]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    (tmp_path / "y.md").write_text("my notes")  # a card name that holds someone else's file
    assert main(["export", str(convrot), "--format", "comfy-int8-convrot", "-o", str(tmp_path / "y.safetensors"),
                 "--overwrite", "--no-measure"]) == 2
    assert "not written by flashvsr-q" in capsys.readouterr().err and (tmp_path / "y.md").read_text() == "my notes"
    # --overwrite replaces what export wrote
    assert main(["export", str(convrot), "--format", "comfy-int8", "-o", str(file), "--overwrite",
                 "--no-measure"]) == 2  # a ConvRot checkpoint cannot become weight-only int8: refused, file kept
    assert "ConvRot layer" in capsys.readouterr().err and file.read_bytes() == before
    assert main(["export", str(official), "--format", "comfy-int8", "-o", str(file), "--overwrite",
                 "--no-measure"]) == 0
    assert file.read_bytes() != before


def test_bad_or_foreign_files_are_refused_in_one_line(official, convrot, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLASHVSR_Q_OFFICIAL", str(tmp_path / "no-fetched-release"))
    good = tmp_path / "good.safetensors"
    export(ExportOptions(convrot, "comfy-int8-convrot", good, measure=False))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with_parts(truncated, official)
    with pytest.raises(ComfyFormatError, match="truncated"):
        load_checkpoint(truncated)
    not_dit = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4)}, str(not_dit))
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src)
    for file, message in ((truncated, "not a readable safetensors file"), (not_dit, "not a DiT")):
        assert main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--checkpoint", str(file)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(good, alone / "dit.safetensors")
    with pytest.raises(CheckpointError, match="LQ_proj_in.ckpt .* is needed"):
        load_checkpoint(alone / "dit.safetensors")
    with pytest.raises(FlashVSRError, match="ComfyUI file"):
        load_checkpoint(with_parts(good, official), recipe="int8-weight-only")
