"""Instagram outbound: `POST /{ig-account-id}/messages` on the Graph API (Send API), text split to 1000
characters. Replies written by a human agent (author "agent:...") carry the HUMAN_AGENT tag, which Meta
allows for up to 7 days after the customer's last message; bot replies are standard RESPONSE messages."""

from __future__ import annotations

from app.channels import ReplyMode, ReplyPolicy, SendRequest
from app.models import utcnow
from gateways.meta import graph
from gateways.outbound import Limit, Plan, ProviderSender

POLICY = ReplyPolicy(human_agent_tag=True)


class InstagramSender(ProviderSender):
    channel, label, required = "instagram", "Instagram account", ("access_token",)
    base_env, base_default = graph.BASE_ENV, graph.DEFAULT_BASE

    def plan(self, request: SendRequest) -> Plan:
        account = request.account
        mode = POLICY.mode(now=utcnow(), last_inbound_at=request.last_inbound_at, by_human=request.by_human,
                           has_template=False)
        tagging = ({"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"} if mode is ReplyMode.HUMAN_AGENT
                   else {"messaging_type": "RESPONSE"})
        base, guarded = self.api_base(account), self.guarded(account)
        token = str(account.credentials["access_token"])

        def send(_: int, part: str) -> str:
            body = {"recipient": {"id": request.recipient}, "message": {"text": part}, **tagging}
            data = graph.post(base, f"{account.external_id}/messages", token, body, self.timeout, guarded=guarded)
            return str(data["message_id"])

        return Plan(self.text_parts(request), send, [Limit(f"instagram:{account.external_id}", 1 / 20)])
