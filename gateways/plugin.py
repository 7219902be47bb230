"""How the gateways join a Switchboard process (entry point `switchboard.plugins`, see app/plugins.py): every
channel's spec and sender, its HTTP routes, the `gateway` role and the `switchboard channel` commands."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

    from app.bootstrap import Container
    from app.channels import ChannelSpec
    from app.plugins import Plugins

ROUTES = {
    "webchat": "gateways.webchat.routes",
    "whatsapp": "gateways.whatsapp.routes",
    "instagram": "gateways.instagram.routes",
    "telegram": "gateways.telegram.routes",
    "twilio": "gateways.twilio.routes",
    "ussd": "gateways.ussd.routes",
    "discord": "gateways.discord.routes",
}


def _router(module: str) -> Callable[[], APIRouter]:
    return lambda: import_module(module).router


def channel_specs(container: Container) -> list[ChannelSpec]:
    from gateways.outbound import build_rate_limiter
    from gateways.specs import specs
    from gateways.ussd.routes import sms_account

    limiter = container.shared("send_limiter", lambda: build_rate_limiter(container.settings.redis_url))
    return specs(limiter, lambda tenant_id: sms_account(container, tenant_id))


def _gateway_app(channel: str) -> Any:
    from gateways.server import create_gateway_app

    return create_gateway_app(channel)


def register(plugins: Plugins) -> None:
    from gateways.cli import channel_app

    plugins.channels.append(channel_specs)
    for channel, module in ROUTES.items():
        plugins.routers[channel] = _router(module)
    plugins.roles["gateway"] = _gateway_app
    plugins.cli.append(("channel", channel_app))
