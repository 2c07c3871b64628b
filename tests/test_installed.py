"""The package under test, and what an installed flashvsr-q must carry."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import flashvsr_q
from flashvsr_q.shipped import calibration_dir, recipes_dir, small_model_dir


@pytest.mark.skipif(not os.environ.get("FLASHVSR_Q_EXPECT_INSTALLED"), reason="only where CI installed the wheel")
def test_the_suite_runs_against_the_installed_wheel():
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(flashvsr_q.__file__).resolve().is_relative_to(site), flashvsr_q.__file__
    assert small_model_dir().resolve().is_relative_to(site)


def test_the_shipped_data_is_found_from_any_folder(tmp_path):
    assert (small_model_dir() / "diffusion_pytorch_model_streaming_dmd.safetensors").is_file()
    assert (recipes_dir() / "int8-weight-only.yaml").is_file()
    assert (calibration_dir() / "builtin.yaml").is_file()
    code = ("from flashvsr_q.quant import load_recipe; from flashvsr_q.checkpoints import default_checkpoint; "
            "print(load_recipe('int8-weight-only').name, default_checkpoint().is_dir())")
    env = {k: v for k, v in os.environ.items() if k != "FLASHVSR_Q_CHECKPOINT"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.split() == ["int8-weight-only", "True"]


def test_every_package_folder_is_a_package():
    """A folder without __init__.py is left out of the wheel (find_packages): the checkout works, the install not."""
    package = Path(flashvsr_q.__file__).parent
    folders = {p.parent for p in package.rglob("*.py")}
    missing = sorted(str(f.relative_to(package)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, missing


def test_shipped_files_by_bare_name(tmp_path, monkeypatch):
    from flashvsr_q.shipped import by_name

    assert by_name("builtin", calibration_dir()) == calibration_dir() / "builtin.yaml"
    assert by_name("train-small", recipes_dir()) == recipes_dir() / "train-small.yaml"
    assert by_name("my.yaml", recipes_dir()) == Path("my.yaml")  # a path stays a path, existing or not
    assert by_name("no-such", recipes_dir()) == Path("no-such")  # the caller says it is missing
    monkeypatch.chdir(tmp_path)
    (tmp_path / "builtin").write_text("mine")
    assert by_name("builtin", calibration_dir()) == Path("builtin")  # a file of that name here wins
