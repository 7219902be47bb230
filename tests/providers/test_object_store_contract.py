"""One contract for both object stores: a local folder, and S3 against a real S3-compatible server (moto's
server, started here on 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.providers.storage.base import ObjectNotFound, ObjectStore
from app.providers.storage.local import LocalObjectStore
from app.providers.storage.s3 import S3ObjectStore


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        pytest.skip(f"cannot start moto's S3 server ({exc}): pip install 'moto[server]'")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip("moto's S3 server did not start: is 'moto[server]' installed (dev extra)?")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    s: Any
    if request.param == "local":
        s = LocalObjectStore(tmp_path / "objects")
    else:
        request.getfixturevalue("aws_env")
        endpoint = request.getfixturevalue("s3_endpoint")
        s = S3ObjectStore(bucket=f"sb-{uuid.uuid4().hex[:12]}", endpoint_url=endpoint)
    yield s
    s.close()


def test_put_get_overwrite_delete(store: ObjectStore) -> None:
    store.put("acme/pack/shipping.md", b"# Shipping\n", content_type="text/markdown")
    assert store.get("acme/pack/shipping.md") == b"# Shipping\n"
    store.put("acme/pack/shipping.md", b"v2")
    assert store.get("acme/pack/shipping.md") == b"v2"
    store.delete("acme/pack/shipping.md")
    with pytest.raises(ObjectNotFound):
        store.get("acme/pack/shipping.md")
    store.delete("acme/pack/shipping.md")  # deleting a missing key is not an error


def test_list_by_prefix_keeps_tenants_apart(store: ObjectStore) -> None:
    for key in ("acme/a.md", "acme/sub/b.csv", "acme2/c.md", "globex/a.md"):
        store.put(key, key.encode())
    assert store.list("acme/") == ["acme/a.md", "acme/sub/b.csv"]
    assert store.list("globex/") == ["globex/a.md"]
    assert store.list("initech/") == []


def test_binary_and_empty_payloads_round_trip(store: ObjectStore) -> None:
    blob = bytes(range(256)) * 100
    store.put("acme/blob.bin", blob)
    store.put("acme/empty.txt", b"")
    assert store.get("acme/blob.bin") == blob
    assert store.get("acme/empty.txt") == b""


@pytest.mark.parametrize(
    "key", ["../escape", "acme/../../etc/passwd", "/etc/passwd", "acme//x", "acme/./x", "", "C:/x", "a\\b"]
)
def test_keys_cannot_escape_the_root(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)


def test_local_store_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalObjectStore(tmp_path / "objects")
    (tmp_path / "objects" / "acme").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        store.put("acme/x.md", b"x")
    assert list(outside.iterdir()) == []


def test_s3_store_creates_its_bucket_once(aws_env: None, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # needs a LocationConstraint
    bucket = f"sb-{uuid.uuid4().hex[:12]}"
    first = S3ObjectStore(bucket=bucket, endpoint_url=s3_endpoint)
    first.put("acme/a.md", b"a")
    second = S3ObjectStore(bucket=bucket, endpoint_url=s3_endpoint)  # bucket exists: reused, not emptied
    assert second.get("acme/a.md") == b"a"
    assert second.client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
