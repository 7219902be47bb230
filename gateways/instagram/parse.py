"""Instagram messaging webhook bodies (Meta `entry[].messaging[]` envelope; Messenger's `object: page` bodies
share it) -> normalised inbound messages (pure)."""

from __future__ import annotations

from typing import Any

from app.contracts import Attachment
from gateways.common import Inbound, Parsed, StatusUpdate
from gateways.payloads import Malformed, Unreadable, as_id, as_payload, items, reading

OBJECTS = {"instagram", "page"}


def split_by_account(body: dict[str, Any]) -> dict[str | None, Parsed]:
    """Group a webhook body by the account id of each entry. An entry naming no account is dead under None;
    an event of a named account that cannot be read is dead under that account."""
    out: dict[str | None, Parsed] = {}
    for entry in body["entry"]:
        account_id = as_id(entry.get("id")) if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or account_id is None:
            out.setdefault(None, Parsed()).dead.append(Unreadable("an entry without an account id", as_payload(entry)))
            continue
        parsed = out.setdefault(account_id, Parsed())
        with reading(parsed.dead, "an entry", entry):
            for event in items(entry, "messaging"):
                with reading(parsed.dead, "a messaging event", event):
                    item = parse_event(event, account_id)
                    if isinstance(item, Inbound):
                        parsed.messages.append(item)
                    elif isinstance(item, StatusUpdate):
                        parsed.statuses.append(item)
                    else:
                        parsed.skipped.append(item)
            if standby := items(entry, "standby"):
                parsed.skipped.append(f"{len(standby)} standby events (another app owns the thread)")
            if changes := items(entry, "changes"):
                parsed.skipped.append(f"{len(changes)} changes (comments/mentions are not conversations)")
    return out


def parse_event(event: dict[str, Any], account_id: str) -> Inbound | StatusUpdate | str:
    """One `messaging[]` event -> Inbound, or a string saying why it is skipped; `Malformed` when unreadable."""
    if not isinstance(event, dict):
        raise Malformed(f"a messaging event is a {type(event).__name__}, not an object")
    sender = as_id((event.get("sender") or {}).get("id")) or ""
    stamp = str(event.get("timestamp") or "")
    message = event.get("message")
    if isinstance(message, dict) and message.get("is_echo"):
        return f"echo of our own message {message.get('mid')}"
    if not sender:  # app-level events (app_roles, policy-enforcement...) name no sender
        return f"event without a sender ({sorted(event)})"
    if sender == account_id:
        return "event sent by the business account itself"
    if isinstance(message, dict):
        return parse_message(message, sender)
    if isinstance(event.get("reaction"), dict):
        r = event["reaction"]
        removed = r.get("action") == "unreact"
        return Inbound(
            provider_message_id=f"reaction:{r.get('mid')}:{sender}:{r.get('action')}:{stamp}",
            contact_id=sender, kind="reaction", text="" if removed else str(r.get("emoji") or r.get("reaction") or ""),
            meta={"target": r.get("mid"), "removed": removed},
        )
    if isinstance(event.get("postback"), dict):
        p = event["postback"]
        return Inbound(
            provider_message_id=str(p.get("mid") or f"postback:{sender}:{stamp}"), contact_id=sender,
            kind="interactive", text=str(p.get("title") or p.get("payload") or ""),
            meta={"reply_id": p.get("payload"), "reply_type": "postback"},
        )
    if isinstance(event.get("message_edit"), dict):
        e = event["message_edit"]
        return Inbound(
            provider_message_id=f"edit:{e.get('mid')}:{e.get('num_edit', stamp)}", contact_id=sender,
            kind="edit", text=str(e.get("text") or ""), meta={"original_id": e.get("mid")},
        )
    if isinstance(event.get("read"), dict) or isinstance(event.get("delivery"), dict):
        return "read/delivery receipt (no per-message id to match)"
    return f"messaging event {sorted(k for k in event if k not in ('sender', 'recipient', 'timestamp'))}"


def parse_message(message: dict[str, Any], sender: str) -> Inbound | str:
    mid = as_id(message.get("mid"))
    if mid is None:
        raise Malformed("a message without 'mid'")
    if message.get("is_deleted"):
        return f"deletion of {mid}"
    if message.get("is_unsupported"):
        return f"unsupported message {mid}"
    meta: dict[str, Any] = {}
    reply_to = message.get("reply_to") or {}
    if reply_to:
        meta["reply_to"] = reply_to
    text = str(message.get("text") or "")
    base: dict[str, Any] = {"provider_message_id": str(mid), "contact_id": sender}
    if isinstance(message.get("quick_reply"), dict):
        meta.update(reply_id=message["quick_reply"].get("payload"), reply_type="quick_reply")
        return Inbound(kind="interactive", text=text, meta=meta, **base)
    attachments = [a for a in message.get("attachments") or [] if isinstance(a, dict)]
    if attachments:
        atts = [_attachment(a) for a in attachments]
        kind = "location" if all(a.kind == "location" for a in atts) else "media"
        if message.get("sticker_id"):
            meta["sticker_id"] = message["sticker_id"]
        if kind == "location" and not text:
            coords = atts[0].data.get("coordinates") or {}
            text = f"{coords.get('lat')},{coords.get('long')}"
        return Inbound(kind=kind, text=text, attachments=atts, meta=meta, **base)
    if not text:
        return f"message {mid} with neither text nor attachments"
    return Inbound(kind="text", text=text, meta=meta, **base)


def _attachment(att: dict[str, Any]) -> Attachment:
    raw = att.get("payload")
    payload: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = {"file": "document", "fallback": "link"}.get(str(att.get("type")), str(att.get("type") or "unknown"))
    url = payload.get("url") or att.get("URL")
    data = {k: v for k, v in payload.items() if k != "url"}
    if att.get("title"):
        data["title"] = att["title"]
    return Attachment(kind=kind, url=url, data=data)
