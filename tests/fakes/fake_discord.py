"""Discord interaction webhooks fake: edit the original response
(`PATCH /webhooks/{application id}/{token}/messages/@original`) and create follow-ups
(`POST /webhooks/{application id}/{token}[?wait=true]`), authorised by the interaction token alone; and bot
messages in a channel (`POST /channels/{channel id}/messages`, `Authorization: Bot <token>`). Discord's error
bodies (`{"message", "code"}`, 429 `{"retry_after", "global"}`) and 2000-character limit."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.provider_server import FakeProvider, Recorded, Scripted

DISCORD_EPOCH_MS = 1420070400000


def rate_limited(retry_after: float, header: str | None = None) -> Scripted:
    """A 429 as Discord sends it: the precise wait in the JSON body, a rounded-up one in the header."""
    headers = {"Retry-After": header or str(int(retry_after) + 1), "X-RateLimit-Scope": "user"}
    return Scripted(429, {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                    headers)


@dataclass
class Interaction:
    application_id: str
    original_id: str
    original: str | None = None  # None while the deferred "thinking..." message stands
    followups: list[str] = field(default_factory=list)


class FakeDiscord(FakeProvider):
    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self.interactions: dict[str, Interaction] = {}
        self.bot_tokens: set[str] = set()
        self.channels: dict[str, list[dict[str, Any]]] = {}  # channel id -> the bot messages posted there
        super().__init__()

    def snowflake(self) -> str:
        return str(((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | next(self._seq))

    def open_interaction(self, application_id: str, token: str) -> Interaction:
        """What Discord holds once the interactions endpoint has answered with a deferred response."""
        interaction = Interaction(application_id, self.snowflake())
        self.interactions[token] = interaction
        return interaction

    def respond(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        parts = self.path_of(rec).strip("/").split("/")
        if len(parts) == 3 and parts[0] == "channels" and parts[2] == "messages":
            return self._channel_message(rec, parts[1])
        if len(parts) < 3 or parts[0] != "webhooks":
            return 404, {"message": "404: Not Found", "code": 0}, {}
        app_id, token, rest = parts[1], parts[2], parts[3:]
        interaction = self.interactions.get(token)
        if interaction is None:  # expired (after 15 minutes) or never issued
            return 401, {"message": "Invalid Webhook Token", "code": 50027}, {}
        if interaction.application_id != app_id:
            return 404, {"message": "Unknown Webhook", "code": 10015}, {}
        content, invalid = self._content(rec)
        if invalid:
            return invalid
        if rec.method == "PATCH" and rest == ["messages", "@original"]:
            interaction.original = content
            return 200, self._message(interaction, interaction.original_id, content), {}
        if rec.method == "POST" and not rest:
            message_id = self.snowflake()
            interaction.followups.append(content)
            wait = parse_qs(urlsplit(rec.path).query).get("wait") == ["true"]
            return (200, self._message(interaction, message_id, content), {}) if wait else (204, b"", {})
        return 405, {"message": "405: Method Not Allowed", "code": 0}, {}

    @staticmethod
    def _content(rec: Recorded) -> tuple[str, tuple[int, Any, dict[str, str]] | None]:
        body = rec.json() if rec.body else {}
        content = str(body.get("content") or "")
        if not content:
            return content, (400, {"message": "Cannot send an empty message", "code": 50006}, {})
        if len(content) > 2000:
            return content, (400, {"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}, {})
        return content, None

    def _channel_message(self, rec: Recorded, channel_id: str) -> tuple[int, Any, dict[str, str]]:
        if rec.method != "POST":
            return 405, {"message": "405: Method Not Allowed", "code": 0}, {}
        auth = rec.headers.get("authorization") or rec.headers.get("Authorization") or ""
        if not auth.startswith("Bot ") or auth[4:] not in self.bot_tokens:
            return 401, {"message": "401: Unauthorized", "code": 0}, {}
        if channel_id not in self.channels:
            return 403, {"message": "Missing Access", "code": 50001}, {}
        content, invalid = self._content(rec)
        if invalid:
            return invalid
        message = {"id": self.snowflake(), "type": 0, "content": content, "channel_id": channel_id,
                   "author": {"id": "bot", "username": "fakebot", "bot": True},
                   "allowed_mentions": rec.json().get("allowed_mentions"),
                   "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
        self.channels[channel_id].append(message)
        return 200, message, {}

    @staticmethod
    def _message(interaction: Interaction, message_id: str, content: str) -> dict[str, Any]:
        return {"id": message_id, "type": 20, "content": content, "channel_id": "1000",
                "webhook_id": interaction.application_id, "application_id": interaction.application_id,
                "author": {"id": interaction.application_id, "username": "fakebot", "bot": True},
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "flags": 0}

    def calls(self) -> list[tuple[str, str]]:
        """(method, path) of every request, in order."""
        return [(r.method, self.path_of(r)) for r in self.requests]
