from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import ChannelAccount, Message


class WebchatSender:
    """The widget pulls its messages from the database, so delivering is marking them deliverable."""

    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        return None
