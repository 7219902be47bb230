"""WhatsApp Cloud API outbound: `POST /{phone-number-id}/messages` on the Graph API.

Inside the 24-hour customer-service window (since the contact's last inbound message) replies are free-form
text, split to 4096 characters. Outside it WhatsApp only delivers approved templates: the account's
`config["template"]` (`{"name": ..., "language": "en_US"}`) is sent instead, and with no template the send
fails permanently with reason `outside_24h_window`, so the message is recorded failed, never sent free-form.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.models import ChannelAccount, Message, utcnow
from gateways.base import SendError
from gateways.meta import graph
from gateways.outbound import Limit, Plan, ProviderSender, aware, recipient

WINDOW = timedelta(hours=24)
OUTSIDE_WINDOW = "outside_24h_window"


def outside_window_without_template(contact_last_inbound: datetime | None, account: ChannelAccount | None) -> bool:
    """True when WhatsApp would refuse a free-form reply and there is no approved template to send instead."""
    in_window = contact_last_inbound is not None and utcnow() - aware(contact_last_inbound) < WINDOW
    template = ((account.config or {}) if account else {}).get("template") or {}
    return not in_window and not template.get("name")


class WhatsAppSender(ProviderSender):
    channel, label, required = "whatsapp", "WhatsApp account", ("access_token",)
    base_env, base_default = graph.BASE_ENV, graph.DEFAULT_BASE

    def plan(self, session: Session, account: ChannelAccount, creds: dict[str, Any], message: Message) -> Plan:
        contact = recipient(session, message)
        in_window = contact.last_inbound_at is not None and utcnow() - aware(contact.last_inbound_at) < WINDOW
        if in_window:
            parts: list[dict[str, object]] = [
                {"type": "text", "text": {"body": part, "preview_url": False}} for part in self.text_parts(message)
            ]
        else:
            template = (account.config or {}).get("template")
            if not template or not template.get("name"):
                raise SendError(f"{OUTSIDE_WINDOW}: the customer last wrote over 24 hours ago and no approved "
                                "template is configured (ChannelAccount.config['template'])", permanent=True)
            parts = [{"type": "template", "template": {
                "name": template["name"], "language": {"code": template.get("language", "en_US")},
                **({"components": template["components"]} if template.get("components") else {})}}]
        base, guarded = self.api_base(account), self.guarded(account)
        mps = float(account.config.get("messages_per_second", 80))

        def send(_: int, part: dict[str, object]) -> str:
            body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": contact.external_id,
                    **part}
            data = graph.post(base, f"{account.external_id}/messages", creds["access_token"], body, self.timeout,
                              guarded=guarded)
            return str(data["messages"][0]["id"])

        return Plan(parts, send, [Limit(f"whatsapp:{account.external_id}", 1 / mps)])
