"""Twilio Messaging webhooks (SMS, MMS and Twilio's WhatsApp) -> normalised messages and statuses (pure).

Inbound messages are routed by `To` (the tenant's Twilio number); status callbacks by `From`. The account's
external id is the bare E.164 number (no `whatsapp:` prefix); contacts keep the prefix, which is how replies
go back over the same channel.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.contracts import Attachment
from gateways.common import Inbound, Parsed, StatusUpdate
from gateways.payloads import Unreadable, as_payload

STATUS_MAP = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed", "undelivered": "failed"}


def bare(number: str) -> str:
    return number.split(":", 1)[1] if ":" in number else number


def account_number(form: Mapping[str, str]) -> str | None:
    """Which of our numbers this callback concerns."""
    if is_status(form):
        return bare(form["From"]) if form.get("From") else None
    return bare(form["To"]) if form.get("To") else None


def is_status(form: Mapping[str, str]) -> bool:
    status = form.get("MessageStatus") or ""
    return bool(status) and status != "received" and "Body" not in form


def parse_form(form: Mapping[str, str]) -> Parsed:
    parsed = Parsed()
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
    if is_status(form):
        mapped = STATUS_MAP.get(form.get("MessageStatus", ""))
        if mapped and sid:
            error = form.get("ErrorCode")
            parsed.statuses.append(StatusUpdate(sid, mapped, f"Twilio error {error}" if error else None))
        else:
            parsed.skipped.append(f"status {form.get('MessageStatus')!r}")
        return parsed
    sender = form.get("From")
    if not sid or not sender:
        parsed.dead.append(Unreadable("a message callback without MessageSid or From", as_payload(dict(form))))
        return parsed
    text = form.get("Body") or ""
    meta: dict[str, object] = {"twilio_channel": "whatsapp" if sender.startswith("whatsapp:") else "sms"}
    attachments = [
        Attachment(kind=_kind(form.get(f"MediaContentType{i}", "")), url=form[f"MediaUrl{i}"],
                   mime_type=form.get(f"MediaContentType{i}"), caption=text or None)
        for i in range(_int(form.get("NumMedia"))) if form.get(f"MediaUrl{i}")
    ]
    kind = "media" if attachments else "text"
    if form.get("Latitude") and form.get("Longitude"):
        kind = "location"
        loc = {"latitude": form["Latitude"], "longitude": form["Longitude"], "address": form.get("Address"),
               "label": form.get("Label")}
        attachments.append(Attachment(kind="location", data=loc))
        text = text or ", ".join(v for v in (form.get("Label"), form.get("Address")) if v) or \
            f"{form['Latitude']},{form['Longitude']}"
    if form.get("ButtonPayload") or form.get("ButtonText"):
        kind = "interactive"
        text = form.get("ButtonText") or text
        meta.update(reply_id=form.get("ButtonPayload"), reply_type="button")
    if not text and not attachments:
        parsed.skipped.append(f"empty message {sid}")
        return parsed
    parsed.messages.append(Inbound(provider_message_id=sid, contact_id=sender, kind=kind, text=text,
                                   attachments=attachments, display_name=form.get("ProfileName"), meta=meta))
    return parsed


def _kind(mime: str) -> str:
    major = mime.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "document"


def _int(value: str | None) -> int:
    try:
        return max(0, min(int(value or 0), 10))
    except ValueError:
        return 0
