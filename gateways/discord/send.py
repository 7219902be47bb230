"""Discord outbound: completing the deferred interaction response.

The interactions endpoint answers every command, button and modal with a deferred response (type 5), so the
user sees "thinking..." until the reply edits that original response
(`PATCH /webhooks/{application id}/{interaction token}/messages/@original`). Further parts of a long reply, and
any later reply to an interaction whose original response is already written, are follow-ups
(`POST /webhooks/{application id}/{interaction token}`). Both are authorised by the interaction token alone,
which Discord honours for 15 minutes. A later reply (an agent's, typically, after an escalation) goes to the
interaction's channel as a bot message mentioning the customer (`POST /channels/{channel id}/messages`,
`Authorization: Bot <token>`) when the channel account has a `bot_token`; without one it fails permanently,
without a request, and says how to fix it. Text is split to Discord's 2000 characters.
"""

from __future__ import annotations

from datetime import timedelta

import httpx

from app.channels import Permanent, SendRequest
from app.models import utcnow
from gateways.outbound import LIMITS, Limit, Plan, ProviderSender, aware, http_json, split_text

TOKEN_LIFETIME = timedelta(minutes=15)
# Past this age an edit could race the token's expiry: go through the channel instead.
LATE = TOKEN_LIFETIME - timedelta(seconds=30)
EXPIRED = "discord_interaction_expired"
# Mentions in the reply text stay plain text: a customer must not be able to make the bot ping @everyone.
NO_MENTIONS: dict[str, list[str]] = {"parse": []}


def retry_after(response: httpx.Response) -> str | None:
    """Discord's 429 body carries `retry_after` in (fractional) seconds; the header is rounded up."""
    try:
        value = response.json().get("retry_after")
    except ValueError:
        value = None
    return str(value) if value is not None else response.headers.get("Retry-After")


class DiscordSender(ProviderSender):
    # No required credential: the interaction token, valid 15 minutes, authorises the reply; an optional
    # `bot_token` lets later replies through the channel.
    channel, label = "discord", "Discord application"
    base_env, base_default = "SWITCHBOARD_DISCORD_BASE_URL", "https://discord.com/api/v10"

    def plan(self, request: SendRequest) -> Plan:
        interaction = request.answers
        if interaction is None or not interaction.meta.get("interaction_token"):
            raise Permanent(f"message {request.message_id} answers no Discord interaction (no interaction token "
                            "stored)")
        account = request.account
        age = utcnow() - aware(interaction.created_at)
        if age >= LATE:
            return self.channel_plan(request, age)
        hook = f"{self.api_base(account)}/webhooks/{account.external_id}/{interaction.meta['interaction_token']}"
        # Another reply already wrote this interaction's original response: editing it again would replace it.
        first_is_followup = request.answered_before

        def send(index: int, part: str) -> str:
            method, url = ("PATCH", f"{hook}/messages/@original") if index == 0 and not first_is_followup \
                else ("POST", f"{hook}?wait=true")  # wait=true: Discord answers with the message (its id)
            body = {"content": part, "allowed_mentions": NO_MENTIONS}
            data = http_json("Discord", method, url, body, timeout=self.timeout, retry_after=retry_after,
                             guarded=self.guarded(account))
            return str(data["id"])

        return Plan(self.text_parts(request), send, [Limit(f"discord:{account.external_id}", 1 / 50)])

    def channel_plan(self, request: SendRequest, age: timedelta) -> Plan:
        """The reply as bot messages in the interaction's channel, the first mentioning the customer (and
        pinging nobody else)."""
        account, creds = request.account, request.account.credentials
        channel_id = request.answers.meta.get("channel_id") if request.answers else None
        minutes = int(age.total_seconds() // 60)
        if not creds.get("bot_token") or not channel_id:
            raise Permanent(
                f"{EXPIRED}: the interaction was received {minutes} minutes ago and Discord accepts replies to it "
                "for 15 minutes only; give the channel account a bot token (switchboard channel add --type discord "
                "--bot-token ...) to post later replies in the customer's channel")
        customer = request.recipient
        mention = f"<@{customer}> " if customer else ""
        url = f"{self.api_base(account)}/channels/{channel_id}/messages"
        headers = {"Authorization": f"Bot {creds['bot_token']}"}
        allowed = {"parse": [], "users": [customer]} if customer else NO_MENTIONS

        def send(index: int, part: str) -> str:
            body = {"content": mention + part if index == 0 else part, "allowed_mentions": allowed}
            data = http_json("Discord", "POST", url, body, timeout=self.timeout, headers=headers,
                             retry_after=retry_after, guarded=self.guarded(account))
            return str(data["id"])

        parts = split_text(request.text, LIMITS[self.channel] - len(mention))
        return Plan(parts, send, [Limit(f"discord:{account.external_id}", 1 / 50),
                                  Limit(f"discord:channel:{channel_id}", 1.0)])
