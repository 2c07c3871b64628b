"""Files written whole or not at all: into a hidden temporary file beside the target, synced, then renamed over it.

A crash, a full disk or Ctrl-C mid-write leaves the previous file (or none) under the name, never half of one, and
the temporary file is removed. The rename is atomic because both names are in the same folder. Every file the
project writes in one go (checkpoints, manifests, reports, JSON results) goes through :func:`atomic_write`;
streams written over time (videos, segments) stage their own temporary files, and folders written as a unit
(compressed checkpoints, the demo's and eval's outputs) are staged whole and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Let ``write(tmp)`` fill a temporary file beside ``path``, fsync it and rename it to ``path``."""
    path = Path(path)
    # the pid keeps two processes writing the same file from sharing a temporary; the dot hides it from globs
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (serialised first, so a bad value writes nothing)."""
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def staging_dir(target: str | os.PathLike, prefix: str | None = None) -> Path:
    """A new hidden folder beside ``target`` to fill and then rename onto it, with the user's usual permissions.

    ``tempfile.mkdtemp`` makes 0700 folders (right for /tmp, wrong for an output the user shares); this one gets
    0777 minus the umask, like ``mkdir`` would.
    """
    target = Path(target)
    folder = Path(tempfile.mkdtemp(prefix=prefix or f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    return folder


OWNED_MARKER = ".flashvsr-q"  # hidden file inside an output folder this tool wrote: --overwrite may replace it


def mark_owned(folder: str | os.PathLike, what: str) -> None:
    """Leave :data:`OWNED_MARKER` in a staged output folder (before it is renamed into place), so that a later
    ``--overwrite`` recognises the folder as one this tool wrote. ``what`` says what wrote it."""
    write_text(Path(folder) / OWNED_MARKER, f"written by flashvsr-q: {what}\n")


def is_owned(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` carries :data:`OWNED_MARKER`."""
    return (Path(folder) / OWNED_MARKER).is_file()


def swap_in(staged: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the complete folder ``staged`` onto ``target``; an existing ``target`` is moved aside first and deleted
    only once the new one is in place (a crash in between leaves it as ``.NAME.old-PID`` beside it, not lost)."""
    staged, target = Path(staged), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file, read in 16 MiB chunks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
