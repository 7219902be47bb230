"""Every channel's HTTP routes, mounted by `switchboard serve` (and by `switchboard gateway CHANNEL` alone)."""

from __future__ import annotations

from fastapi import APIRouter


def routers(channels: list[str] | None = None) -> list[APIRouter]:
    from gateways.webchat.routes import router as webchat

    available = {"webchat": webchat}
    wanted = channels or list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown}; available: {sorted(available)}")
    return [available[c] for c in wanted]
