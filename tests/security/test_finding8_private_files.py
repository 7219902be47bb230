"""Finding 8, files: SWITCHBOARD_HOME, the SQLite database, the object and vector folders, `secret.key` and
`server.json` are the user's alone from the moment they exist (0700 folders, 0600 files), whatever umask the
caller had; secrets are written whole and atomically, and an existing key is never replaced."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.cli_support import run, serving


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _shared(root: Path) -> list[str]:
    """Everything under `root` (itself included) that group or others may read, write or enter."""
    found = [root, *root.rglob("*")]
    return [f"{p} {oct(_mode(p))}" for p in found if not p.is_symlink() and _mode(p) & 0o077]


def test_finding8_home_files_are_private(sb_home: Path) -> None:
    from app import operations
    from app.bootstrap import container
    from app.db import migrate
    from app.keys import current as current_keys

    with _umask(0o022):  # a common default: the code must not rely on its caller's umask
        migrate()
        key = current_keys().encryption[0].secret
        container().object_store.put("t1/knowledge/v1/guides/returns.md", b"# Returns\n")
        operations.write_server_file("http://127.0.0.1:1", "operator-token")
        container().vector_store
    assert _mode(sb_home) == 0o700
    assert _mode(sb_home / "switchboard.db") == 0o600
    assert _mode(sb_home / "keyring.json") == 0o600 and key in (sb_home / "keyring.json").read_text()
    assert _mode(sb_home / "server.json") == 0o600 and "operator-token" in (sb_home / "server.json").read_text()
    objects = sb_home / "objects"
    for folder in (objects, objects / "t1", objects / "t1" / "knowledge" / "v1" / "guides", sb_home / "vectors"):
        assert _mode(folder) == 0o700, folder
    assert _mode(objects / "t1" / "knowledge" / "v1" / "guides" / "returns.md") == 0o600
    assert [p.name for p in sb_home.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    # SQLite's -wal/-shm files take the database's mode. What qdrant-edge writes inside its folder follows the
    # umask (the entry points set 077: the next test), but the folder itself is 0700 already.
    assert [p for p in _shared(sb_home) if not p.startswith(str(sb_home / "vectors"))] == []


def test_finding8_an_existing_world_readable_home_is_tightened(sb_home: Path) -> None:
    from app.config import get_settings
    from app.db import migrate

    sb_home.mkdir(mode=0o755)
    sb_home.chmod(0o755)
    (sb_home / "switchboard.db").touch()
    (sb_home / "switchboard.db").chmod(0o644)
    migrate()
    assert get_settings().home_dir == sb_home
    assert _mode(sb_home) == 0o700 and _mode(sb_home / "switchboard.db") == 0o600


def test_finding8_secret_key_is_written_once_whole_and_private(tmp_path: Path) -> None:
    from app.files import write_private

    target = tmp_path / "secret.key"
    results: dict[int, bool] = {}
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        results[n] = write_private(target, f"key-{n}".encode() * 1000, overwrite=False)

    with _umask(0o000):
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    winners = [n for n, won in results.items() if won]
    assert len(winners) == 1  # one key, never replaced by a later writer
    assert target.read_bytes() == f"key-{winners[0]}".encode() * 1000
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # the losers' temporary files are gone
    assert write_private(target, b"replaced", overwrite=True) and target.read_bytes() == b"replaced"
    assert _mode(target) == 0o600


def test_finding8_cli_and_server_create_private_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with _umask(0o022):  # inherited by the child processes
        created = run(home, "tenant", "create", "acme", "--json")
        assert created.returncode == 0, created.stderr
        with serving(home):
            assert _mode(home / "server.json") == 0o600
            assert _shared(home) == []
    assert _mode(home) == 0o700 and _mode(home / "switchboard.db") == 0o600
    assert _shared(home) == []
