"""Telegram Bot API fake: `POST /bot<token>/sendMessage`, `answerCallbackQuery` (and getMe), with Telegram's envelope
`{"ok": ..., "result" | "description", "parameters": {"retry_after"}}`."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any
from urllib.parse import parse_qsl

from tests.fakes.provider_server import FakeProvider, Recorded, Scripted


def flood(retry_after: int) -> Scripted:
    return Scripted(429, {"ok": False, "error_code": 429, "description": f"Too Many Requests: retry after "
                          f"{retry_after}", "parameters": {"retry_after": retry_after}})


class FakeTelegram(FakeProvider):
    def __init__(self) -> None:
        self._ids = itertools.count(100)
        self.answered: list[str] = []  # callback query ids, in the order they were answered
        super().__init__()

    @staticmethod
    def params(rec: Recorded) -> dict[str, Any]:
        ctype = rec.headers.get("Content-Type", "")
        if "json" in ctype:
            return json.loads(rec.body or b"{}")
        if "multipart" in ctype:  # python-telegram-bot posts form fields as multipart
            out: dict[str, Any] = {}
            for part in rec.body.split(b"--")[1:]:
                head, _, value = part.partition(b"\r\n\r\n")
                if b'name="' in head:
                    name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
                    out[name] = value.rsplit(b"\r\n", 1)[0].decode()
            return out
        return dict(parse_qsl(rec.body.decode()))

    def respond(self, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        path = self.path_of(rec)
        if not path.startswith("/bot"):
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}, {}
        method = path.rsplit("/", 1)[-1]
        if method == "getMe":
            me = {"id": 1, "is_bot": True, "first_name": "fake", "username": "fakebot"}
            return 200, {"ok": True, "result": me}, {}
        if method == "sendMessage":
            p = self.params(rec)
            return 200, {"ok": True, "result": {"message_id": next(self._ids), "date": int(time.time()),
                                                "chat": {"id": int(p["chat_id"]), "type": "private"},
                                                "text": p["text"]}}, {}
        if method == "answerCallbackQuery":
            query_id = str(self.params(rec)["callback_query_id"])
            if query_id in self.answered:  # Telegram accepts one answer per query
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: query is too old and "
                             "response timeout expired or query ID is invalid"}, {}
            self.answered.append(query_id)
            return 200, {"ok": True, "result": True}, {}
        return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: method {method} not faked"}, {}

    def texts(self) -> list[tuple[str, str]]:
        return [(p["chat_id"], p["text"]) for r in self.sends() if r.path.endswith("/sendMessage")
                for p in [self.params(r)] if "text" in p]
