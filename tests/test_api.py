"""The public API: every example of docs/api.md runs as written, and the docstring examples of the public names."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import flashvsr_q as fq

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
PUBLIC = ["load_checkpoint", "upscale", "quantize", "load_recipe", "FlashVSR", "get_config"]


@pytest.mark.slow
def test_the_documented_examples_run_in_order(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLASHVSR_Q_CHECKPOINT", raising=False)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(API_DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "9 (128, 192, 3) uint8" in out and "(224, 160)" in out
    assert "error: no-such-file.mp4: no such file or folder" in out
    assert (tmp_path / "int8" / "manifest.json").is_file() and (tmp_path / "out-int8.png").is_file()


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring_with_an_example_that_runs(name, monkeypatch):
    monkeypatch.delenv("FLASHVSR_Q_CHECKPOINT", raising=False)
    obj = getattr(fq, name)
    assert obj.__doc__ and ">>>" in obj.__doc__, f"fq.{name} has no example"
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(obj, name, globs={}):
        runner.run(test)
    assert runner.failures == 0


def test_import_is_cheap_and_lists_the_api():
    import subprocess
    import sys

    code = "import sys, flashvsr_q as fq; assert 'torch' not in sys.modules; print(sorted(fq.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert all(name in out.stdout for name in PUBLIC + ["FlashVSRError", "tasks"])
