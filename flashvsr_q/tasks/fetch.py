"""``flashvsr-q fetch v1|v1.1 [--dir DIR] [--full]``: download the official FlashVSR files and verify them.

Each file is downloaded with ``huggingface_hub.hf_hub_download`` into a staging folder inside the target folder
(``.flashvsr-q-fetch/``; an interrupted download resumes from there), its SHA-256 is checked, and only then is it
renamed to its final name, so the folder never holds a partial or unverified file under an official name. The
prompt tensor is not on Hugging Face: it comes from the GitHub repository at a pinned commit, checked the same way.
A file already in place is kept when its hash matches; one that differs is never overwritten (an error says so).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import sha256_file
from flashvsr_q.model.official_release import ReleaseFile, release_dir, release_files

STAGING = ".flashvsr-q-fetch"
Report = Callable[[str], None]


class FetchError(FlashVSRError):
    """A download failed or a file does not verify; the message names the file and what to do."""


@dataclass(frozen=True)
class FetchOptions:
    """What to download.

    Args:
        version: ``"v1"`` or ``"v1.1"``.
        directory: target folder (None: ``$FLASHVSR_Q_OFFICIAL/FlashVSR-<version>``, which the checkpoint name
            ``flashvsr-<version>`` resolves to).
        full: also fetch ``Wan2.1_VAE.pth``, the Full pipeline's decoder.
    """

    version: str = "v1.1"
    directory: Path | None = None
    full: bool = False


def fetch(options: FetchOptions, report: Report = print) -> Path:
    """Download the files of ``options.version`` into the target folder, verified; returns the folder.

    Raises:
        FetchError: network down or file not found (naming the repository and file, and where to put it by hand),
            a hash mismatch, or an existing different file in the way.
    """
    files = release_files(options.version, options.full)
    directory = Path(options.directory).expanduser() if options.directory else release_dir(options.version)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / STAGING
    for file in files:
        target = directory / file.name
        if target.exists():
            _check_existing(file, target, report)
            continue
        size = f" ({file.size / 2**20:,.0f} MiB)" if file.size else ""
        report(f"downloading {file.name}{size} from {file.source}")
        staged = _download(file, staging, directory)
        _verify(file, staged, report)
        os.replace(staged, target)  # same folder tree, so the rename is atomic
    shutil.rmtree(staging, ignore_errors=True)
    report(f"FlashVSR {options.version} is in {directory}")
    return directory


def _check_existing(file: ReleaseFile, target: Path, report: Report) -> None:
    if file.sha256 is None:
        report(f"{file.name} already present; kept (no published SHA-256 to check it against)")
        return
    actual = sha256_file(target)
    if actual != file.sha256:
        raise FetchError(f"{target} exists and is not the official file (SHA-256 {actual[:12]}..., expected "
                         f"{file.sha256[:12]}...); refusing to overwrite it: move it away and fetch again")
    report(f"{file.name} already present and verified")


def _verify(file: ReleaseFile, staged: Path, report: Report) -> None:
    actual = sha256_file(staged)
    if file.sha256 is None:
        report(f"{file.name}: SHA-256 {actual} (no published hash to check against; not verified)")
    elif actual != file.sha256:
        staged.unlink(missing_ok=True)  # a corrupt download must not be resumed from
        raise FetchError(f"{file.name} from {file.source} has SHA-256 {actual[:12]}..., expected "
                         f"{file.sha256[:12]}...; the download is corrupt or the file changed upstream")


def _download(file: ReleaseFile, staging: Path, directory: Path) -> Path:
    """The file downloaded (or resumed) under ``staging``; one-line :class:`FetchError` on any failure."""
    by_hand = f"download it by hand from {file.source} into {directory}/"
    try:
        if file.url is not None:
            return _download_url(file.url, staging / file.name)
        return Path(hf_hub_download(file.repo, file.name, revision=file.revision, local_dir=staging))
    except (LocalEntryNotFoundError, urllib.error.URLError) as exc:  # offline: the hub could not be reached
        raise FetchError(f"cannot reach {file.repo or file.url} to download {file.name} (network down? "
                         f"{_reason(exc)}); {by_hand}") from None
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise FetchError(f"{file.name} not found in {file.repo}@{file.revision} ({type(exc).__name__}); "
                         f"{by_hand}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise FetchError(f"cannot download {file.name} from {file.repo or file.url} ({_reason(exc)}); "
                         f"{by_hand}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _download_url(url: str, path: Path) -> Path:
    """Plain HTTPS download (the prompt tensor, 4 MB) to ``path`` through a temporary name beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".incomplete")
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out)
    os.replace(partial, path)
    return path
