"""Files private to the user running Switchboard, from the moment they exist.

SWITCHBOARD_HOME holds the SQLite database (messages, contacts), the object store (tenants' raw knowledge),
the vector store, `keyring.json` (the keys that decrypt channel credentials and sign tokens) and
`server.json` (the operator token).
Folders are created 0700 and files 0600 by these helpers whatever the umask, and the entry points also set
umask 077 so files that libraries create (SQLite's journal, qdrant-edge's segments) are private too.
Creating first and chmod-ing afterwards would leave a window in which another local user can open the file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def restrict_umask() -> None:
    """Files and folders this process creates from now on are readable by its user only."""
    os.umask(PRIVATE_UMASK)


def _tighten(path: Path, mode: int) -> None:
    """An existing folder or file of ours that others may read (from an older version) loses those bits."""
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(mode)


def private_dir(path: Path) -> Path:
    """`path` as a folder: every missing component created 0700; the folder itself made 0700 if it was not."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process created it meanwhile
            folder.mkdir(mode=DIR_MODE)
            folder.chmod(DIR_MODE)  # mkdir's mode is masked by the umask; never widened by it
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """`path` exists as a file that only its owner can read (created empty if missing)."""
    path = Path(path)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)
    return path


def write_private(path: Path, data: bytes, *, overwrite: bool = True) -> bool:
    """Write `data` to `path` as a 0600 file, atomically: readers see the old content or the new, never half.
    The data goes to a new temporary file in the same folder (created 0600 with O_EXCL, so it is never
    readable by others and never someone else's file), then takes the final name. With `overwrite=False`
    an existing file wins (two processes creating the same secret agree on the first one) and False is
    returned."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails if the name exists: the first writer's content is kept
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: a narrower race, same outcome
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)
