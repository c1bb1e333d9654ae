"""Atomic writes: a file or a whole directory replaced in one rename, fsynced, leftovers cleaned."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import SaveLoadError
from .manifest import MANIFEST_FILE, WEIGHTS_FILE


TMP_TAG, OLD_TAG = "torchslim-tmp", "torchslim-old"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _leftovers(target: Path, tag: str) -> list[Path]:
    prefix = f".{target.name}.{tag}-"
    out = []
    for path in target.parent.glob(f"{prefix}*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            out.append(path)
    return out


def _check_replaceable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise SaveLoadError(f"{target} exists and is not a directory; choose a directory path to save into")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in (MANIFEST_FILE, WEIGHTS_FILE))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise SaveLoadError(
                f"{target} holds files torchslim did not write ({shown}); save replaces the whole directory, "
                f"so choose a new or empty directory"
            )


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a scratch directory; on success it replaces ``target`` by rename, else it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(target)
    for stale in _leftovers(target, TMP_TAG):  # scratch dirs of saves that were killed
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.{TMP_TAG}-{os.getpid()}-", dir=target.parent))
    try:
        yield scratch
        _fsync_dir(scratch)
        if not target.exists():
            os.rename(scratch, target)
        elif _exchange(scratch, target):
            shutil.rmtree(scratch)  # now holds the previous contents
        else:
            # No atomic exchange: move the old directory aside first. A crash between the two renames
            # leaves the previous save complete in the backup, which load() points to.
            backup = target.parent / f".{target.name}.{OLD_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(target, backup)
            os.rename(scratch, target)
            shutil.rmtree(backup, ignore_errors=True)
        _fsync_dir(target.parent)
        for stale in _leftovers(target, OLD_TAG):
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file, fsync and rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def replace_file_atomically(write: Callable[[Path], None], path: Path) -> Path:
    """Call ``write(scratch)`` on a sibling scratch path, fsync it, and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.torchslim-tmp-{os.getpid()}")
    try:
        write(scratch)
        with open(scratch, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return path
