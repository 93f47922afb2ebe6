"""Output files written whole or not at all: one atomic writer, staging folders, stale-staging cleanup.

Everything is built beside its destination (same filesystem, so ``os.replace`` is atomic) under a hidden
name that records the writing process: ``.<name>.staging-<pid>-<random>``. A process stopped by SIGTERM,
SIGHUP or Ctrl-C removes its own; one killed outright (SIGKILL, out of memory) cannot, so every new
staging folder first removes the ones in its folder whose process is gone. Writing errors a user can fix
(a file where a folder should be, a read-only or full disk) become one-line :class:`OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hrvit_mobile.errors import HRViTMobileError

log = logging.getLogger("hrvit_mobile")

STAGING_MARK = ".staging-"
# .<name>.staging-<pid>-<anything>: what staging_dir, atomic_write and commit leave while they work
_STAGED_NAME = re.compile(r"^\..+\.staging-(\d+)-[^/]*$")
# errors about the output location itself; anything else is the caller's to report
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_CLEANUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class OutputError(HRViTMobileError):
    """The output location cannot take the files (not a folder, not writable, full)."""


def output_folder(path: Path | str) -> Path:
    """``path`` as an output folder to be: refused in one line when it, or the first of its parents that
    exists, is not a writable folder. Creates nothing, so a refusal leaves no empty folder behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is a file: the output must be a folder (a new or existing one)")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"{existing} is a file, so {path} cannot be a folder: choose another output folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{existing} is not writable: choose a writable output folder")
    return path


def _write_failure(exc: OSError, where: Path) -> OutputError | None:
    reason = _WRITE_ERRNOS.get(exc.errno or 0)
    if reason is None:
        return None
    fix = "free space or choose another output folder" if exc.errno in _FULL else "choose a writable folder"
    return OutputError(f"cannot write into {where}: {reason}; nothing was written ({fix})")


def _make_folder(folder: Path) -> None:
    output_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (_write_failure(exc, folder) or exc) from None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    try:  # killed but not yet reaped by its parent: dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def remove_stale_staging(folder: Path | str) -> list[Path]:
    """Remove the staging folders and files in ``folder`` whose writing process is no longer alive;
    returns what was removed. Those of live processes (a concurrent export) are left alone. Liveness is
    this machine's view: a folder shared with other machines or PID namespaces needs one writer at a time."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        found = _STAGED_NAME.match(entry.name)
        if found is None or _pid_alive(int(found.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed.append(Path(entry.path))
        log.info("removed %s, left by process %s, which is no longer running", entry.path, found.group(1))
    return removed


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived while files were being written: exits with 128 + the signal's number
    once every ``finally`` has run."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def _exit_on_signal(signum: int, frame: object) -> None:
    for sig in _CLEANUP_SIGNALS:  # a second signal ends the process at once
        signal.signal(sig, signal.SIG_DFL)
    raise Terminated(signum)


@contextlib.contextmanager
def _cleanup_on_termination() -> Iterator[None]:
    """SIGTERM/SIGHUP raise :class:`Terminated` (a ``SystemExit``) for the block, so that ``finally``
    clauses run (Python's default ends the process without unwinding). Only where the handler is still the
    default and only in the main thread, where Python delivers signals."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _CLEANUP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                installed[sig] = signal.signal(sig, _exit_on_signal)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


def _staging_prefix(name: str) -> str:
    return f".{name}{STAGING_MARK}{os.getpid()}-"


@contextlib.contextmanager
def staging_dir(out_dir: Path | str, stem: str) -> Iterator[Path]:
    """A scratch folder ``out_dir/.<stem>.staging-<pid>-*`` for building files that :func:`commit` moves
    into place; removed whatever happens, SIGTERM and Ctrl-C included. Stale staging of dead processes
    in ``out_dir`` is removed first."""
    out_dir = Path(out_dir)
    _make_folder(out_dir)
    remove_stale_staging(out_dir)
    with _cleanup_on_termination():
        try:
            tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(stem), dir=out_dir))
        except OSError as exc:
            raise (_write_failure(exc, out_dir) or exc) from None
        try:
            yield tmp
        except OSError as exc:
            # permission errors here may be about an input file; full or read-only is about the output
            failure = _write_failure(exc, out_dir) if exc.errno not in (errno.EACCES, errno.EPERM) else None
            if failure is None:
                raise
            raise failure from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def commit(staged: Path, final: Path) -> Path:
    """Move a staged file or folder onto ``final`` atomically (a folder: the old one is swapped aside,
    then deleted). Another process committing the same name at the same moment: the last one wins, whole."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not staged.is_dir():
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(staged, final)
        return final
    for _ in range(100):
        old = None
        if final.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first
            old = final.with_name(f"{_staging_prefix(final.name)}old-{time.monotonic_ns()}")
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.replace(final, old)
        try:
            os.replace(staged, final)
        except OSError as exc:  # another process put its folder there in between: swap again
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
                raise
            continue
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return final
    raise OutputError(f"{final} kept being replaced by other processes; export to another folder")


def atomic_write(path: Path | str, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all: ``data`` (bytes, UTF-8 text, or a function that writes the file
    it is given, e.g. ``lambda p: torch.save(state, p)``) goes to a staging file beside it, is flushed
    to disk, then renamed over ``path``. The file gets the permissions any new file gets (umask). Stale
    staging of dead processes beside ``path`` is removed first."""
    path = Path(path)
    _make_folder(path.parent)
    remove_stale_staging(path.parent)  # e.g. the half-written checkpoint of a run killed while saving
    with _cleanup_on_termination():
        try:
            fd, name = tempfile.mkstemp(prefix=_staging_prefix(path.name), dir=path.parent)
        except OSError as exc:
            raise (_write_failure(exc, path.parent) or exc) from None
        tmp = Path(name)
        try:
            if callable(data):
                os.close(fd)
                fd = -1
                data(tmp)
                fd = os.open(tmp, os.O_RDONLY)
            else:
                raw = data.encode("utf-8") if isinstance(data, str) else data
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
            os.replace(tmp, path)
        except BaseException as exc:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            tmp.unlink(missing_ok=True)
            failure = _write_failure(exc, path.parent) if isinstance(exc, OSError) else None
            if failure is None:
                raise
            raise failure from None
    return path


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (an .mlpackage)."""
    if path.is_dir():
        return sum(q.stat().st_size for q in path.rglob("*") if q.is_file())
    return path.stat().st_size
