"""Small file helpers: atomic writes (nothing half-written survives a crash) and JSONL.

Files and directories are built beside their target under a hidden temporary name, flushed
to disk (``fsync`` of every file and of the parent directory), then renamed into place, so a
crash or a full disk leaves either the old version or the new one, never a mix. What is
written gets the user's umask, like any file the user's programs write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a hidden staging directory and swap it in for ``path`` on success.

    The caller writes into the yielded directory. On success every file is fsynced, an
    existing ``path`` is moved aside, the new one renamed into place, the parent fsynced and
    the old one deleted; on failure the staging directory is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700 directories
        yield staging
        _fsync_tree(staging)
        previous = None
        if target.exists():
            previous = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, previous)
        os.replace(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def check_writable_dir(path: str | os.PathLike[str], key: str) -> None:
    """Raise one line naming ``key`` unless ``path`` is, or can become, a writable directory.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    target = Path(path)
    for parent in [target, *target.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{key}: {parent} is a file, not a directory; pick another path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{key}: cannot write under {parent} (read-only?); pick another")
            return


def check_writable_file(path: str | os.PathLike[str], key: str) -> None:
    """Raise one line naming ``key`` unless ``path`` can be written as a file."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{key}: {target} is a directory; give a file name such as out.jsonl")
    check_writable_dir(target.parent, key)
