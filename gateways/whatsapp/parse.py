"""WhatsApp Cloud API webhook bodies -> normalised inbound messages and delivery statuses (pure)."""

from __future__ import annotations

import json
from typing import Any

from app.contracts import Attachment
from gateways.common import Inbound, Parsed, StatusUpdate

MEDIA = ("image", "video", "audio", "document", "sticker")
# WhatsApp's "played" (voice message listened to) is a read receipt for our purposes.
STATUS_MAP = {"sent": "sent", "delivered": "delivered", "read": "read", "played": "read", "failed": "failed"}


def split_by_account(body: dict[str, Any]) -> dict[str | None, Parsed]:
    """Group a webhook body by the business phone number id each change belongs to."""
    out: dict[str | None, Parsed] = {}
    for entry in body.get("entry") or []:
        for change in (entry or {}).get("changes") or []:
            value = (change or {}).get("value") or {}
            field = (change or {}).get("field")
            metadata = value.get("metadata") if isinstance(value, dict) else None
            phone_number_id = (metadata or {}).get("phone_number_id")
            parsed = out.setdefault(str(phone_number_id) if phone_number_id else None, Parsed())
            if field != "messages" or not phone_number_id:
                parsed.skipped.append(f"field {field!r} (not a customer message)")
                continue
            parse_value(value, parsed)
    return out


def parse_value(value: dict[str, Any], parsed: Parsed) -> None:
    names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in value.get("contacts") or []}
    for msg in value.get("messages") or []:
        item = parse_message(msg)
        if isinstance(item, str):
            parsed.skipped.append(item)
        else:
            item.display_name = names.get(msg.get("from"))
            parsed.messages.append(item)
    for status in value.get("statuses") or []:
        mapped = STATUS_MAP.get(str(status.get("status")))
        if not mapped or not status.get("id"):
            parsed.skipped.append(f"status {status.get('status')!r}")
            continue
        errors = status.get("errors") or []
        error = "; ".join(f"{e.get('code')}: {e.get('title') or e.get('message')}" for e in errors) or None
        parsed.statuses.append(StatusUpdate(str(status["id"]), mapped, error))
    for kind in ("message_echoes", "smb_message_echoes"):
        if value.get(kind):
            parsed.skipped.append(f"{len(value[kind])} {kind} (our own messages)")


def parse_message(msg: dict[str, Any]) -> Inbound | str:
    """One `messages[]` item -> Inbound, or a string saying why it is skipped."""
    mtype = msg.get("type")
    sender, mid = msg.get("from"), msg.get("id")
    if not sender or not mid:
        return f"message without sender or id (type {mtype!r})"
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
    return Inbound(provider_message_id=str(mid), contact_id=str(sender), kind=kind, text=text,
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
