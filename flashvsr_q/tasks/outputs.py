"""Where a task may write, and one run per output at a time: the rules every task that writes follows, in one place.

    from flashvsr_q.tasks.outputs import RunLock, check_output

    check_output(out, inputs=[video, checkpoint], overwrite=True, owned=is_ours)   # raises FlashVSRError, one line
    with RunLock(out):                                                              # "... in use (pid N)" if held
        ...write beside ``out`` and rename onto it...

The rules (``check_output``), with every path resolved (symlinks, ``..``, the current folder):

- an output is never an input, never a folder that holds an input, never inside an input folder;
- an output is never the current folder or a folder that holds it;
- an existing output is an error without ``overwrite``; with it, a *folder* is replaced only when this tool wrote it
  (``owned(folder)``: its manifest or the :data:`MARKER` file) or it is empty, and a *file* only by a file;
- nothing is deleted here: writers stage the new output beside the old one and rename it into place when complete.

``RunLock`` is an advisory ``fcntl.flock`` on a hidden file beside the output (``.NAME.flashvsr-q.lock``) that also
records the holder's pid. The kernel drops the lock when its process dies, however it dies, so a lock file left by a
killed run is stale by construction: the next run takes it over (``RunLock.stale_pid`` says whose it was). Windows
has no ``fcntl``; there ``filelock`` takes the lock and the pid of a holder is not known.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from flashvsr_q.errors import FlashVSRError
from flashvsr_q.files import OWNED_MARKER, is_owned, mark_owned

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["MARKER", "OutputClash", "RunInUse", "RunLock", "check_output", "check_paths", "mark_owned", "owned_marker"]

MARKER = OWNED_MARKER  # hidden file inside an output folder this tool wrote (``files.mark_owned``)
LOCK_SUFFIX = ".flashvsr-q.lock"


class OutputClash(FlashVSRError):
    """An output would replace, contain or sit inside an input, the current folder, or something not ours."""


class RunInUse(FlashVSRError):
    """Another process is writing the same output."""


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))  # resolves every symlink, also of missing tails


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def check_paths(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *,
                what: str = "output") -> None:
    """Raise :class:`OutputClash` if ``output`` is, holds or lies inside one of ``inputs``, or is (or holds) the
    current folder. ``None`` inputs are skipped; ``what`` names the path in the message (``work folder``, ...)."""
    out, cwd = _real(output), Path.cwd().resolve()
    if out == cwd or _inside(cwd, out):
        raise OutputClash(f"{output}: the {what} would be {'the' if out == cwd else 'a folder holding the'} current "
                          "folder; name a new file or folder")
    for given in inputs:
        if given is None:
            continue
        src = _real(given)
        if out == src:
            raise OutputClash(f"{output}: the {what} is the input {given}; choose another path")
        if _inside(src, out):
            raise OutputClash(f"{output}: the {what} holds the input {given}; choose a path outside it")
        if _inside(out, src):
            raise OutputClash(f"{output}: the {what} lies inside the input folder {given}; choose a path outside it")


owned_marker = is_owned  # the default ``owned`` test: the folder holds :data:`MARKER` (``mark_owned`` wrote it)


def check_output(output: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 overwrite: bool = False, owned: Callable[[Path], bool] = owned_marker, kind: str = "any",
                 what: str = "output") -> bool:
    """Check that a task may write ``output``; returns whether it exists already (and may be replaced).

    Args:
        inputs: every path the task reads (inputs, source checkpoints, statistics, recipe files).
        overwrite: the user allows replacing an existing output.
        owned: recognises a folder this tool wrote (default: the :data:`MARKER` file); only such folders, or empty
            ones, are replaced.
        kind: ``"file"``, ``"folder"`` or ``"any"``: what the output is; an existing path of the other kind is an
            error either way.

    Raises:
        OutputClash: an overlap (see :func:`check_paths`), an existing output without ``overwrite``, a folder where
            a file is expected (or the reverse), a folder that is not ours.
    """
    check_paths(output, inputs, what=what)
    path = Path(output)
    if not path.exists() and not path.is_symlink():
        return False
    if kind == "file" and path.is_dir():
        raise OutputClash(f"{output}: is a folder, expected a file name")
    if kind == "folder" and not path.is_dir():
        raise OutputClash(f"{output}: is a file, expected a folder")
    if not overwrite:
        raise OutputClash(f"{output} already exists; use --overwrite to replace it")
    if path.is_dir() and any(path.iterdir()) and not owned(path):
        raise OutputClash(f"{output}: --overwrite replaces only what flashvsr-q wrote, and this folder was not "
                          "written by it; choose a new folder or empty this one")
    return True


class RunLock:
    """One run per output: an exclusive lock held while a task writes ``target`` (a file or a folder).

    Use as a context manager. Entering raises :class:`RunInUse` ("``target`` is in use by a running process (pid
    N)") when another process holds it, and ``FlashVSRError`` when the folder beside ``target`` does not exist.
    After entering, ``stale_pid`` is the pid recorded by a killed run whose lock file was taken over (else None).
    Locks are per open file, so a second ``RunLock`` on the same target in the same process is refused as well.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        name = _real(target).name or "root"
        self.path = _real(target).parent / f".{name}{LOCK_SUFFIX}"
        self.stale_pid: int | None = None
        self._fd: int | None = None
        self._fallback = None

    def __enter__(self) -> RunLock:
        if not self.path.parent.is_dir():
            raise FlashVSRError(f"{self.target}: the folder {self.path.parent} does not exist")
        if fcntl is None:
            self._enter_filelock()
            return self
        for _ in range(10):  # the holder unlinks the file as it releases; then try again on a fresh one
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise FlashVSRError(f"{self.target}: cannot create the lock file {self.path} ({exc.strerror})") \
                    from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise RunInUse(f"{self.target} is in use by a running process (pid {pid or 'unknown'}); wait for "
                               "it to finish or stop it") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.stale_pid = _read_pid(fd)  # left by a run that died holding it: the kernel released its lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return self
        raise RunInUse(f"{self.target}: could not take the lock {self.path}; try again")

    def _enter_filelock(self) -> None:
        import filelock  # Windows only (no fcntl): filelock's native lock, the holder's pid unknown

        self._fallback = filelock.FileLock(str(self.path), timeout=0)
        try:
            self._fallback.acquire()
        except filelock.Timeout:
            raise RunInUse(f"{self.target} is in use by a running process (pid unknown)") from None

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Drop the lock (and its file); safe to call twice."""
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # while still holding it: a waiter then sees another inode
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback is not None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
