"""A tenant's webhook receiver on 127.0.0.1: records every delivery, answers 200 unless scripted otherwise."""

from __future__ import annotations

from typing import Any

from tests.fakes.provider_server import FakeProvider, Recorded


class WebhookReceiver(FakeProvider):
    def respond(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        return 200, {"ok": True}, {}
