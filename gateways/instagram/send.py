"""Instagram outbound: `POST /{ig-account-id}/messages` on the Graph API (Send API), text split to 1000
characters. Replies written by a human agent (author "agent:...") carry the HUMAN_AGENT tag, which Meta
allows for up to 7 days after the customer's last message; bot replies are standard RESPONSE messages."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.models import ChannelAccount, Message
from gateways.meta import graph
from gateways.outbound import Limit, Plan, ProviderSender, recipient


class InstagramSender(ProviderSender):
    channel, label, required = "instagram", "Instagram account", ("access_token",)
    base_env, base_default = graph.BASE_ENV, graph.DEFAULT_BASE

    def plan(self, session: Session, account: ChannelAccount, creds: dict[str, Any], message: Message) -> Plan:
        contact = recipient(session, message)
        human = bool(message.author and message.author.startswith("agent:"))
        tagging = {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"} if human else {"messaging_type": "RESPONSE"}
        base, guarded = self.api_base(account), self.guarded(account)

        def send(_: int, part: str) -> str:
            body = {"recipient": {"id": contact.external_id}, "message": {"text": part}, **tagging}
            data = graph.post(base, f"{account.external_id}/messages", creds["access_token"], body, self.timeout,
                              guarded=guarded)
            return str(data["message_id"])

        return Plan(self.text_parts(message), send, [Limit(f"instagram:{account.external_id}", 1 / 20)])
