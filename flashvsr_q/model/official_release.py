"""The official FlashVSR releases: where each file is published, its SHA-256, and the local folder it goes to.

``flashvsr-q fetch v1.1 [--full]`` (``flashvsr_q.tasks.fetch``) fills ``release_dir("v1.1")``, and the checkpoint
names ``flashvsr-v1`` / ``flashvsr-v1.1`` resolve to those folders (:func:`resolve_release_name`). The root is
``$FLASHVSR_Q_OFFICIAL``, default ``~/.cache/flashvsr-q/official``.

Hashes are the full SHA-256 values of the v1.1 files (spec §8 lists them abbreviated; the full values are those
third-party ports pin, and they agree with the spec's prefix and suffix). ``Wan2.1_VAE.pth`` is the stock Wan2.1 VAE,
the same file in both repositories. For v1 no hashes are published for the DiT, the LQ projection and the
TCDecoder: those are checked for completeness only, and ``fetch`` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flashvsr_q.errors import CheckpointError
from flashvsr_q.model.loading import OFFICIAL_FILES, WAN_VAE_FILE

ENV_ROOT = "FLASHVSR_Q_OFFICIAL"
DEFAULT_ROOT = "~/.cache/flashvsr-q/official"
VERSIONS = ("v1", "v1.1")
# The prompt tensor is not on the Hugging Face pages: it is in the GitHub repository, pinned at this commit.
PROMPT_COMMIT = "ccac0ac457243a47c13997682ebbaf987dabbea7"
PROMPT_URL = (f"https://raw.githubusercontent.com/OpenImagingLab/FlashVSR/{PROMPT_COMMIT}/"
              "examples/WanVSR/prompt_tensor/posi_prompt.pth")


@dataclass(frozen=True)
class ReleaseFile:
    """One published file: ``name`` in Hugging Face ``repo`` at ``revision`` (or at ``url``), its size and hash."""

    name: str
    size: int | None  # bytes, where known (shown, and a partial file is told apart from a complete one)
    sha256: str | None  # None: no published hash to check against
    repo: str | None = None
    revision: str = "main"
    url: str | None = None

    @property
    def source(self) -> str:
        return self.url or f"https://huggingface.co/{self.repo}/blob/{self.revision}/{self.name}"


_V11 = ("JunhaoZhuang/FlashVSR-v1.1", "27561b186ded3402d7c975f4fd722e2885b6135f")
_V1 = ("JunhaoZhuang/FlashVSR", "main")
_VAE_SHA = "38071ab59bd94681c686fa51d75a1968f64e470262043be31f7a094e442fd981"
_PROMPT = ReleaseFile(OFFICIAL_FILES["prompt"], 4_195_504,
                      "4601107a11e4e11a936a6b79df579e54dbc99872132bf542151f0ffd65b4b1ef", url=PROMPT_URL)

RELEASES: dict[str, dict[str, ReleaseFile]] = {
    "v1.1": {
        "dit": ReleaseFile(OFFICIAL_FILES["dit"], 5_676_070_392,
                           "bd28180edcf3446c028e32fc6b731a80bf7e4da2ab4caac3186b9499964d37be", *_V11),
        "lq_proj": ReleaseFile(OFFICIAL_FILES["lq_proj"], 575_694_948,
                               "d6d011cdaaba6a52645086caa08fa04124e746f6ca568140a24007591142bfd2", *_V11),
        "decoder": ReleaseFile(OFFICIAL_FILES["decoder"], 189_018_333,
                               "e224bdcf2f52745cbf4d393ff5374c2ba09e90285d5d19062d2bf63b915b6161", *_V11),
        "prompt": _PROMPT,
        "vae": ReleaseFile(WAN_VAE_FILE, 507_609_880, _VAE_SHA, *_V11),
    },
    "v1": {
        "dit": ReleaseFile(OFFICIAL_FILES["dit"], None, None, *_V1),
        "lq_proj": ReleaseFile(OFFICIAL_FILES["lq_proj"], None, None, *_V1),
        "decoder": ReleaseFile(OFFICIAL_FILES["decoder"], None, None, *_V1),
        "prompt": _PROMPT,
        "vae": ReleaseFile(WAN_VAE_FILE, 507_609_880, _VAE_SHA, *_V1),
    },
}


def release_files(version: str, full: bool = False) -> list[ReleaseFile]:
    """The files a folder of ``version`` needs: the Tiny pipeline's four, plus the Wan VAE with ``full``."""
    if version not in RELEASES:
        raise CheckpointError(f"unknown FlashVSR version {version!r}; choose one of {', '.join(VERSIONS)}")
    parts = ("dit", "lq_proj", "decoder", "prompt") + (("vae",) if full else ())
    return [RELEASES[version][part] for part in parts]


def official_root() -> Path:
    """``$FLASHVSR_Q_OFFICIAL`` if set, else ``~/.cache/flashvsr-q/official`` (need not exist)."""
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser()


def release_dir(version: str) -> Path:
    """Where ``fetch`` puts ``version``: ``<root>/FlashVSR-v1.1`` (the Hugging Face repository's name)."""
    release_files(version)  # validates the version
    return official_root() / f"FlashVSR-{version}"


def release_name(name: str) -> str | None:
    """``"v1.1"`` for the checkpoint name ``flashvsr-v1.1`` (any case), likewise v1; None for anything else."""
    lowered = name.strip().lower()
    return next((v for v in VERSIONS if lowered == f"flashvsr-{v}"), None)


def resolve_release_name(name: str, full: bool = False) -> Path:
    """The fetched folder for a checkpoint name such as ``flashvsr-v1.1``.

    Raises:
        CheckpointError: ``name`` is not a release name, or the folder lacks a file (says what to run, or which
            files to put where).
    """
    version = release_name(name)
    if version is None:
        names = ", ".join(f"flashvsr-{v}" for v in VERSIONS)
        raise CheckpointError(f"unknown checkpoint name {name!r}; names are {names}")
    directory = release_dir(version)
    missing = [f.name for f in release_files(version, full) if not (directory / f.name).is_file()]
    if missing:
        flag = " --full" if full else ""
        raise CheckpointError(f"{name} is not downloaded: {', '.join(missing)} missing in {directory}; run "
                              f"`flashvsr-q fetch {version}{flag}` or put the files there "
                              f"(from https://huggingface.co/{RELEASES[version]['dit'].repo})")
    return directory
