from __future__ import annotations

from collections.abc import Callable

from app.channels import SendRequest


class WebchatSender:
    """The widget reads its messages from the database: delivering is marking them sent, which the dispatcher
    does in its own transaction, waking the visitor's open event streams and long-polls once it commits."""

    in_process = True

    def send(self, request: SendRequest, record: Callable[[str], None]) -> list[str]:
        return []
