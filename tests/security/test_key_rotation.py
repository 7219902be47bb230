"""Issue 12, keys: credentials are encrypted and tokens signed by keys of their own (app/keys.py), and a rotation
(`switchboard keys rotate`, app/key_rotation.py) changes them while everything keeps working: stored secrets
still decrypt, tokens signed before still verify until they expire, webhooks still verify."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet

from app.keys import TokenError
from tests.cli_support import run, serving
from tests.conftest import Graph
from tests.e2e.conftest import wait
from tests.fakes.fake_telegram import FakeTelegram


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_a_new_home_gets_an_encryption_key_and_a_signing_key_of_its_own(sb_home: Path) -> None:
    from app import keys
    from app.crypto import decrypt_json, encrypt_json

    ring = keys.current()
    assert ring.source == "file" and ring.path == sb_home / "keyring.json"
    assert len(ring.encryption) == len(ring.signing) == 1
    assert ring.encryption[0].secret != ring.signing[0].secret
    Fernet(ring.encryption[0].secret.encode())  # a real Fernet key
    assert decrypt_json(encrypt_json({"token": "t0ps3cret"})) == {"token": "t0ps3cret"}
    assert (sb_home / "keyring.json").stat().st_mode & 0o777 == 0o600
    assert not (sb_home / "secret.key").exists()


def test_a_home_from_before_keyrings_keeps_its_secret_key(sb_home: Path) -> None:
    from app import keys
    from app.crypto import decrypt_json

    sb_home.mkdir(mode=0o700)
    old = Fernet.generate_key()
    (sb_home / "secret.key").write_bytes(old)
    saved_before = Fernet(old).encrypt(json.dumps({"token": "from-last-year"}).encode()).decode()
    ring = keys.current()
    assert ring.encryption[0].secret == ring.signing[0].secret == old.decode()
    assert decrypt_json(saved_before) == {"token": "from-last-year"}


def test_keys_from_the_environment(graph: Graph) -> None:
    """ENCRYPTION_KEYS and SIGNING_KEYS, as the settings read them."""
    from app import keys
    from app.crypto import decrypt_json, encrypt_json

    older, newer = Fernet.generate_key(), Fernet.generate_key()
    saved_before = Fernet(older).encrypt(b'{"token": "old"}').decode()
    graph.configure(encryption_keys=f"{newer.decode()}, {older.decode()}", signing_keys="s" * 48)
    assert keys.current().source == "env"
    assert decrypt_json(saved_before) == {"token": "old"}
    Fernet(newer).decrypt(encrypt_json({"token": "new"}).encode())  # the first key encrypts
    assert not (graph.home / "keyring.json").exists()

    graph.configure(signing_keys=None)
    with pytest.raises(keys.KeyringError, match="SWITCHBOARD_SIGNING_KEYS is not set"):
        keys.current()
    graph.configure(encryption_keys="not-a-fernet-key", signing_keys="s" * 48)
    with pytest.raises(keys.KeyringError, match="is not a Fernet key: generate one with"):
        encrypt_json({})


def _stored_secrets() -> dict[str, Any]:
    """One stored secret of every kind, as the admin API would store them."""
    from app.crypto import encrypt_json
    from app.db import migrate, session_scope
    from app.models import ChannelAccount, Tenant, TenantWebhook

    migrate()
    with session_scope(cross_tenant="tests") as session:
        tenant = Tenant(slug="acme", name="Acme", llm_api_key_encrypted=encrypt_json({"api_key": "sk-acme"}),
                        llm_provider_keys_encrypted=encrypt_json({"backup": "sk-backup"}))
        session.add(tenant)
        session.flush()
        account = ChannelAccount(tenant_id=tenant.id, channel="telegram", external_id="acme-bot", config={},
                                 credentials_encrypted=encrypt_json({"bot_token": "123:abc"}))
        hook = TenantWebhook(tenant_id=tenant.id, url="https://hooks.example.com/x",
                             secret_encrypted=encrypt_json({"secret": "whsec"}))
        session.add_all([account, hook])
        session.flush()
        return {"tenant": tenant.id, "account": account.id, "hook": hook.id}


def _ciphertexts() -> list[str]:
    from sqlalchemy import select

    from app.db import session_scope
    from app.key_rotation import ENCRYPTED_COLUMNS

    with session_scope(cross_tenant="tests") as session:
        return [token for model, name in ENCRYPTED_COLUMNS
                for token in session.scalars(select(getattr(model, name)).where(getattr(model, name).is_not(None)))]


def test_rotation_re_encrypts_every_secret_and_keeps_old_tokens_valid_until_they_expire(sb_home: Path) -> None:
    from app import keys
    from app.accounts import tokens
    from app.config import get_settings
    from app.crypto import decrypt_json
    from app.key_rotation import rotate, status, token_life_s
    from gateways.webchat import sessions

    _stored_secrets()
    before = _ciphertexts()
    first = keys.current()
    access, _ = tokens.issue_access(tokens.AccessClaims("u1", "t1", "s1"), datetime.now(UTC))
    widget = sessions.issue("w1", "t1", "v_visitor").token

    report = rotate(wait=False)
    second = keys.current()
    assert report.encryption_key == second.encryption[0].id != first.encryption[0].id
    assert report.signing_key == second.signing[0].id != first.signing[0].id
    assert report.reencrypted == {"tenants.llm_api_key_encrypted": 1, "tenants.llm_provider_keys_encrypted": 1,
                                  "channel_accounts.credentials_encrypted": 1, "tenant_webhooks.secret_encrypted": 1}
    assert report.on_old_keys == 0
    after = _ciphertexts()
    assert len(after) == 4 and not set(after) & set(before)
    assert sorted((decrypt_json(t) for t in after), key=json.dumps) == sorted(
        [{"api_key": "sk-acme"}, {"backup": "sk-backup"}, {"bot_token": "123:abc"}, {"secret": "whsec"}],
        key=json.dumps)
    for token in after:  # the new key alone decrypts them all
        second.primary_fernet.decrypt(token.encode())
    assert status()["encryption_keys"][0]["secrets"] == 4 and status()["encryption_keys"][1]["secrets"] == 0

    # Tokens signed before the rotation still verify; new ones are signed (and named) by the new key.
    assert tokens.read_access(access).user_id == "u1"
    assert sessions.verify("w1", widget).contact_id == "v_visitor"
    fresh_access, _ = tokens.issue_access(tokens.AccessClaims("u1", "t1", "s1"), datetime.now(UTC))
    fresh_widget = sessions.issue("w1", "t1", "v_visitor").token
    assert _kid(fresh_access) != _kid(access) and _kid(fresh_widget) != _kid(widget)
    retire_after = status()["signing_keys"][1]["retire_after"]
    expected = datetime.now(UTC) + timedelta(seconds=token_life_s(get_settings()))
    assert abs(datetime.fromisoformat(retire_after.replace("Z", "+00:00")) - expected) < timedelta(minutes=1)

    # A rotation after the old tokens' lifetime drops the first signing key (its tokens stop verifying) and the
    # encryption key retired by the first rotation, which nothing uses any more.
    later = datetime.now(UTC) + timedelta(seconds=token_life_s(get_settings()) + 60)
    third = rotate(now=later, wait=False)
    assert first.signing[0].id in third.dropped and first.encryption[0].id in third.dropped
    ring = keys.current()
    assert [k.id for k in ring.encryption] == [third.encryption_key, second.encryption[0].id]
    assert [k.id for k in ring.signing] == [third.signing_key, second.signing[0].id]
    sessions._verified.clear()
    with pytest.raises(TokenError):
        sessions.verify("w1", widget)
    with pytest.raises(TokenError):
        tokens.read_access(access)
    assert sessions.verify("w1", fresh_widget).contact_id == "v_visitor"  # signed by a key still kept
    assert sorted(decrypt_json(t)["api_key"] for t in _ciphertexts() if "api_key" in decrypt_json(t)) == ["sk-acme"]


def test_a_token_under_a_key_that_is_not_in_the_keyring_is_refused(sb_home: Path) -> None:
    from app.accounts import tokens
    from gateways.webchat import sessions

    stranger = sessions.derive(b"x" * 64)
    claims = {"iss": sessions.ISSUER, "aud": "widget:w1", "sub": "v_x", "tid": "t1",
              "iat": datetime.now(UTC), "exp": datetime.now(UTC) + timedelta(hours=1)}
    ours = sessions._keys()[0][0]
    for headers in ({"kid": ours}, {"kid": "nope"}, None):  # naming our key does not help
        forged = jwt.encode(claims, stranger, algorithm="HS256", headers=headers)
        with pytest.raises(TokenError):
            sessions.verify("w1", forged)
    with pytest.raises(TokenError):
        tokens.read_access(jwt.encode({"sub": "u"}, tokens.derive(b"y" * 64), algorithm="HS256"))


def test_rotation_while_serve_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real commands: `serve` keeps running while `switchboard keys rotate` runs in another process."""
    monkeypatch.setenv("OUTBOUND_ALLOW_HOSTS", "127.0.0.1")  # the fake Telegram listens on loopback
    home = tmp_path / "home"
    created = run(home, "tenant", "create", "acme", "--json")
    assert created.returncode == 0, created.stderr
    admin = {"Authorization": f"Bearer {json.loads(created.stdout)['admin_api_key']}"}
    fake = FakeTelegram()
    try:
        with serving(home) as url, httpx.Client(base_url=url, timeout=30) as client:
            schemas = client.get("/openapi.json").json()["components"]["schemas"]
            (example,) = [s["examples"][0] for name, s in schemas.items()
                          if name.endswith("ChannelIn") and s["examples"][0]["channel"] == "telegram"]
            response = client.post("/admin/v1/channels", headers=admin, json=example)
            assert response.status_code == 201, response.text
            account, secret = response.json(), response.json()["setup"]["secret_token"]
            response = client.patch(f"/admin/v1/channels/{account['id']}", headers=admin,
                                    json={"config": {"api_base_url": fake.url}})
            assert response.status_code == 200, response.text
            path = "/" + account["webhook_url"].split("/", 3)[3]
            channels = client.get("/admin/v1/channels", headers=admin).json()["channels"]
            widget = next(c["external_id"] for c in channels if c["channel"] == "webchat")
            opened = client.post(f"/widget/v1/{widget}/sessions", json={})
            assert opened.status_code == 201, opened.text
            old_token = opened.json()["token"]

            def ask(n: int, token: str = secret) -> httpx.Response:
                update = {"update_id": n, "message": {
                    "message_id": n, "date": int(time.time()), "text": f"question {n}",
                    "chat": {"id": 4242, "type": "private"}, "from": {"id": 4242, "is_bot": False}}}
                return client.post(path, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": token})

            assert ask(1).status_code == 200
            wait("first reply on Telegram", lambda: len(fake.texts()) >= 1, timeout=90)

            rotated = run(home, "keys", "rotate", "--json")
            assert rotated.returncode == 0, rotated.stderr
            report = json.loads(rotated.stdout)
            assert report["reencrypted"]["channel_accounts.credentials_encrypted"] >= 1
            assert report["on_old_keys"] == 0

            # The running server took the new keys: the webhook secret and the bot token (re-encrypted under
            # the new key) still work, a wrong secret is still refused, the visitor's old token still reads,
            # and a new session token is signed by the new key.
            # (`rotate` waited keys.RELOAD_S after writing the keyring: serve re-read it at its next use.)
            assert ask(2).status_code == 200
            wait("reply on Telegram after the rotation", lambda: len(fake.texts()) >= 2, timeout=90)
            assert ask(3, "wrong-secret").status_code in (401, 403)
            read = client.get(f"/widget/v1/{widget}/messages", headers={"Authorization": f"Bearer {old_token}"})
            assert read.status_code == 200, read.text
            new_token = client.post(f"/widget/v1/{widget}/sessions", json={}).json()["token"]
            assert _kid(new_token) != _kid(old_token)
            assert report["signing_key"] != report["signing_keys"][1]["id"]
            status = json.loads(run(home, "keys", "status", "--json").stdout)
            assert status["encryption_keys"][0]["secrets"] >= 1 and status["encryption_keys"][1]["secrets"] == 0
    finally:
        fake.close()
