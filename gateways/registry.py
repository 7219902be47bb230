"""Channel name -> outbound sender. Channel packages register themselves here."""

from __future__ import annotations

from gateways.base import Sender
from gateways.webchat.send import WebchatSender

SENDERS: dict[str, Sender] = {"webchat": WebchatSender()}


def sender_for(channel: str) -> Sender | None:
    return SENDERS.get(channel)
