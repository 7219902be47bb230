"""Every channel's HTTP routes, mounted by `switchboard serve` (and by `switchboard gateway CHANNEL` alone)."""

from __future__ import annotations

from fastapi import APIRouter


def routers(channels: list[str] | None = None) -> list[APIRouter]:
    from gateways.discord.routes import router as discord
    from gateways.instagram.routes import router as instagram
    from gateways.telegram.routes import router as telegram
    from gateways.twilio.routes import router as twilio
    from gateways.ussd.routes import router as ussd
    from gateways.webchat.routes import router as webchat
    from gateways.whatsapp.routes import router as whatsapp

    available = {
        "webchat": webchat,
        "whatsapp": whatsapp,
        "instagram": instagram,
        "telegram": telegram,
        "twilio": twilio,
        "ussd": ussd,
        "discord": discord,
    }
    wanted = channels or list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown}; available: {sorted(available)}")
    return [available[c] for c in wanted]
