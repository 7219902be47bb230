"""Object store in a local folder (embedded mode). Keys map to files below `root`, never outside it.
Folders are created 0700 and files 0600: they hold tenants' raw knowledge."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from app.files import private_dir
from app.providers.storage.base import ObjectNotFound, check_key


class LocalObjectStore:
    def __init__(self, root: Path | str) -> None:
        self.root = private_dir(Path(root).expanduser()).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # check_key already refuses '..'; this also catches a symlink inside the root pointing out of it.
        if not path.is_relative_to(self.root):
            raise ValueError(f"object key {key!r} resolves outside the store")
        return path

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(key)
        private_dir(path.parent)
        # Write then rename: a reader never sees half a file, and a crash leaves the old version. mkstemp
        # creates the file 0600.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix` (a plain string prefix, as in S3), sorted."""
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def close(self) -> None:
        """Nothing to release; here so the runtime can close every store the same way."""
