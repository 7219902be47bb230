"""WhatsApp Cloud API outbound: `POST /{phone-number-id}/messages` on the Graph API.

Inside the 24-hour customer-service window (since the contact's last inbound message) replies are free-form
text, split to 4096 characters. Outside it WhatsApp only delivers approved templates: the account's
`config["template"]` (`{"name": ..., "language": "en_US"}`) is sent instead, and with no template the send
fails permanently with reason `outside_24h_window`, so the message is recorded failed, never sent free-form.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.models import ChannelAccount, Message, utcnow
from gateways.base import SendError
from gateways.common import (
    LIMITS,
    Limit,
    RateLimiter,
    aware,
    credentials,
    get_rate_limiter,
    recipient,
    require_account_row,
    send_parts,
    split_text,
    with_retries,
)
from gateways.meta import graph

WINDOW = timedelta(hours=24)
OUTSIDE_WINDOW = "outside_24h_window"


def outside_window_without_template(contact_last_inbound: datetime | None, account: ChannelAccount | None) -> bool:
    """True when WhatsApp would refuse a free-form reply and there is no approved template to send instead."""
    in_window = contact_last_inbound is not None and utcnow() - aware(contact_last_inbound) < WINDOW
    template = ((account.config or {}) if account else {}).get("template") or {}
    return not in_window and not template.get("name")


class WhatsAppSender:
    def __init__(self, base_url: str | None = None, limiter: RateLimiter | None = None, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.limiter = limiter
        self.timeout = timeout
        self.sleep = sleep

    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        account = require_account_row(account, message)
        creds = credentials(account)
        token = creds.get("access_token")
        if not token:
            raise SendError(f"WhatsApp account {account.external_id} has no access_token", permanent=True)
        contact = recipient(session, message)
        in_window = contact.last_inbound_at is not None and utcnow() - aware(contact.last_inbound_at) < WINDOW
        if in_window:
            parts: list[dict[str, object]] = [
                {"type": "text", "text": {"body": part, "preview_url": False}}
                for part in split_text(message.text, LIMITS["whatsapp"])
            ]
        else:
            template = (account.config or {}).get("template")
            if not template or not template.get("name"):
                raise SendError(f"{OUTSIDE_WINDOW}: the customer last wrote over 24 hours ago and no approved "
                                "template is configured (ChannelAccount.config['template'])", permanent=True)
            parts = [{"type": "template", "template": {
                "name": template["name"], "language": {"code": template.get("language", "en_US")},
                **({"components": template["components"]} if template.get("components") else {})}}]
        base = self.base_url or account.config.get("api_base_url") or graph.default_base_url()
        limiter = self.limiter or get_rate_limiter()
        mps = float(account.config.get("messages_per_second", 80))

        def send_one(_: int, part: dict[str, object]) -> str:
            def call() -> str:
                limiter.acquire([Limit(f"whatsapp:{account.external_id}", 1 / mps)])
                body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": contact.external_id,
                        **part}
                data = graph.post(base, f"{account.external_id}/messages", token, body, self.timeout)
                return str(data["messages"][0]["id"])
            return with_retries(call, sleep=self.sleep)

        return send_parts(session, message, parts, send_one)
