"""What every channel gateway shares.

A gateway's request path is: verify (signature / token, fail closed) -> normalise (provider payload ->
fields of an `InboundMessage`) -> durable enqueue (`app.conversations.service.accept_inbound`, which stores the
message once and publishes it) -> fast 2xx. Nothing slow happens in the request: answering is the
orchestrator's job, delivering the answer is the channel's `Sender`, driven by the outbound stream.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from app.models import ChannelAccount, Message


class SendError(Exception):
    """A typed delivery failure; the dispatcher retries transient ones and records permanent ones."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class Sender(Protocol):
    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        """Deliver one stored outbound message; return the provider's message id, if any.
        Must be safe to call again for the same message (check `message.status` / provider idempotency)."""
        ...
