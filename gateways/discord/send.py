"""Discord outbound: completing the deferred interaction response.

The interactions endpoint answers every command, button and modal with a deferred response (type 5), so the
user sees "thinking..." until the reply edits that original response
(`PATCH /webhooks/{application id}/{interaction token}/messages/@original`). Further parts of a long reply, and
any later reply to an interaction whose original response is already written, are follow-ups
(`POST /webhooks/{application id}/{interaction token}`). Both are authorised by the interaction token alone,
which Discord honours for 15 minutes: a reply to an older interaction fails permanently without a request.
Text is split to Discord's 2000 characters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ChannelAccount, Message, utcnow
from gateways.base import SendError
from gateways.common import (
    LIMITS,
    Limit,
    RateLimiter,
    aware,
    get_rate_limiter,
    http_json,
    replied_inbound,
    require_account_row,
    send_parts,
    split_text,
    with_retries,
)

DEFAULT_BASE = "https://discord.com/api/v10"
TOKEN_LIFETIME = timedelta(minutes=15)
EXPIRED = "discord_interaction_expired"
# Mentions in the reply text stay plain text: a customer must not be able to make the bot ping @everyone.
NO_MENTIONS: dict[str, list[str]] = {"parse": []}


def default_base_url() -> str:
    return os.environ.get("SWITCHBOARD_DISCORD_BASE_URL", DEFAULT_BASE)


def retry_after(response: httpx.Response) -> str | None:
    """Discord's 429 body carries `retry_after` in (fractional) seconds; the header is rounded up."""
    try:
        value = response.json().get("retry_after")
    except ValueError:
        value = None
    return str(value) if value is not None else response.headers.get("Retry-After")


def original_taken(session: Session, message: Message, interaction: Message) -> bool:
    """Whether another reply already wrote this interaction's original response (editing it again would
    replace that answer)."""
    others = session.scalars(
        select(Message).where(
            Message.conversation_id == message.conversation_id,
            Message.direction == "out",
            Message.id != message.id,
            Message.meta["discord_interaction"].as_string() == interaction.id,
        )
    )
    return any((m.meta or {}).get("provider_ids") for m in others)


class DiscordSender:
    def __init__(self, base_url: str | None = None, limiter: RateLimiter | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.limiter = limiter
        self.timeout = timeout
        self.sleep = sleep

    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        account = require_account_row(account, message)
        interaction = replied_inbound(session, message, "interaction_token")
        if interaction is None:
            raise SendError(f"message {message.id} answers no Discord interaction (no interaction token stored)",
                            permanent=True)
        age = utcnow() - aware(interaction.created_at)
        if age >= TOKEN_LIFETIME:
            raise SendError(f"{EXPIRED}: the interaction was received {int(age.total_seconds() // 60)} minutes "
                            "ago and Discord accepts replies to it for 15 minutes only", permanent=True)
        base = (self.base_url or account.config.get("api_base_url") or default_base_url()).rstrip("/")
        hook = f"{base}/webhooks/{account.external_id}/{interaction.meta['interaction_token']}"
        first_is_followup = original_taken(session, message, interaction)
        message.meta = {**(message.meta or {}), "discord_interaction": interaction.id}
        limiter = self.limiter or get_rate_limiter()

        def send_one(index: int, part: str) -> str:
            method, url = ("PATCH", f"{hook}/messages/@original") if index == 0 and not first_is_followup \
                else ("POST", f"{hook}?wait=true")  # wait=true: Discord answers with the message (its id)
            body: dict[str, Any] = {"content": part, "allowed_mentions": NO_MENTIONS}

            def call() -> str:
                limiter.acquire([Limit(f"discord:{account.external_id}", 1 / 50)])
                data = http_json("Discord", method, url, body, timeout=self.timeout, retry_after=retry_after)
                return str(data["id"])
            return with_retries(call, sleep=self.sleep)

        return send_parts(session, message, split_text(message.text, LIMITS["discord"]), send_one)
