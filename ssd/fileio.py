"""Every file the project reads or writes goes through here.

- `atomic_write`: an output either appears complete, with the permissions of an ordinary file
  (0666 minus the umask), or not at all; the previous file stays intact on failure.
- `safe_torch_load`: `torch.load(weights_only=True)` with numpy data allowed; a file that holds
  pickled code is refused with a message that names it, and nothing in it runs.
- `decode_image_file`: one image decoder (works for non-ASCII paths; a damaged file that
  libjpeg decodes with a warning is read, with one logged warning naming it).
- `staged_output`: a temp path for writers that need a file name (exporters), published whole.
- `describe_os_error`: an OSError as one line "<what failed>: <path>: <reason>".
- `remove_stale_temporaries`: the temp files a killed process left behind.
- `safe_file_name` / `safe_file_names`: a name taken from data (class name, image id, file
  stem) as one harmless file-name component; `path_inside`: a relative path read from an
  annotation file, refused unless it stays inside its folder. Names from data never steer
  where a file is read or written.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import threading
import unicodedata
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

# Temp files are ".<final name>.<random>.tmp" next to the final file.
TEMP_SUFFIX = ".tmp"
_TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")

# Default permission bits of a new file before the umask is applied (what open() uses).
ORDINARY_FILE_MODE = 0o666

# What failed, named on an OSError by `note_failed_action` (read by `describe_os_error`).
FAILED_ACTION_ATTRIBUTE = "failed_action"
CANNOT_WRITE = "cannot write"
CANNOT_CREATE_FOLDER = "cannot create folder"
CANNOT_WRITE_IN_FOLDER = "cannot write in folder"
CANNOT_ACCESS = "cannot access"
# Errors that only writing causes: what failed is a write even when no one said so.
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}


# A file-name component made from data is at most this many UTF-8 bytes: common file systems
# allow 255, and the rest is left for the prefixes and suffixes added to it
# ("comp4_det_test_" + name + ".txt", stem + "-2.jpeg").
MAX_NAME_BYTES = 200
# Characters kept in a name besides letters, marks and digits of any script.
NAME_PUNCTUATION = frozenset(" -_.")
# What every other character of a name (a path separator, NUL, a control character) becomes.
NAME_REPLACEMENT = "_"
# Hex digits of the SHA-256 of the original name appended to a rewritten one, so that the
# result differs from every name kept as it is and from other rewritten names.
NAME_TAG_DIGITS = 8


class UnsafeFileError(ValueError):
    """A file cannot be read as plain data (tensors, containers, numbers, strings, numpy)."""


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, content: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write `content` to `path` atomically; parent folders are created.

    Args:
        path: the final file.
        content: bytes, text (written as UTF-8), or a function that writes to a binary stream
            (e.g. ``lambda stream: torch.save(obj, stream)``).

    The data goes to a temp file in the same folder, is flushed and fsynced, gets the mode of
    an ordinary new file (0666 minus the umask; mkstemp would leave 0600) and is renamed over
    `path`. On any error the temp file is removed and `path` is left as it was; an OSError
    names `path` (not the temp file) and what failed (see `describe_os_error`).
    Returns `path`.
    """
    path = Path(path)
    _create_folder(path.parent)
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX,
                                             dir=path.parent)
    except OSError as err:  # named after mkstemp's attempt: name `path` instead
        note_failed_action(err, CANNOT_WRITE, path, temp=err.filename)
        raise
    try:
        with os.fdopen(handle, "wb") as stream:
            if callable(content):
                _write_through(content, stream)
            else:
                stream.write(content.encode("utf-8") if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, ORDINARY_FILE_MODE & ~current_umask())
        os.replace(temp_name, path)
    except BaseException as err:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(err, OSError):
            note_failed_action(err, CANNOT_WRITE, path, temp_name)
        raise
    _fsync_directory(path.parent)
    return path


class _WriteErrorRecorder:
    """A binary stream that remembers the first OSError of its writes (the rest is delegated
    to the wrapped stream)."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.stream.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _write_through(writer: Callable[[IO[bytes]], None], stream: IO[bytes]) -> None:
    """`writer(stream)`; when a write fails and the writer turns the OSError into another
    error (torch.save raises RuntimeError "unexpected pos"), the OSError is raised instead."""
    recorder = _WriteErrorRecorder(stream)
    try:
        writer(recorder)
    except Exception as err:
        if recorder.error is not None and err is not recorder.error:
            raise recorder.error from err
        raise


@contextmanager
def staged_output(path: str | Path) -> Iterator[Path]:
    """A temp file name beside `path` for a writer that needs a name rather than a stream
    (torch.onnx.export, ...): when the block completes, the temp file is published as `path`
    (`publish_staged`); when it raises, it is deleted and `path` is left as it was. An
    OSError names `path` and what failed. Parent folders are created.

        with staged_output("model.onnx") as temp:
            torch.onnx.export(model, args, str(temp))
    """
    path = Path(path)
    _create_folder(path.parent)
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX,
                                             dir=path.parent)
        os.close(handle)
    except OSError as err:  # named after mkstemp's attempt: name `path` instead
        note_failed_action(err, CANNOT_WRITE, path, temp=err.filename)
        raise
    temp = Path(temp_name)
    try:
        yield temp
        publish_staged(temp, path)
    except BaseException as err:
        temp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            note_failed_action(err, CANNOT_WRITE, path, temp)
        raise


def check_writable_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) and create and delete a file in it, so that a command
    whose outputs go there fails before its work rather than after it. Returns `folder`.

    Raises:
        OSError: the folder cannot be created or written (permission denied, read-only file
            system, ...), named by `note_failed_action`.
    """
    folder = Path(folder)
    _create_folder(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        note_failed_action(err, CANNOT_WRITE_IN_FOLDER, folder, temp=err.filename)
        raise
    return folder


def note_failed_action(err: OSError, action: str, path: str | Path,
                       temp: str | Path | None = None) -> OSError:
    """Name on `err` what failed (`action`, e.g. "cannot write") and the file it concerns:
    `path` replaces a missing file name or the name of `path`'s temp file `temp` (not on an
    error raised with a message of its own). An action named earlier (closer to the failure)
    is kept. Returns `err`."""
    if getattr(err, FAILED_ACTION_ATTRIBUTE, None) is None:
        setattr(err, FAILED_ACTION_ATTRIBUTE, action)
    if err.errno is None:  # OSError("message"): a file name would replace the message
        return err
    if err.filename is None or (temp is not None and str(err.filename) == str(temp)):
        err.filename = str(path)
    return err


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: "<what failed>: <path>: <reason>", e.g.
    "cannot write: runs/x/best.pth: File too large". What failed is the action named by
    `note_failed_action`, else "cannot write" for errors only writing causes (disk full,
    file too large, read-only file system, quota), else "cannot access". An error raised
    with a message of its own (no errno) is that message."""
    if err.errno is None or err.strerror is None:
        return str(err)
    action = getattr(err, FAILED_ACTION_ATTRIBUTE, None) or (
        CANNOT_WRITE if err.errno in WRITE_ERRNOS else CANNOT_ACCESS)
    paths = [str(name) for name in (err.filename, err.filename2) if name is not None]
    return ": ".join([action, " -> ".join(paths), err.strerror] if paths else [action, err.strerror])


def _create_folder(folder: Path) -> None:
    """mkdir -p `folder`; an OSError says which folder could not be created."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        note_failed_action(err, CANNOT_CREATE_FOLDER, folder)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` through `atomic_write`."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def publish_staged(staged: str | Path, path: str | Path, keep: bool = True) -> None:
    """Finish a file that another writer (OpenCV's VideoWriter, a stream) filled under a
    temporary name: with `keep`, give it ordinary permissions and rename it to `path`;
    otherwise delete it, leaving `path` as it was."""
    staged = Path(staged)
    if not keep:
        staged.unlink(missing_ok=True)
        return
    os.chmod(staged, ORDINARY_FILE_MODE & ~current_umask())
    os.replace(staged, path)
    _fsync_directory(Path(path).parent)


def replace_directory(staging: str | Path, target: str | Path) -> None:
    """Move a completely written folder `staging` to `target`, replacing an older `target`
    (both renames are atomic; the old folder is deleted after it is out of the way)."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staging, target)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temp files `atomic_write` leaves when its process is killed mid-write
    (".<name>.<random>.tmp" in `folder`). Returns the paths removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if path.is_file() and _TEMP_PATTERN.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- reading
def safe_torch_load(path: str | Path) -> Any:
    """torch.load restricted to tensors, plain containers, numbers, strings and numpy data.

    Raises:
        FileNotFoundError: `path` does not exist.
        UnsafeFileError: the file holds a pickled Python object (code would run to rebuild it),
            is truncated, or is not a file torch.load reads; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise UnsafeFileError(f"{path} is a folder; expected a .pth file")
    if not path.is_file():
        raise FileNotFoundError(f"File not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            # mmap only works for the zip format; the classic 2017 files use the legacy one.
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused is None:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            raise UnsafeFileError(f"{path} is not a PyTorch weights file that torch.load can read "
                                  f"({detail.group(1) if detail else err})") from err
        raise UnsafeFileError(
            f"{path} holds a pickled Python object ({refused.group(1)}; e.g. a whole "
            f"nn.Module or arbitrary code), not only tensors, plain containers and numpy data; "
            f"it is not loaded because unpickling it can run code. Save `model.state_dict()` "
            f"instead; if you trust the file, load it once with pickle loading "
            f"enabled (torch.load's weights_only off) and save its state_dict()"
        ) from err
    except Exception as err:  # torch.load fails on foreign or truncated files in many ways
        raise UnsafeFileError(f"{path} is not a PyTorch weights file that torch.load can read "
                              f"(truncated or not a .pth file: {type(err).__name__}: {err})") from err


def _numpy_data_globals() -> list[Any]:
    """numpy array/scalar constructors: data only, safe to allow in weights_only loading."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtypes]


def decode_image_file(path: str | Path, keep_depth: bool = False) -> np.ndarray | None:
    """Decode an image file with OpenCV; None when it is empty or not a decodable image.

    Args:
        path: the file (non-ASCII paths work: the bytes are read with numpy).
        keep_depth: False -> uint8 [H, W, 3] BGR (grey and alpha converted);
            True -> the file's own depth (8/16-bit, float) and channels ([H, W], [H, W, 3] or
            [H, W, 4]).

    A file that `cv2.imdecode` refuses but `cv2.imread` decodes is used as imread reads it:
    a JPEG cut short, which libjpeg completes after warning "Premature end of JPEG file", as
    OpenCV's imread and Pillow read it. A warning names the file, once per file and process.

    Raises:
        FileNotFoundError / OSError: the file is missing or cannot be read.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    if not data.size:
        return None
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if keep_depth else cv2.IMREAD_COLOR
    image = cv2.imdecode(data, flags)
    if image is None:
        image = _decode_damaged_file(path, flags)
    return image


# Damaged files this process has warned about (a training run decodes each image every epoch).
_reported_damaged: set[str] = set()
_reported_lock = threading.Lock()


def _decode_damaged_file(path: str | Path, flags: int) -> np.ndarray | None:
    """`cv2.imread` of a file `cv2.imdecode` refused (its in-memory reader stops at a
    truncated JPEG; the file reader lets libjpeg complete it); warns the first time per file."""
    image = cv2.imread(str(path), flags)
    if image is None:
        return None
    with _reported_lock:
        first = str(path) not in _reported_damaged
        _reported_damaged.add(str(path))
    if first:
        logger.warning("Image %s is damaged (e.g. a JPEG cut short): using what the decoder "
                       "recovers (libjpeg fills in the missing part)", path)
    return image


# ----------------------------------------------------------------------------- names from data
def safe_file_name(name: str, what: str = "name") -> str:
    """`name` (a class name, image id or file stem read from data) as one file-name component
    that can neither leave its folder nor hide in it.

    A name of letters, marks and digits of any script, spaces, '-', '_' and '.', not starting
    with '.' and at most MAX_NAME_BYTES bytes of UTF-8, is returned unchanged ("traffic light",
    "t-shirt", "v1.2", "café"). Otherwise every other character (path separators, NUL,
    control characters, ...) becomes '_', leading dots become '_', an overlong name is cut,
    and "-<first 8 hex digits of the name's SHA-256>" is appended: "x/../victim" becomes
    "x_.._victim-<tag>", which no unchanged name and no other rewritten name equals.

    Raises:
        ValueError: `name` is not a string or is empty; the message says `what` it is.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} {name!r} cannot name a file; expected a non-empty string")
    safe = _safe_characters(name)
    if safe == name and len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    return _tagged(name, safe)


def safe_file_names(names: Sequence[str], what: str = "name") -> list[str]:
    """`safe_file_name` of each of `names`, checked so that no two distinct names share a file.

    Names that differ only in case ("Car", "car") would share a file on case-insensitive file
    systems (macOS, Windows): the later one gets its tagged form ("car-<tag>") instead.

    Raises:
        ValueError: a name is empty, or two distinct names still map to one file (the message
            names both).
    """
    owners: dict[str, str] = {}  # case-folded file name -> the name written to it
    file_names = []
    for name in names:
        file_name = safe_file_name(name, what)
        if owners.get(file_name.casefold(), name) != name:
            file_name = _tagged(name, _safe_characters(name))
        owner = owners.setdefault(file_name.casefold(), name)
        if owner != name:
            raise ValueError(f"{what}s {owner!r} and {name!r} would be written to the same file "
                             f"{file_name!r}; rename one of them")
        file_names.append(file_name)
    return file_names


def path_inside(folder: str | Path, relative: str | Path, what: str) -> Path:
    """``folder / relative`` for a relative path read from data (an image's file name in an
    annotation file, an image id in a split list), refused when it would lead out of `folder`.

    Sub-folders are fine ("train/0001.jpg"); an absolute path, a path through ".." that ends
    outside `folder`, or a symbolic link inside `folder` that points out of it is not.

    Args:
        folder: the folder the path must stay in.
        relative: the value read from data.
        what: the value's source, for the message (e.g. "COCO annotation file
            instances_val.json: image 3: file_name").

    Returns:
        ``Path(folder) / relative``, not resolved (messages show the path as the data gives it).

    Raises:
        ValueError: the path is empty, holds NUL, is absolute, or resolves outside `folder`;
            the message names the value, `what` and `folder`.
    """
    folder, text = Path(folder), str(relative)
    if not text or "\0" in text or os.path.isabs(text):
        raise ValueError(f"{what} {text!r} is not a relative path; expected a path inside "
                         f"{folder}")
    joined = folder / text
    base, target = folder.resolve(), joined.resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"{what} {text!r} leads out of {folder} (to {target}); expected a "
                         "path inside that folder")
    return joined


def _safe_characters(name: str) -> str:
    """`name` with each character other than a letter, mark or digit of any script or one of
    NAME_PUNCTUATION, and each leading dot (hidden files, "." and ".."), as NAME_REPLACEMENT."""
    kept = "".join(char if char in NAME_PUNCTUATION or unicodedata.category(char)[0] in "LMN"
                   else NAME_REPLACEMENT for char in name)
    visible = kept.lstrip(".")
    return NAME_REPLACEMENT * (len(kept) - len(visible)) + visible


def _tagged(name: str, safe: str) -> str:
    """`safe` (the safe characters of `name`), cut to fit MAX_NAME_BYTES with the tag, plus
    "-" and the first NAME_TAG_DIGITS hex digits of the SHA-256 of `name`."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    tag = "-" + digest[:NAME_TAG_DIGITS]
    head = safe.encode("utf-8", "surrogatepass")[:MAX_NAME_BYTES - len(tag)]
    return head.decode("utf-8", "ignore") + tag
