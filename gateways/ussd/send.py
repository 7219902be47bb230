"""USSD replies have no provider API: an answer ready in time is shown on the session's screen by the webhook
route (gateways/ussd/routes.py). This sender handles the rest: while that route may still be waiting it defers
(a transient failure with `retry_after`, so the dispatcher leaves the reply pending), then sends the reply by
SMS through the tenant's twilio account, or fails it permanently when the tenant has none (the screen promised
nothing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from app.channels import Account, Permanent, Sender, SendRequest, Transient
from gateways.ussd.routes import answer_wait_s

GRACE = timedelta(seconds=2)  # the route's own claim (a transaction) after its wait ends


class UssdSender:
    in_process = False

    def __init__(self, sms: Sender, sms_account: Callable[[str], Account | None],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """`sms_account`: the tenant's twilio account, if it has one (gateways/ussd/routes.py `sms_account`)."""
        self.sms = sms
        self.sms_account = sms_account
        self.clock = clock

    def send(self, request: SendRequest, record: Callable[[str], None]) -> list[str]:
        if request.answers is not None:
            asked = request.answers.created_at
            asked = asked if asked.tzinfo else asked.replace(tzinfo=UTC)
            screen_until = asked + timedelta(seconds=answer_wait_s(request.account)) + GRACE
            if (left := (screen_until - self.clock()).total_seconds()) > 0:
                raise Transient("the USSD session may still show this reply on its screen", retry_after=left)
        account = self.sms_account(request.tenant_id)
        if account is None:
            raise Permanent("the USSD session ended before this reply and the tenant has no SMS (twilio) account")
        return self.sms.send(replace(request, account=account), record)
