"""Connecting a tenant to a provider from Python (the CLI, tests): the same validation and storage as the admin
API (app/tenants/channels.py), with the channel's typed models."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.channels import ChannelRegistry
from app.models import ChannelAccount
from app.tenants.channels import ChannelAccountError, create_account


class ChannelError(ValueError):
    pass


def add_channel_account(
    session: Session,
    channels: ChannelRegistry,
    tenant_id: str,
    channel: str,
    external_id: str | None,
    *,
    credentials: dict[str, Any],
    config: dict[str, Any] | None = None,
    name: str = "",
    actor: str = "cli",
) -> ChannelAccount:
    request: dict[str, Any] = {"channel": channel, "name": name, "credentials": credentials, "config": config or {}}
    if external_id:
        request["external_id"] = external_id
    try:
        account, _ = create_account(session, channels, tenant_id, actor, request)
    except ChannelAccountError as exc:
        raise ChannelError(exc.message) from None
    return account
