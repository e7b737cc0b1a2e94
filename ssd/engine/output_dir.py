"""A training run's output folder: one run per folder (its `run.lock`), and the rules for
starting a run where another one left files.

    folder = OutputFolder.claim("runs/shapes", resume=None, overwrite=False)  # locked, checked
    folder.prepare(resume=None, overwrite=False)  # just before training: clean up
    ...
    folder.release()
"""

from __future__ import annotations

import logging
from pathlib import Path

from ssd.engine import checkpoint as ckpt
from ssd.engine.run_lock import RunLock
from ssd.fileio import check_writable_folder, remove_stale_temporaries

logger = logging.getLogger(__name__)

# Run files named in the refusal to start a new run over another one.
MAX_FILES_NAMED = 3


class OutputFolderError(ValueError):
    """A new run would mix with (and prune) another run's files in its output folder."""


class OutputFolder:
    """The output folder of one training run and, on rank 0, its lock.

    Args:
        path: the folder (created by the lock when missing).
        is_main: whether this process writes there (rank 0); other ranks neither lock nor clean.
        lock: the folder's lock, already taken; default: taken by `hold()`.
    """

    def __init__(self, path: str | Path, is_main: bool = True, lock: RunLock | None = None):
        self.path = Path(path)
        self.is_main = is_main
        self._lock = lock

    @classmethod
    def claim(cls, path: str | Path, resume, overwrite: bool, is_main: bool = True) -> OutputFolder:
        """Lock `path` (rank 0) and check that a run may start there, before any heavy work.

        Raises:
            FolderInUseError: another live run holds the folder (names it and its pid, host and
                start time).
            OutputFolderError: see `refuse_another_run`.
            OSError: the folder cannot be created or written in; one line names it and what
                failed ("cannot create folder", "cannot write in folder": ssd.fileio).
        """
        folder = cls(path, is_main)
        folder.hold()
        try:
            refuse_another_run(folder.path, resume, overwrite)
            if is_main:  # only rank 0 writes there
                check_writable_folder(folder.path)
        except BaseException:
            folder.release()
            raise
        return folder

    def hold(self) -> None:
        """Rank 0: take the folder's lock unless it is held (again for a later training).

        Raises:
            FolderInUseError: another live run holds it.
            OSError: the folder cannot be created or written in (named, see RunLock.acquire).
        """
        if self.is_main and (self._lock is None or not self._lock.held):
            self._lock = RunLock.acquire(self.path)

    def release(self) -> None:
        """Let another run use the folder: its run.lock is removed. Released twice: no-op."""
        if self._lock is not None:
            self._lock.release()

    def prepare(self, resume, overwrite: bool) -> None:
        """Refuse to start a new run over another run's files (or delete them with `overwrite`);
        remove the temp files a killed write left behind."""
        refuse_another_run(self.path, resume, overwrite)
        if not self.is_main:
            return
        if overwrite:
            removed = ckpt.remove_run_files(self.path)
            if removed:
                logger.info("--overwrite: deleted the previous run in %s: %s", self.path,
                            ", ".join(p.name for p in removed))
        stale = remove_stale_temporaries(self.path)
        if stale:
            logger.info("Removed %d temporary file(s) left by an interrupted write in %s: %s",
                        len(stale), self.path, ", ".join(p.name for p in stale))


def refuse_another_run(output_dir: Path, resume, overwrite: bool) -> None:
    """OutputFolderError when a new run (not resuming from this folder, no `overwrite`) would
    share `output_dir` with another run's checkpoints or metrics."""
    if overwrite and resume is not None:
        raise OutputFolderError("overwrite starts a new run; it cannot be combined with resume")
    resumes_here = resume is not None and (
        str(resume) == "auto" or Path(resume).resolve().parent == output_dir.resolve())
    existing = [] if resumes_here or overwrite else ckpt.run_files(output_dir)
    if existing:
        named = ", ".join(p.name for p in existing[:MAX_FILES_NAMED])
        raise OutputFolderError(
            f"{output_dir} holds another run ({named}"
            f"{', ...' if len(existing) > MAX_FILES_NAMED else ''}); a new run there would mix "
            f"with and prune its files. Continue it with --resume auto, choose a new folder with "
            f"--output, or delete it and start over with --overwrite"
        )
