from __future__ import annotations

from collections.abc import Callable

from app.channels import SendRequest


class WebchatSender:
    """The widget reads its messages from the database: delivering is marking them sent, waking the visitor's open
    event streams and long-polls once that commits. The orchestrator does it in the transaction that stores its
    reply (app/assistant/outcomes.py, `reply`); the dispatcher in its own for the rest (agents' replies, SLA
    notices, a bot reply to a contact who opted out, which it refuses)."""

    in_process = True

    def send(self, request: SendRequest, record: Callable[[str], None]) -> list[str]:
        return []
