"""`switchboard channel ...`: connect a tenant to a provider and list its channels.

Mounted by app/cli.py with `cli.add_typer(channel_app, name="channel")`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from sqlalchemy import select

from app.config import get_settings

channel_app = typer.Typer(help="Connect tenants to WhatsApp, Instagram, Telegram, Twilio, USSD and Discord.",
                          no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@channel_app.command("add")
def add(
    tenant: Annotated[str, typer.Option(help="Tenant slug.")],
    type_: Annotated[str, typer.Option("--type", help="whatsapp|instagram|telegram|twilio|ussd|discord")],
    account_id: Annotated[str | None, typer.Option(help="Phone number id / Instagram account id / bot id "
                                                        "(from the token) / Twilio number / USSD service code "
                                                        "/ Discord application id.")] = None,
    access_token: Annotated[str | None, typer.Option(help="Meta: system-user access token.")] = None,
    app_secret: Annotated[str | None, typer.Option(help="Meta: app secret (signs webhooks).")] = None,
    verify_token: Annotated[str | None, typer.Option(help="Meta: verify token (generated if omitted).")] = None,
    bot_token: Annotated[str | None, typer.Option(help="Telegram: bot token from @BotFather. Discord (optional): "
                                                       "the bot's token, to post replies later than 15 "
                                                       "minutes.")] = None,
    account_sid: Annotated[str | None, typer.Option(help="Twilio: account SID.")] = None,
    auth_token: Annotated[str | None, typer.Option(help="Twilio: auth token (signs webhooks).")] = None,
    public_key: Annotated[str | None, typer.Option(help="Discord: application public key (hex).")] = None,
    template: Annotated[str | None, typer.Option(help="WhatsApp: approved template name for replies outside "
                                                      "the 24-hour window (NAME or NAME:LANG).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Connect a provider account to a tenant; prints the webhook URL to configure at the provider."""
    from app.bootstrap import container
    from app.db import session_scope
    from app.tenants.channels import ChannelAccountError, create_account
    from app.tenants.service import TenantError, tenant_id_of

    creds: dict[str, Any] = {"access_token": access_token, "app_secret": app_secret, "verify_token": verify_token,
                             "bot_token": bot_token, "account_sid": account_sid, "auth_token": auth_token}
    config: dict[str, Any] = {"public_key": public_key}
    if template:
        name, _, lang = template.partition(":")
        config["template"] = {"name": name, "language": lang or "en_US"}
    request: dict[str, Any] = {"channel": type_, "credentials": {k: v for k, v in creds.items() if v},
                               "config": {k: v for k, v in config.items() if v}}
    if account_id:
        request["external_id"] = account_id
    channels = container().channels
    try:
        tenant_id = tenant_id_of(tenant)
        with session_scope(tenant=tenant_id) as session:
            account, generated = create_account(session, channels, tenant_id, "cli", request)
            result = {"channel_id": account.id, "type": type_, "account_id": account.external_id,
                      "webhook_url": channels.get(type_).webhook_url(get_settings().public_base_url,
                                                                      account.external_id, generated), **generated}
    except (TenantError, ChannelAccountError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo("\n".join(f"{k}: {v}" for k, v in result.items()))


@channel_app.command("list")
def list_(
    tenant: Annotated[str, typer.Option(help="Tenant slug.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The tenant's channel accounts and their webhook URLs (no secrets)."""
    from app.bootstrap import container
    from app.db import session_scope
    from app.models import ChannelAccount
    from app.tenants.channels import webhook_url
    from app.tenants.service import TenantError, tenant_id_of

    channels = container().channels
    try:
        tenant_id = tenant_id_of(tenant)
        with session_scope(tenant=tenant_id) as session:
            rows = session.scalars(select(ChannelAccount).where(ChannelAccount.tenant_id == tenant_id)
                                   .order_by(ChannelAccount.created_at)).all()
            out = [{"channel_id": r.id, "type": r.channel, "account_id": r.external_id, "enabled": r.enabled,
                    "webhook_url": webhook_url(channels, r) or None} for r in rows]
    except TenantError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        for row in out:
            typer.echo(f"{row['type']:<10} {row['account_id']:<28} {row['webhook_url'] or ''}")
