"""Connecting a tenant to a provider: creating ChannelAccounts (credentials encrypted) and their webhook URLs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.crypto import encrypt_json
from app.models import ChannelAccount
from app.netguard import check_url

CHANNELS = ("whatsapp", "instagram", "telegram", "twilio", "ussd", "discord")


class ChannelError(ValueError):
    pass


# What each channel needs: the external id that routes its webhooks, and the secrets it verifies with.
REQUIRED_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "whatsapp": ("app_secret", "verify_token", "access_token"),
    "instagram": ("app_secret", "verify_token", "access_token"),
    "telegram": ("bot_token", "secret_token"),
    "twilio": ("account_sid", "auth_token"),
    "ussd": ("webhook_token",),
    "discord": (),
}


def webhook_path(channel: str, external_id: str) -> str:
    return {
        "whatsapp": "/webhooks/whatsapp",
        "instagram": "/webhooks/instagram",
        "telegram": f"/webhooks/telegram/{external_id}",
        "twilio": "/webhooks/twilio",
        "ussd": "/webhooks/ussd",
        "discord": f"/webhooks/discord/{external_id}",
    }[channel]


def webhook_url(channel: str, external_id: str, credentials: dict[str, Any] | None = None) -> str:
    url = get_settings().public_base_url.rstrip("/") + webhook_path(channel, external_id)
    if channel == "ussd" and credentials:
        url += f"?token={credentials['webhook_token']}"
    return url


def add_channel_account(
    session: Session,
    tenant_id: str,
    channel: str,
    external_id: str,
    *,
    credentials: dict[str, Any],
    config: dict[str, Any] | None = None,
    name: str = "",
) -> ChannelAccount:
    if channel not in CHANNELS:
        raise ChannelError(f"unknown channel type {channel!r}; choose one of {', '.join(CHANNELS)}")
    if not external_id:
        raise ChannelError(f"{channel} needs its account id (the id its webhooks are routed by)")
    missing = [k for k in REQUIRED_CREDENTIALS[channel] if not credentials.get(k)]
    if channel == "discord" and not (config or {}).get("public_key"):
        missing.append("public_key")
    if missing:
        raise ChannelError(f"{channel} account is missing {', '.join(missing)}")
    base = (config or {}).get("api_base_url")
    if base is not None and (problem := check_url(str(base))):
        raise ChannelError(f"api_base_url: {problem}")
    taken = session.scalars(
        select(ChannelAccount).where(ChannelAccount.channel == channel, ChannelAccount.external_id == external_id)
    ).first()
    if taken is not None:
        raise ChannelError(f"{channel} account {external_id!r} is already connected"
                           + (" to this tenant" if taken.tenant_id == tenant_id else " to another tenant"))
    account = ChannelAccount(
        tenant_id=tenant_id, channel=channel, external_id=external_id, name=name or f"{channel} {external_id}",
        config=config or {}, credentials_encrypted=encrypt_json(credentials),
    )
    session.add(account)
    session.flush()
    return account
