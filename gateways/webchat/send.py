from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.conversations.push import notify_on_commit
from app.models import ChannelAccount, Contact, Conversation, Message


class WebchatSender:
    """The widget reads its messages from the database, so delivering is marking them sent (the dispatcher
    does) and, once that commits, waking the visitor's open event streams and long-polls."""

    needs_lease = False  # nothing leaves the process: the dispatcher's one transaction is the whole delivery

    def send(self, session: Session, account: ChannelAccount | None, message: Message) -> str | None:
        contact_id = session.scalar(
            select(Contact.external_id)
            .join(Conversation, Conversation.contact_id == Contact.id)
            .where(Conversation.id == message.conversation_id, Conversation.tenant_id == message.tenant_id)
        )
        if contact_id is not None:
            notify_on_commit(session, message.tenant_id, contact_id)
        return None
