"""Twilio REST fake: `POST /2010-04-01/Accounts/{sid}/Messages.json` (form-encoded, HTTP basic auth)."""

from __future__ import annotations

import base64
import itertools
from typing import Any

from tests.fakes.provider_server import FakeProvider, Recorded


class FakeTwilio(FakeProvider):
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self._ids = itertools.count(1)
        super().__init__()

    def respond(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if rec.headers.get("Authorization") != expected:
            return 401, {"code": 20003, "message": "Authenticate", "status": 401}, {}
        if self.path_of(rec) != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return 404, {"code": 20404, "message": "Not found", "status": 404}, {}
        form = rec.form()
        sid = f"SM{next(self._ids):032d}"
        return 201, {"sid": sid, "account_sid": self.account_sid, "to": form["To"], "from": form["From"],
                     "body": form["Body"], "status": "queued"}, {}
