"""`flashvsr-q eval`: configurations from flags and --config, the report folder, the doc update, one-line errors."""

from __future__ import annotations

import json

import pytest
from eval.eval_support import smooth_clip, write_pngs
from helpers import random_model

from flashvsr_q.cli import main
from flashvsr_q.eval.degrade import bicubic_downscale
from flashvsr_q.eval.runner import DOC_BEGIN, DOC_END
from flashvsr_q.model import save_official


@pytest.fixture
def reds(tmp_path):
    root = tmp_path / "reds"
    gt = smooth_clip(0, frames=3)
    write_pngs(root / "GT" / "000", gt)
    write_pngs(root / "LR" / "000", bicubic_downscale(gt))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An official-layout folder of the ``test`` preset with random weights."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_official(random_model("test"), folder)
    return folder


def test_eval_command_writes_the_report_and_updates_the_doc(reds, checkpoint, tmp_path, capsys):
    doc = tmp_path / "evaluation.md"
    doc.write_text(f"# Evaluation\n\n{DOC_BEGIN}\n{DOC_END}\n")
    out = tmp_path / "report"
    args = ["eval", "--dataset", str(reds), "--checkpoint", str(checkpoint), "--attention", "sparse,block_sparse",
            "--dtype", "fp32", "--config", "wavelet:checkpoint=" + str(checkpoint) + ",color_fix=wavelet,dtype=fp32",
            "--metrics", "psnr,tdiff", "--device", "cpu", "--quiet", "-o", str(out), "--update-doc", str(doc)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "tiny fp32 (ref)" in stdout and "skipped tiny fp32 attn=block_sparse: attention backend" in stdout
    configs = json.loads((out / "configs.json").read_text())
    assert [(c["name"], c["ran"]) for c in configs["configs"]] == [
        ("bicubic", True), ("tiny fp32", True), ("tiny fp32 attn=block_sparse", False), ("wavelet", True)]
    text = doc.read_text()
    assert "| tiny fp32 (ref) |" in text and "![deltas](report/deltas.png)" in text
    assert "flashvsr-q eval --dataset " + str(reds) in text  # the command that made it

    assert main(args) == 2  # the folder exists
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--no-bicubic"]) == 0
    assert "| bicubic |" not in (out / "table.md").read_text()


def test_eval_json_prints_the_report_means_and_files(reds, checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "--dataset", str(reds), "--checkpoint", str(checkpoint), "--dtype", "fp32", "--metrics",
                 "psnr,tdiff", "--device", "cpu", "--quiet", "--json", "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    table = (out / "table.md").read_text()
    assert set(printed["means"]) == {"bicubic", "tiny fp32"} and set(printed["files"]) >= {"report", "json"}
    for config, values in printed["means"].items():
        assert set(values) == {"psnr", "tdiff"} and all(isinstance(v, float) for v in values.values())
        assert f"{values['psnr']:.2f}" in table  # the same means as the report


@pytest.mark.parametrize("extra, says", [
    (["--config", "x:foo=1"], "expected NAME:key=value"),
    (["--recipe", "no-such-recipe"], "no recipe 'no-such-recipe'"),
    (["--metrics", "psnr,sharpness"], "unknown metric(s) sharpness"),
    (["--crop", "big"], "--crop takes WxH"),
])
def test_eval_command_mistakes_are_one_line(reds, tmp_path, capsys, extra, says):
    assert main(["eval", "--dataset", str(reds), "-o", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
