"""Instagram outbound: `POST /{ig-account-id}/messages` on the Graph API (Send API), text split to 1000
characters. Replies written by a human agent (author "agent:...") carry the HUMAN_AGENT tag, which Meta
allows for up to 7 days after the customer's last message; bot replies are standard RESPONSE messages."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.models import ChannelAccount, Message
from gateways.base import SendError
from gateways.common import (
    LIMITS,
    Limit,
    RateLimiter,
    credentials,
    get_rate_limiter,
    recipient,
    require_account_row,
    send_parts,
    split_text,
    with_retries,
)
from gateways.meta import graph


class InstagramSender:
    def __init__(self, base_url: str | None = None, limiter: RateLimiter | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.limiter = limiter
        self.timeout = timeout
        self.sleep = sleep

    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        account = require_account_row(account, message)
        token = credentials(account).get("access_token")
        if not token:
            raise SendError(f"Instagram account {account.external_id} has no access_token", permanent=True)
        contact = recipient(session, message)
        human = bool(message.author and message.author.startswith("agent:"))
        tagging = {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"} if human else {"messaging_type": "RESPONSE"}
        base = self.base_url or account.config.get("api_base_url") or graph.default_base_url()
        limiter = self.limiter or get_rate_limiter()

        def send_one(_: int, part: str) -> str:
            def call() -> str:
                limiter.acquire([Limit(f"instagram:{account.external_id}", 1 / 20)])
                body = {"recipient": {"id": contact.external_id}, "message": {"text": part}, **tagging}
                data = graph.post(base, f"{account.external_id}/messages", token, body, self.timeout)
                return str(data["message_id"])
            return with_retries(call, sleep=self.sleep)

        return send_parts(session, message, split_text(message.text, LIMITS["instagram"]), send_one)
