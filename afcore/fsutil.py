"""The one atomic writer of af, and the clean-up of what a killed writer leaves behind.

Every file af writes for keeps (.af files, bundles, checkpoints, identity keys, the module cache)
goes through `atomic_output`: a temporary file in the destination's directory, written, fsynced,
renamed over the destination, then the directory fsynced, so that after a crash at any point the
destination holds the old contents or the new, never a mix, and the rename itself is durable.

Temporaries are named ``.<destination name>.<8 random characters>.tmp`` (`TEMP_RE`); a process
killed mid-write (SIGKILL, power loss) leaves one behind, which `clean_stale_temporaries`
removes when the directory's owner opens it again.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["TEMP_RE", "AtomicFile", "atomic_output", "clean_stale_temporaries", "write_file_atomic"]

#: names of the temporaries `atomic_output` creates (``tempfile.mkstemp`` draws 8 of ``[a-z0-9_]``)
TEMP_RE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


@dataclass(frozen=True)
class AtomicFile:
    """The temporary file that `atomic_output` renames into place.

    Attributes:
        fd: its file descriptor, open for writing; owned by `atomic_output` (do not close it).
        path: its path, e.g. to reopen it with other flags.
    """

    fd: int
    path: Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, mode: int | None = None, exclusive: bool = False) -> Iterator[AtomicFile]:
    """Open a temporary file beside ``path``; on a clean exit, make it ``path`` durably.

    On exit the temporary is fsynced, given its mode, renamed over ``path`` (or, with
    ``exclusive``, linked to it unless ``path`` exists) and the directory is fsynced. On any
    exception, ``path`` is left as it was and the temporary is removed.

    Args:
        path: the destination; its directory must exist.
        mode: permission bits of the new file; default: those of the existing ``path``, or
            0o666 minus the umask for a new one.
        exclusive: keep an existing ``path`` (another process won the race) instead of replacing it.

    Yields:
        The `AtomicFile` to write to.

    Raises:
        OSError: when the directory is not writable, the disk is full, and so on.
    """
    path = Path(path)
    directory = path.parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    closed = False
    try:
        yield AtomicFile(fd, Path(temp))
        _fsync_file(fd)
        os.close(fd)
        closed = True
        os.chmod(temp, _mode_for(path, mode))
        if exclusive:
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
            os.unlink(temp)
        else:
            os.replace(temp, path)
    except BaseException:
        if not closed:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def write_file_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None, exclusive: bool = False) -> None:
    """Replace ``path`` with ``data`` through `atomic_output` (readers see the old file or the new one).

    Args:
        path: the destination; its directory must exist.
        data: the new contents.
        mode: as for `atomic_output`.
        exclusive: as for `atomic_output`.

    Raises:
        OSError: when the file cannot be written; ``path`` is unchanged and no temporary is left.
    """
    view = memoryview(data)
    with atomic_output(path, mode=mode, exclusive=exclusive) as out:
        while view:
            view = view[os.write(out.fd, view) :]


def clean_stale_temporaries(directory: str | os.PathLike, *, older_than: float = 0.0) -> int:
    """Remove the temporaries a killed `atomic_output` left in ``directory``.

    Call it only where no other live writer can be mid-write, or give ``older_than`` (a
    directory shared by processes, like the module cache).

    Args:
        directory: the directory to clean; a missing one is fine.
        older_than: remove only temporaries last modified at least this many seconds ago.

    Returns:
        The number of files removed.
    """
    removed = 0
    deadline = time.time() - older_than
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if not TEMP_RE.fullmatch(entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime <= deadline:
                os.unlink(entry.path)
                removed += 1
    return removed


def _mode_for(path: Path, mode: int | None) -> int:
    if mode is not None:
        return mode
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _fsync_file(fd: int) -> None:
    os.fsync(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
