"""Graph API fake: `POST /{id}/messages` for WhatsApp Cloud API and the Instagram Send API."""

from __future__ import annotations

import itertools
from typing import Any

from tests.fakes.provider_server import FakeProvider, Recorded

META_RATE_LIMIT = {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}}


class FakeGraph(FakeProvider):
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        super().__init__()

    def respond(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        path = self.path_of(rec).strip("/").split("/")
        if rec.method != "POST" or path[-1] != "messages":
            return 404, {"error": {"message": "Unknown path", "code": 803}}, {}
        if not rec.headers.get("Authorization", "").startswith("Bearer "):
            return 401, {"error": {"message": "Invalid OAuth access token", "code": 190}}, {}
        body = rec.json()
        n = next(self._ids)
        if body.get("messaging_product") == "whatsapp":
            return 200, {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                         "messages": [{"id": f"wamid.fake{n}"}]}, {}
        return 200, {"recipient_id": body["recipient"]["id"], "message_id": f"mid.fake{n}"}, {}
