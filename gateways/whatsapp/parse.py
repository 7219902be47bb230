"""WhatsApp Cloud API webhook bodies -> normalised inbound messages and delivery statuses (pure)."""

from __future__ import annotations

import json
from typing import Any

from app.contracts import Attachment
from gateways.common import Inbound, Parsed, StatusUpdate
from gateways.payloads import Malformed, Unreadable, as_id, as_payload, items, reading

MEDIA = ("image", "video", "audio", "document", "sticker")
# WhatsApp's "played" (voice message listened to) is a read receipt for our purposes.
STATUS_MAP = {"sent": "sent", "delivered": "delivered", "read": "read", "played": "read", "failed": "failed"}


def split_by_account(body: dict[str, Any]) -> dict[str | None, Parsed]:
    """Group a webhook body by the business phone number id each change belongs to. A messages change too
    broken to name its number is dead under None; a part of one that names it is dead under that number."""
    out: dict[str | None, Parsed] = {}
    for entry in body["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            out.setdefault(None, Parsed()).dead.append(
                Unreadable("an entry without a 'changes' list", as_payload(entry)))
            continue
        for change in changes:
            field = change.get("field") if isinstance(change, dict) else None
            if field != "messages":
                out.setdefault(None, Parsed()).skipped.append(f"field {field!r} (not a customer message)")
                continue
            value = change.get("value")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            phone_number_id = as_id(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
            if not isinstance(value, dict) or phone_number_id is None:
                out.setdefault(None, Parsed()).dead.append(
                    Unreadable("a messages change without value.metadata.phone_number_id", as_payload(change)))
                continue
            parsed = out.setdefault(phone_number_id, Parsed())
            with reading(parsed.dead, "a messages change", change):
                parse_value(value, parsed)
    return out


def parse_value(value: dict[str, Any], parsed: Parsed) -> None:
    """One messages change; each message and status that cannot be read is dead on its own."""
    names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in items(value, "contacts")}
    for msg in items(value, "messages"):
        with reading(parsed.dead, "a message", msg):
            item = parse_message(msg)
            if isinstance(item, str):
                parsed.skipped.append(item)
            else:
                name = names.get(msg.get("from"))
                item.display_name = name if isinstance(name, str) else None
                parsed.messages.append(item)
    for status in items(value, "statuses"):
        with reading(parsed.dead, "a status", status):
            mapped = STATUS_MAP.get(str(status.get("status")))
            if not mapped or not as_id(status.get("id")):
                parsed.skipped.append(f"status {status.get('status')!r}")
                continue
            errors = items(status, "errors")
            error = "; ".join(f"{e.get('code')}: {e.get('title') or e.get('message')}" for e in errors) or None
            parsed.statuses.append(StatusUpdate(str(status["id"]), mapped, error))
    for kind in ("message_echoes", "smb_message_echoes"):
        if echoes := items(value, kind):
            parsed.skipped.append(f"{len(echoes)} {kind} (our own messages)")


def parse_message(msg: dict[str, Any]) -> Inbound | str:
    """One `messages[]` item -> Inbound, or a string saying why it is skipped; `Malformed` when unreadable."""
    mtype = msg.get("type")
    sender, mid = as_id(msg.get("from")), as_id(msg.get("id"))
    if sender is None or mid is None:
        raise Malformed(f"a message without 'from' or 'id' (type {mtype!r})")
    meta: dict[str, Any] = {"wa_type": mtype}
    context = msg.get("context") or {}
    if context.get("id"):
        meta["reply_to"] = context["id"]
    if msg.get("referral"):
        meta["referral"] = msg["referral"]
    body = content(msg)
    if body is None:
        return f"message type {mtype!r} ({mid})"
    kind, text, attachments, extra = body
    meta.update(extra)
    return Inbound(provider_message_id=mid, contact_id=sender, kind=kind, text=text,
                   attachments=attachments, meta=meta)


def content(msg: dict[str, Any]) -> tuple[str, str, list[Attachment], dict[str, Any]] | None:
    """(kind, text, attachments, extra meta) of a message body, or None for types we do not answer."""
    mtype = msg.get("type")
    payload = msg.get(str(mtype)) if mtype else None
    if mtype == "text":
        return "text", str((payload or {}).get("body") or ""), [], {}
    if mtype in MEDIA and isinstance(payload, dict):
        caption = payload.get("caption") or ""
        att = Attachment(kind=str(mtype), media_id=payload.get("id"), url=payload.get("url"),
                         mime_type=payload.get("mime_type"), caption=caption or None,
                         data={k: payload[k] for k in ("filename", "voice", "animated") if k in payload})
        return "media", caption, [att], {}
    if mtype == "location" and isinstance(payload, dict):
        label = ", ".join(str(payload[k]) for k in ("name", "address") if payload.get(k))
        text = label or f"{payload.get('latitude')},{payload.get('longitude')}"
        return "location", text, [Attachment(kind="location", url=payload.get("url"), data=payload)], {}
    if mtype == "contacts" and isinstance(msg.get("contacts"), list):
        names = [str((c.get("name") or {}).get("formatted_name") or "") for c in msg["contacts"]]
        att = Attachment(kind="contacts", data={"contacts": msg["contacts"]})
        return "contacts", ", ".join(n for n in names if n), [att], {}
    if mtype == "interactive" and isinstance(payload, dict):
        reply_type = payload.get("type")
        reply = payload.get(str(reply_type)) if reply_type else None
        if not isinstance(reply, dict) or reply_type not in ("button_reply", "list_reply", "nfm_reply"):
            return None  # e.g. call_permission_reply: a calling setting, not something to answer
        if reply_type == "nfm_reply":  # a completed WhatsApp Flow
            try:
                data = json.loads(reply.get("response_json") or "{}")
            except json.JSONDecodeError:
                data = {"raw": reply.get("response_json")}
            return "interactive", str(reply.get("body") or "Flow completed"), [], {"flow_response": data}
        return "interactive", str(reply.get("title") or ""), [], {"reply_id": reply.get("id"),
                                                                  "reply_type": reply_type}
    if mtype == "button" and isinstance(payload, dict):
        return "interactive", str(payload.get("text") or ""), [], {"reply_id": payload.get("payload"),
                                                                   "reply_type": "button"}
    if mtype == "reaction" and isinstance(payload, dict):
        emoji = str(payload.get("emoji") or "")
        return "reaction", emoji, [], {"target": payload.get("message_id"), "removed": not emoji}
    if mtype == "edit" and isinstance(payload, dict):
        inner = payload.get("message") or {}
        edited = content(inner) if isinstance(inner, dict) else None
        text = edited[1] if edited else ""
        attachments = edited[2] if edited else []
        return "edit", text, attachments, {"original_id": payload.get("original_message_id")}
    if mtype == "order" and isinstance(payload, dict):
        items = payload.get("product_items") or []
        summary = ", ".join(f"{i.get('quantity')} x {i.get('product_retailer_id')}" for i in items)
        return "interactive", str(payload.get("text") or f"Order: {summary}"), [], {"order": payload}
    return None  # unsupported, system, revoke (deletion), interactive without a reply...
