"""One training run per output folder at a time: `<output_dir>/run.lock`.

The lock is an exclusive `flock` on that file, which names its holder (process id, host name,
start time) as one JSON object. The kernel drops a flock when its process dies, however it
dies, so a lock file whose flock is free was left by a run that ended without releasing it
(killed, power loss) and is taken over with a warning. Releasing removes the file.

    lock = RunLock.acquire(output_dir)   # FolderInUseError while another run trains there
    ...
    lock.release()
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from ssd.fileio import (
    CANNOT_CREATE_FOLDER,
    CANNOT_WRITE,
    CANNOT_WRITE_IN_FOLDER,
    ORDINARY_FILE_MODE,
    note_failed_action,
)

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
# A lock file removed or replaced between our open() and flock() (its holder released it) is
# opened again; more attempts than this means something keeps replacing it.
MAX_ACQUIRE_ATTEMPTS = 10
# The holder writes its details right after taking the flock: a refused run waits this long for
# them before it names the holder as unknown.
HOLDER_WAIT_S = 1.0
HOLDER_POLL_S = 0.05
# flock errors of filesystems without lock support: the run goes on unlocked, with a warning.
UNSUPPORTED_LOCK_ERRNOS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderInUseError(ValueError):
    """Another live training run holds the output folder's lock; the message names the folder
    and the holder (process id, host, start time)."""


class RunLock:
    """The held lock of one output folder (see the module docstring); `release()` ends it.

    Attributes:
        path: the lock file, `<output_dir>/run.lock`.
        held: True until `release()`.
    """

    def __init__(self, path: Path, fd: int | None, created_folders: list[Path] | None = None):
        self.path = path
        self._fd = fd  # None where the filesystem has no file locks
        self._created_folders = created_folders or []  # deepest first
        self.held = True

    @classmethod
    def acquire(cls, output_dir: str | Path) -> RunLock:
        """Take the lock of `output_dir` (created if missing) for this process.

        Raises:
            FolderInUseError: another live process holds it.
            OSError: the folder cannot be created, or the lock file not created in it or
                written: named by `ssd.fileio.note_failed_action` ("cannot create folder: <folder>",
                "cannot write in folder: <folder>", "cannot write: <lock file>").
        """
        folder = Path(output_dir)
        created = _make_folders(folder)
        path = folder / LOCK_NAME
        for _ in range(MAX_ACQUIRE_ATTEMPTS):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, ORDINARY_FILE_MODE)
            except OSError as err:  # e.g. a read-only folder: about the folder, not run.lock
                _remove_empty(created)
                note_failed_action(err, CANNOT_WRITE_IN_FOLDER, folder, temp=path)
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _wait_for_holder(fd)
                os.close(fd)
                _remove_empty(created)
                raise FolderInUseError(
                    f"{folder} is in use by another training run ({describe_holder(holder)}; lock "
                    f"file {path}); wait for it to finish, or train into another folder with --output"
                ) from None
            except OSError as err:
                os.close(fd)
                if err.errno not in UNSUPPORTED_LOCK_ERRNOS:
                    raise
                logger.warning("Cannot lock %s (%s): this filesystem has no file locks, so another "
                               "run started into %s is not detected", path, err.strerror, folder)
                return cls(path, None, created)
            if _is_current_file(fd, path):
                try:
                    _take_over(fd, path)
                except BaseException as err:  # e.g. a full disk: the lock is not left half-taken
                    os.close(fd)
                    if isinstance(err, OSError):
                        note_failed_action(err, CANNOT_WRITE, path)
                    raise
                return cls(path, fd, created)
            os.close(fd)  # released and removed (or replaced) by its holder meanwhile: again
        raise OSError(f"cannot lock {path}: it was replaced {MAX_ACQUIRE_ATTEMPTS} times while "
                      f"being locked")

    def release(self) -> None:
        """Remove the lock file and drop the flock, then the folders `acquire` created if they
        stayed empty (a run that failed to start leaves nothing behind). Released twice: no-op."""
        if not self.held:
            return
        self.held = False
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                if _is_current_file(fd, self.path):  # removed before unlocking: no one locks it meanwhile
                    self.path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        _remove_empty(self._created_folders)


def describe_holder(holder: dict | None) -> str:
    """"pid 123 on host gpu7, started 2025-01-31T09:12:03+01:00" (or that it is unknown)."""
    if not holder:
        return "holder unknown: the lock file names no process"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def read_holder(fd: int) -> dict | None:
    """The holder details in the open lock file `fd`, or None when it holds none (empty,
    half-written or foreign content)."""
    size = os.fstat(fd).st_size
    try:
        holder = json.loads(os.pread(fd, size, 0).decode("utf-8")) if size else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def this_process() -> dict:
    """{"pid", "host", "started"}: what the lock file says about its holder."""
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": started}


def _take_over(fd: int, path: Path) -> None:
    """Write this process into the freshly locked file `fd`; a previous holder named there ended
    without releasing it, which is logged."""
    if os.fstat(fd).st_size:
        logger.warning("Took over the lock %s left by a run that ended without releasing it (%s)",
                       path, describe_holder(read_holder(fd)))
    content = (json.dumps(this_process()) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, content, 0)
    os.fsync(fd)


def _wait_for_holder(fd: int) -> dict | None:
    """The holder details of a lock file another process holds; they are written just after it
    took the flock, so an empty file is read again for up to HOLDER_WAIT_S."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    holder = read_holder(fd)
    while holder is None and time.monotonic() < deadline:
        time.sleep(HOLDER_POLL_S)
        holder = read_holder(fd)
    return holder


def _is_current_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not removed or replaced since)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, deepest first."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_empty([path for path in missing if path.exists()])  # those created before it
        note_failed_action(err, CANNOT_CREATE_FOLDER, folder)
        raise
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote files), or already gone
            return
