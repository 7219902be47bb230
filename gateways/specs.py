"""Every channel as one `ChannelSpec` (app/channels.py): its typed credentials (secrets as `SecretStr`) and
config, webhook path, verifier, parser, sender and reply policy. The admin API and `switchboard channel` create
and update accounts of every type through these models alone (app/tenants/channels.py)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from app.channels import Account, ChannelSpec, NoSettings
from app.netguard import check_url
from gateways.discord import verify as discord_verify
from gateways.discord.send import DiscordSender
from gateways.instagram import parse as instagram_parse
from gateways.instagram.send import POLICY as INSTAGRAM_POLICY
from gateways.instagram.send import InstagramSender
from gateways.meta import verify as meta_verify
from gateways.outbound import RateLimiter
from gateways.telegram import parse as telegram_parse
from gateways.telegram.routes import token_valid as telegram_token_valid
from gateways.telegram.send import TelegramSender
from gateways.twilio import parse as twilio_parse
from gateways.twilio import verify as twilio_verify
from gateways.twilio.send import TwilioSender
from gateways.ussd.send import UssdSender
from gateways.webchat.send import WebchatSender
from gateways.whatsapp import parse as whatsapp_parse
from gateways.whatsapp.send import POLICY as WHATSAPP_POLICY
from gateways.whatsapp.send import WhatsAppSender


def _public(url: str) -> str:
    if problem := check_url(url):
        raise ValueError(problem)
    return url


# A URL a tenant sets and the server calls (a self-hosted Bot API server, a provider proxy): http(s), never
# loopback, private, link-local or metadata addresses (checked again on every connection, app/netguard.py).
ApiBaseURL = Annotated[str, Field(max_length=500, description="Override of the provider's API base URL."),
                       AfterValidator(_public)]


def _generated(nbytes: int, what: str) -> Any:
    return Field(default_factory=lambda: SecretStr(secrets.token_urlsafe(nbytes)),
                 description=f"{what} Generated when left out; shown once, in the create response.")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetaCredentials(_Model):
    access_token: SecretStr = Field(min_length=1, description="System-user access token (sends replies).")
    app_secret: SecretStr = Field(min_length=1, description="App secret: signs the webhooks (X-Hub-Signature-256).")
    verify_token: SecretStr = _generated(16, "Answers Meta's webhook verification challenge.")


class Template(_Model):
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(default="en_US", max_length=20)
    components: list[dict[str, Any]] | None = None


class WhatsAppConfig(_Model):
    template: Template | None = Field(default=None, description="Approved template sent outside the 24-hour window.")
    messages_per_second: float = Field(default=80, gt=0, le=1000)
    api_base_url: ApiBaseURL | None = None


class InstagramConfig(_Model):
    api_base_url: ApiBaseURL | None = None


class TelegramCredentials(_Model):
    bot_token: SecretStr = Field(description="The bot's token from @BotFather (`<bot id>:<secret>`).")
    secret_token: SecretStr = _generated(24, "Pass it to setWebhook(secret_token=...); every webhook must carry it.")


class TelegramConfig(_Model):
    api_base_url: ApiBaseURL | None = None


class TwilioCredentials(_Model):
    account_sid: str = Field(pattern=r"^AC[A-Za-z0-9]+$", max_length=64)
    auth_token: SecretStr = Field(min_length=1, description="Signs the webhooks (X-Twilio-Signature).")


class TwilioConfig(_Model):
    messages_per_second: float = Field(default=1, gt=0, le=1000)
    api_base_url: ApiBaseURL | None = None


class UssdCredentials(_Model):
    webhook_token: SecretStr = _generated(24, "Carried in the webhook URL's query string (aggregators cannot sign).")


class UssdConfig(_Model):
    prompt: str | None = Field(default=None, max_length=160, description="The menu's first screen.")
    fallback: str | None = Field(default=None, max_length=160, description="Shown when no answer is ready in time "
                                 "and the tenant has no SMS (twilio) account to send it later.")
    answer_wait_s: float = Field(default=4.0, gt=0, le=10, description="How long a step waits for the "
                                 "orchestrator's answer before the screen says what will happen instead.")


class DiscordCredentials(_Model):
    bot_token: SecretStr | None = Field(default=None, description="Optional: posts replies later than 15 minutes.")


class DiscordConfig(_Model):
    public_key: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="The application's Ed25519 public key (hex).")
    api_base_url: ApiBaseURL | None = None


_TELEGRAM_TOKEN = re.compile(r"^([^:\s]+):\S+$")


def _telegram_id(credentials: dict[str, Any], external_id: str | None) -> str | None:
    """The bot id is the token's prefix; an account id that names another bot would route no webhook."""
    match = _TELEGRAM_TOKEN.match(str(credentials.get("bot_token") or ""))
    if match is None:
        raise ValueError("credentials.bot_token: expected the token from @BotFather, `<bot id>:<secret>`")
    if external_id not in (None, match.group(1)):
        raise ValueError(f"external_id {external_id!r} is not the id of this bot token ({match.group(1)})")
    return match.group(1)


def _widget_id(credentials: dict[str, Any], external_id: str | None) -> str:
    return external_id or f"w_{secrets.token_urlsafe(12)}"


def _meta_example(channel: str, external_id: str, **config: Any) -> dict[str, Any]:
    return {"channel": channel, "external_id": external_id, "name": f"Northwind {channel}",
            "credentials": {"access_token": "EAAG-example-token", "app_secret": "0123456789abcdef0123456789abcdef"},
            "config": config}


def specs(limiter: RateLimiter, sms_account: Callable[[str], Account | None]) -> list[ChannelSpec]:
    """The channels, their senders sharing the process's rate limiter; `sms_account` finds a tenant's SMS account
    for the USSD sender."""
    twilio = TwilioSender(limiter)
    return [
        ChannelSpec(
            name="webchat", title="Web chat widget", credentials=NoSettings, config=NoSettings,
            webhook_path="/widget/{external_id}", sender=WebchatSender(), prepare=_widget_id,
            external_id_help="The widget id; generated when left out.",
            example={"channel": "webchat", "name": "Support widget"},
        ),
        ChannelSpec(
            name="whatsapp", title="WhatsApp Cloud API", credentials=MetaCredentials, config=WhatsAppConfig,
            webhook_path="/webhooks/whatsapp", sender=WhatsAppSender(limiter), reply_policy=WHATSAPP_POLICY,
            verify=meta_verify.signature_valid, parse=whatsapp_parse.split_by_account,
            external_id_help="The phone number id (not the number).",
            example=_meta_example("whatsapp", "106540352242922", template={"name": "follow_up", "language": "en_US"}),
        ),
        ChannelSpec(
            name="instagram", title="Instagram messaging", credentials=MetaCredentials, config=InstagramConfig,
            webhook_path="/webhooks/instagram", sender=InstagramSender(limiter), reply_policy=INSTAGRAM_POLICY,
            verify=meta_verify.signature_valid, parse=instagram_parse.split_by_account,
            external_id_help="The Instagram professional account id.",
            example=_meta_example("instagram", "17841400000000000"),
        ),
        ChannelSpec(
            name="telegram", title="Telegram bot", credentials=TelegramCredentials, config=TelegramConfig,
            webhook_path="/webhooks/telegram/{external_id}", sender=TelegramSender(limiter), prepare=_telegram_id,
            verify=telegram_token_valid, parse=telegram_parse.parse_body,
            external_id_help="The bot id; taken from the token when left out.",
            example={"channel": "telegram", "name": "Northwind bot",
                     "credentials": {"bot_token": "8123456789:AAH-example-token-from-botfather"}},
        ),
        ChannelSpec(
            name="twilio", title="Twilio SMS / WhatsApp", credentials=TwilioCredentials, config=TwilioConfig,
            webhook_path="/webhooks/twilio", sender=twilio,
            verify=twilio_verify.signature_valid, parse=twilio_parse.parse_form,
            external_id_help="The Twilio phone number customers write to (E.164, e.g. +15005550006).",
            example={"channel": "twilio", "external_id": "+15005550006", "name": "Northwind SMS",
                     "credentials": {"account_sid": "AC0123456789abcdef0123456789abcdef",
                                     "auth_token": "0123456789abcdef0123456789abcdef"}},
        ),
        ChannelSpec(
            name="ussd", title="USSD (Africa's Talking style aggregators)", credentials=UssdCredentials,
            config=UssdConfig, webhook_path="/webhooks/ussd", url_token="webhook_token",  # noqa: S106 - the name of the credential
            sender=UssdSender(twilio, sms_account), awaits_outcome=True,
            external_id_help="The USSD service code, e.g. *384*123#.",
            example={"channel": "ussd", "external_id": "*384*123#", "name": "Northwind USSD",
                     "config": {"prompt": "Welcome to Northwind! Type your question:"}},
        ),
        ChannelSpec(
            name="discord", title="Discord application (interactions)", credentials=DiscordCredentials,
            config=DiscordConfig, webhook_path="/webhooks/discord/{external_id}", sender=DiscordSender(limiter),
            verify=discord_verify.signature_valid, external_id_help="The Discord application id.",
            example={"channel": "discord", "external_id": "1234567890123456789", "name": "Northwind Discord",
                     "config": {"public_key": "a" * 64}},
        ),
    ]

