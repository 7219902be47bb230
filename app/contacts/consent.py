"""Opt-out and opt-in by keyword, and the rule that an opted-out contact is sent nothing but the confirmation.

A customer whose whole message is an opt-out keyword (STOP, STOPALL, UNSUBSCRIBE; on SMS the carriers' whole
list, as Twilio applies it: CANCEL, END, QUIT too, which elsewhere are more likely a word of a conversation)
withdraws their consent; an opt-in keyword (START, UNSTOP,
SUBSCRIBE) from an opted-out contact grants it again. Either way they get one confirmation (the tenant's
`opt_out_confirmation` / `opt_in_confirmation` policy, or the defaults below), and nothing else is sent to an
opted-out contact: the dispatcher refuses every other outbound message (`may_send`), and their other messages
are stored and skipped (reason `opted_out`), never answered or escalated. Admins set consent through the admin
API too (app/contacts/privacy.py `set_consent`).
"""

from __future__ import annotations

from typing import Any, Literal

OPT_OUT = frozenset({"stop", "stopall", "unsubscribe"})
OPT_OUT_SMS = OPT_OUT | {"cancel", "end", "quit"}
SMS_CHANNELS = frozenset({"twilio", "sms"})
OPT_IN = frozenset({"start", "unstop", "subscribe"})
CONFIRMATION = "consent_confirmation"  # `kind` in an outbound message's meta: sent even to an opted-out contact
DEFAULT_OPT_OUT = "You're unsubscribed and won't get more messages from us. Reply START to subscribe again."
DEFAULT_OPT_IN = "You're subscribed again. How can we help?"
NOT_SENT = "not sent: the contact opted out (consent withdrawn); they can reply START to opt in again"


def keyword(text: str, current: str, channel: str) -> Literal["withdrawn", "granted"] | None:
    """The consent a message asks for, if its whole text is a keyword (case and end punctuation ignored)."""
    word = text.strip().strip(".!").strip().lower()
    if word in (OPT_OUT_SMS if channel in SMS_CHANNELS else OPT_OUT) and current != "withdrawn":
        return "withdrawn"
    if word in OPT_IN and current == "withdrawn":
        return "granted"
    return None


def confirmation(status: str, policies: dict[str, Any]) -> str:
    if status == "withdrawn":
        return str(policies.get("opt_out_confirmation") or DEFAULT_OPT_OUT)
    return str(policies.get("opt_in_confirmation") or DEFAULT_OPT_IN)


def may_send(consent_status: str, meta: dict[str, Any] | None) -> bool:
    return consent_status != "withdrawn" or (meta or {}).get("kind") == CONFIRMATION
