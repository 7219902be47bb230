"""Twilio outbound (SMS and WhatsApp) through the twilio SDK's `Client`, built per call with the tenant's
account SID and auth token. The SDK's HTTP client is pointed at a configurable API base URL. Text is split to
1600 characters; sends are spaced per sending number."""

from __future__ import annotations

import logging

import httpx
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.rest import Client

from app.channels import Permanent, SendError, SendRequest, Transient
from app.netguard import blocked_reason, guarded_transport
from gateways.outbound import Limit, Plan, ProviderSender, classify_http

DEFAULT_BASE = "https://api.twilio.com"


class _HttpxClient(HttpClient):
    """The SDK's HTTP client interface over httpx, sending to `base_url` instead of api.twilio.com (through the
    outbound URL policy when the base is the tenant's own), remembering the last response (the SDK's exceptions
    drop the Retry-After header)."""

    def __init__(self, base_url: str, timeout: float, guarded: bool = False) -> None:
        super().__init__(logging.getLogger("twilio.http_client"), is_async=False, timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self.guarded = guarded
        self.last: Response | None = None

    def request(self, method: str, uri: str, params: dict[str, object] | None = None,
                data: dict[str, object] | None = None, headers: dict[str, str] | None = None,
                auth: tuple[str, str] | None = None, timeout: float | None = None,
                allow_redirects: bool = False) -> Response:
        if uri.startswith(DEFAULT_BASE):
            uri = self.base_url + uri[len(DEFAULT_BASE):]
        form = data if not (headers or {}).get("Content-Type", "").endswith("json") else None
        try:
            with httpx.Client(timeout=timeout or self.timeout, follow_redirects=allow_redirects,
                              transport=guarded_transport() if self.guarded else None) as client:
                sent = client.request(method.upper(), uri, params=params, data=form,  # type: ignore[arg-type]
                                      json=None if form is not None else data, headers=headers, auth=auth)
        except httpx.HTTPError as exc:
            if blocked := blocked_reason(exc):
                raise Permanent(f"Twilio: {blocked}") from exc
            raise TwilioException(f"{exc.__class__.__name__}: {exc}") from exc
        self.last = Response(sent.status_code, sent.text, sent.headers)
        return self.last


class TwilioSender(ProviderSender):
    channel, label, required = "twilio", "Twilio number", ("account_sid", "auth_token")
    base_env, base_default = "SWITCHBOARD_TWILIO_BASE_URL", DEFAULT_BASE

    def plan(self, request: SendRequest) -> Plan:
        account, creds, to = request.account, request.account.credentials, request.recipient
        sender = f"whatsapp:{account.external_id}" if to.startswith("whatsapp:") else account.external_id
        base, guarded = self.api_base(account), self.guarded(account)
        mps = float(account.config.get("messages_per_second", 1))

        def send(_: int, part: str) -> str:
            http = _HttpxClient(base, self.timeout, guarded)
            client = Client(creds["account_sid"], creds["auth_token"], http_client=http)
            try:
                created = client.messages.create(to=to, from_=sender, body=part)
            except TwilioRestException as exc:
                headers = (http.last.headers if http.last is not None else None) or {}
                error: SendError = classify_http("Twilio", exc.status, exc.msg, headers.get("Retry-After"))
                raise error from exc
            except TwilioException as exc:  # connection errors and timeouts
                raise Transient(f"Twilio unreachable: {exc}") from exc
            return str(created.sid)

        return Plan(self.text_parts(request), send, [Limit(f"twilio:{account.external_id}", 1 / mps)])
