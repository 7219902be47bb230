"""Channel name -> outbound sender. Channel packages register themselves here."""

from __future__ import annotations

from gateways.base import Sender
from gateways.discord.send import DiscordSender
from gateways.instagram.send import InstagramSender
from gateways.telegram.send import TelegramSender
from gateways.twilio.send import TwilioSender
from gateways.webchat.send import WebchatSender
from gateways.whatsapp.send import WhatsAppSender

# Senders hold no tenant state: each send builds its provider client from that tenant's credentials.
SENDERS: dict[str, Sender] = {
    "webchat": WebchatSender(),
    "whatsapp": WhatsAppSender(),
    "instagram": InstagramSender(),
    "telegram": TelegramSender(),
    "twilio": TwilioSender(),
    "discord": DiscordSender(),
}


def sender_for(channel: str) -> Sender | None:
    return SENDERS.get(channel)
