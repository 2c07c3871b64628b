"""Files that ship with flashvsr-q: the YAML recipes, the calibration sets and the small model.

The repository keeps them at its top level (``recipes/``, ``calibration/``, ``checkpoints/flashvsr-small/``); the
build maps those folders into this package (``setup.py``), so an installed wheel and an editable checkout find them
the same way, through ``importlib.resources``, wherever the command runs from.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from flashvsr_q.errors import FlashVSRError

# name inside this package (a wheel) -> folder at the top of a source checkout (an editable install)
RECIPES, CALIBRATION, SMALL_MODEL = "recipes", "calibration", "flashvsr_small"
_CHECKOUT = {RECIPES: "recipes", CALIBRATION: "calibration", SMALL_MODEL: "checkpoints/flashvsr-small"}


def folder(name: str) -> Path:
    """The folder of one shipped part (``RECIPES``, ``CALIBRATION`` or ``SMALL_MODEL``) on the file system."""
    installed = Path(str(files(__name__))) / name
    if installed.is_dir():
        return installed
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / _CHECKOUT[name]).is_dir():
        return root / _CHECKOUT[name]
    raise FlashVSRError(f"flashvsr-q is installed without its data ({name}); reinstall it from a wheel or the "
                        "repository")


def by_name(name_or_path: str | os.PathLike, folder: Path) -> Path:
    """``name_or_path`` as given, or the shipped ``folder/NAME.yaml`` when it is a bare name (no folder, no suffix)
    that names no file here but a shipped one (``--recipe train-small``, ``--set builtin``)."""
    path = Path(name_or_path)
    if path.exists() or path.parent != Path(".") or path.suffix:
        return path
    shipped = folder / f"{path}.yaml"
    return shipped if shipped.is_file() else path


def recipes_dir() -> Path:
    """The shipped recipes (``recipes/*.yaml`` in the repository)."""
    return folder(RECIPES)


def calibration_dir() -> Path:
    """The shipped calibration sets (``calibration/*.yaml``)."""
    return folder(CALIBRATION)


def small_model_dir() -> Path:
    """The shipped small model (``checkpoints/flashvsr-small``), an official-layout folder."""
    return folder(SMALL_MODEL)


def quantization_recipes() -> dict[str, Path]:
    """name -> file of every shipped quantization recipe (``kind: quantization``; training and QAT recipes are not).

    Read from the files' ``kind:`` line, so listing them (``--help``) loads no YAML parser, torch or recipe schema.
    """
    out = {}
    for path in sorted(recipes_dir().glob("*.yaml")):
        if any(line.strip() == "kind: quantization" for line in path.read_text().splitlines()):
            out[path.stem] = path
    return out
