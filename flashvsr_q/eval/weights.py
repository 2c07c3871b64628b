"""The offline weights folder: where metric weights live, and the guard that keeps every metric from downloading.

Layout (the root is ``$FLASHVSR_Q_WEIGHTS``, default ``~/.cache/flashvsr-q/weights``)::

    <root>/pyiqa/        pyiqa's own files (LPIPS heads, NIQE prior, MUSIQ)
    <root>/checkpoints/  torchvision / torch.hub files (AlexNet for LPIPS, RAFT for E*warp)
    <root>/clip/         OpenAI CLIP backbones (RN50.pt for CLIPIQA)
    <root>/dover/        DOVER.pth

The root doubles as the torch.hub directory while a metric is built, so torchvision and CLIP find their files
where torch.hub would have cached them. See docs/metrics.md for every file and its source.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from flashvsr_q.errors import FlashVSRError

ENV_VAR = "FLASHVSR_Q_WEIGHTS"
DEFAULT_DIR = "~/.cache/flashvsr-q/weights"


class MetricUnavailable(FlashVSRError):
    """A metric cannot run here: a weight file or an optional package is missing. The message says what to do."""


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs: ``<root>/<folder>/<name>``, originally published at ``source``."""

    folder: str
    name: str
    source: str

    def path(self, root: Path | None = None) -> Path:
        return (root or weights_dir()) / self.folder / self.name


def weights_dir() -> Path:
    """The weights root: ``$FLASHVSR_Q_WEIGHTS`` if set, else ``~/.cache/flashvsr-q/weights`` (need not exist)."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def missing_message(metric: str, file: WeightFile, root: Path | None = None) -> str:
    """One line naming the missing file, where it goes and where it comes from."""
    path = file.path(root)
    return f"{metric} weights missing: put {file.name} in {path.parent}/ (source: {file.source})"


def require(metric: str, files: Sequence[WeightFile], root: Path | None = None) -> list[Path]:
    """Paths of ``files`` under ``root``; raise :class:`MetricUnavailable` naming the first one that is absent.

    Called before any third-party constructor runs, so a missing file is reported instead of downloaded.
    """
    root = root or weights_dir()
    paths = []
    for file in files:
        path = file.path(root)
        if not path.is_file() or path.stat().st_size == 0:
            raise MetricUnavailable(missing_message(metric, file, root))
        paths.append(path)
    return paths


def check_plain_weights(metric: str, path: Path) -> None:
    """Refuse a ``.pth`` that needs full unpickling (house rule: untrusted checkpoints load with weights_only).

    pyiqa loads its files with ``weights_only=False``; reading them once with ``weights_only=True`` first means a
    file that carries arbitrary pickled objects is rejected before pyiqa can execute it.
    """
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # legacy (non-zip) serialisation cannot be memory-mapped; it can still be checked
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any failure means "not a plain weights file"
            raise MetricUnavailable(f"{metric}: {path} is not a plain weights file ({_first_line(exc)})") from exc
    except Exception as exc:
        raise MetricUnavailable(f"{metric}: {path} is not a plain weights file ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def offline(metric: str, root: Path | None = None) -> Iterator[Path]:
    """While building a metric: torch.hub points at ``root``, the HF hub is offline, and every download raises.

    The presence checks in :func:`require` come first; this is the second line of defence in case a library
    reaches for a file we did not know about. Everything is restored on exit.
    """
    root = root or weights_dir()

    def refuse(url: object, *args: object, **kwargs: object) -> None:
        raise MetricUnavailable(f"{metric} tried to download {url}; place that file under {root}/ instead")

    patches: list[tuple[object, str, object]] = [(torch.hub, "download_url_to_file", refuse),
                                                 (urllib.request, "urlopen", refuse)]
    try:
        import pyiqa.utils.download_util as pyiqa_download  # bound its own copy of download_url_to_file

        patches.append((pyiqa_download, "download_url_to_file", refuse))
    except ImportError:
        pass
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    old_hub = torch.hub.get_dir()
    old_env = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        torch.hub.set_dir(str(root))
        yield root
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        torch.hub.set_dir(old_hub)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
