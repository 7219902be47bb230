"""WhatsApp Cloud API outbound: `POST /{phone-number-id}/messages` on the Graph API.

Inside the 24-hour customer-service window (since the contact's last inbound message) replies are free-form
text, split to 4096 characters. Outside it WhatsApp only delivers approved templates: the account's
`config["template"]` (`{"name": ..., "language": "en_US"}`) is sent instead, and with no template the send
fails permanently with reason `outside_24h_window` (the channel's `ReplyPolicy`, gateways/specs.py), so the
message is recorded failed, never sent free-form.
"""

from __future__ import annotations

from datetime import timedelta

from app.channels import ReplyMode, ReplyPolicy, SendRequest
from app.models import utcnow
from gateways.meta import graph
from gateways.outbound import Limit, Plan, ProviderSender

POLICY = ReplyPolicy(window=timedelta(hours=24))


class WhatsAppSender(ProviderSender):
    channel, label, required = "whatsapp", "WhatsApp account", ("access_token",)
    base_env, base_default = graph.BASE_ENV, graph.DEFAULT_BASE

    def plan(self, request: SendRequest) -> Plan:
        account = request.account
        template = account.config.get("template") or {}
        mode = POLICY.mode(now=utcnow(), last_inbound_at=request.last_inbound_at, by_human=request.by_human,
                           has_template=bool(template.get("name")))
        if mode is ReplyMode.TEMPLATE:
            parts: list[dict[str, object]] = [{"type": "template", "template": {
                "name": template["name"], "language": {"code": template.get("language", "en_US")},
                **({"components": template["components"]} if template.get("components") else {})}}]
        else:
            parts = [{"type": "text", "text": {"body": part, "preview_url": False}}
                     for part in self.text_parts(request)]
        base, guarded = self.api_base(account), self.guarded(account)
        mps = float(account.config.get("messages_per_second", 80))
        token = str(account.credentials["access_token"])

        def send(_: int, part: dict[str, object]) -> str:
            body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": request.recipient, **part}
            data = graph.post(base, f"{account.external_id}/messages", token, body, self.timeout, guarded=guarded)
            return str(data["messages"][0]["id"])

        return Plan(parts, send, [Limit(f"whatsapp:{account.external_id}", 1 / mps)])
