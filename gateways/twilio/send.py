"""Twilio outbound (SMS and WhatsApp) through the twilio SDK's `Client`, built per call with the tenant's
account SID and auth token. The SDK's HTTP client is pointed at a configurable API base URL. Text is split to
1600 characters; sends are spaced per sending number."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from app.models import ChannelAccount, Message
from gateways.outbound import Limit, Plan, ProviderError, ProviderSender, Transient, classify_http, recipient

DEFAULT_BASE = "https://api.twilio.com"


class _BaseUrlClient(TwilioHttpClient):
    """The SDK's HTTP client, sending to `base_url` instead of api.twilio.com, remembering the last response
    (the SDK's exceptions drop the Retry-After header)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self.last: Response | None = None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if url.startswith(DEFAULT_BASE):
            url = self.base_url + url[len(DEFAULT_BASE):]
        self.last = super().request(method, url, *args, **kwargs)
        return self.last


class TwilioSender(ProviderSender):
    channel, label, required = "twilio", "Twilio number", ("account_sid", "auth_token")
    base_env, base_default = "SWITCHBOARD_TWILIO_BASE_URL", DEFAULT_BASE

    def plan(self, session: Session, account: ChannelAccount, creds: dict[str, Any], message: Message) -> Plan:
        to = recipient(session, message).external_id
        sender = f"whatsapp:{account.external_id}" if to.startswith("whatsapp:") else account.external_id
        base = self.api_base(account)
        mps = float(account.config.get("messages_per_second", 1))

        def send(_: int, part: str) -> str:
            http = _BaseUrlClient(base, self.timeout)
            client = Client(creds["account_sid"], creds["auth_token"], http_client=http)
            try:
                created = client.messages.create(to=to, from_=sender, body=part)
            except TwilioRestException as exc:
                headers = (http.last.headers if http.last is not None else None) or {}
                error: ProviderError = classify_http("Twilio", exc.status, exc.msg, headers.get("Retry-After"))
                raise error from exc
            except TwilioException as exc:  # connection errors and timeouts
                raise Transient(f"Twilio unreachable: {exc}") from exc
            return str(created.sid)

        return Plan(self.text_parts(message), send, [Limit(f"twilio:{account.external_id}", 1 / mps)])
