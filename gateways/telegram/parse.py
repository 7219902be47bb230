"""Telegram Bot API `Update` objects -> normalised inbound messages (pure).

Contacts are chats (a reply goes to the chat the message came from). Message ids are unique per chat only,
so provider ids are "<chat id>:<message id>"; Telegram redelivers an update unchanged until it gets a 2xx.
"""

from __future__ import annotations

from typing import Any

from app.contracts import Attachment
from gateways.common import Inbound, Parsed
from gateways.payloads import Malformed, as_id, json_object, reading

MEDIA = ("photo", "video", "audio", "voice", "document", "animation", "sticker", "video_note")
MESSAGE_FIELDS = ("message", "business_message", "channel_post")
EDIT_FIELDS = ("edited_message", "edited_business_message", "edited_channel_post")


def parse_body(raw: bytes) -> Parsed:
    """A (verified) webhook body. One that is not a readable Update is dead with the reason: Telegram redelivers
    anything not answered 2xx, blocking the bot's later updates behind it."""
    parsed = Parsed()
    with reading(parsed.dead, "the update", raw):
        update = json_object(raw, "a Telegram Update")
        if as_id(update.get("update_id")) is None:
            raise Malformed("an Update needs an update_id")
        item = _update(update)
        if isinstance(item, Inbound):
            parsed.messages.append(item)
        else:
            parsed.skipped.append(item)
    return parsed


def _update(update: dict[str, Any]) -> Inbound | str:
    for name in MESSAGE_FIELDS:
        if isinstance(update.get(name), dict):
            return parse_message(update[name])
    for name in EDIT_FIELDS:
        if isinstance(update.get(name), dict):
            msg = update[name]
            item = parse_message(msg)
            if isinstance(item, str):
                return item
            item.meta["original_id"] = item.provider_message_id
            item.provider_message_id = f"edit:{item.provider_message_id}:{msg.get('edit_date', '')}"
            item.kind = "edit"
            return item
    if isinstance(update.get("callback_query"), dict):
        return parse_callback(update["callback_query"])
    if isinstance(update.get("message_reaction"), dict):
        return parse_reaction(update["message_reaction"])
    known = sorted(k for k in update if k != "update_id")
    return f"update {update.get('update_id')} of kind {known}"


def _chat_id(msg: dict[str, Any]) -> str | None:
    return as_id((msg.get("chat") or {}).get("id"))


def _name(msg: dict[str, Any]) -> str | None:
    who = msg.get("from") or msg.get("user") or msg.get("chat") or {}
    name = " ".join(str(who[k]) for k in ("first_name", "last_name") if who.get(k))
    return name or who.get("title") or who.get("username")


def parse_message(msg: dict[str, Any]) -> Inbound | str:
    chat_id, message_id = _chat_id(msg), as_id(msg.get("message_id"))
    if chat_id is None or message_id is None:
        raise Malformed("a message without chat.id or message_id")
    if (msg.get("from") or {}).get("is_bot"):
        return f"message {message_id} from a bot"
    found = content(msg)
    if found is None:
        present = sorted(k for k in msg if k not in ("chat", "from", "date", "message_id"))
        return f"service or unsupported message {chat_id}:{message_id} {present[:6]}"
    kind, text, attachments = found
    meta: dict[str, Any] = {}
    if isinstance(msg.get("reply_to_message"), dict):
        meta["reply_to"] = msg["reply_to_message"].get("message_id")
    if msg.get("message_thread_id"):
        meta["thread_id"] = msg["message_thread_id"]
    return Inbound(provider_message_id=f"{chat_id}:{message_id}", contact_id=chat_id, kind=kind, text=text,
                   attachments=attachments, display_name=_name(msg), meta=meta)


def content(msg: dict[str, Any]) -> tuple[str, str, list[Attachment]] | None:
    if isinstance(msg.get("text"), str):
        text = msg["text"]
        return ("command" if text.startswith("/") else "text"), text, []
    caption = str(msg.get("caption") or "")
    for media in MEDIA:
        value = msg.get(media)
        if value:
            best = value[-1] if isinstance(value, list) else value  # photo sizes ascend; take the largest
            att = Attachment(kind="image" if media == "photo" else media, media_id=best.get("file_id"),
                             mime_type=best.get("mime_type"), caption=caption or None,
                             data={k: best[k] for k in ("file_name", "duration", "emoji") if k in best})
            return "media", caption, [att]
    if isinstance(msg.get("location"), dict):
        loc = msg["location"]
        venue = msg.get("venue") or {}
        label = ", ".join(str(venue[k]) for k in ("title", "address") if venue.get(k))
        text = label or f"{loc.get('latitude')},{loc.get('longitude')}"
        return "location", text, [Attachment(kind="location", data={**loc, **({"venue": venue} if venue else {})})]
    if isinstance(msg.get("contact"), dict):
        c = msg["contact"]
        name = " ".join(str(c[k]) for k in ("first_name", "last_name") if c.get(k))
        return "contacts", name or str(c.get("phone_number") or ""), [Attachment(kind="contacts", data=c)]
    return None  # dice, polls, pins, joins, boosts, giveaways, stories...


def parse_callback(cb: dict[str, Any]) -> Inbound | str:
    msg = cb.get("message") or {}
    chat_id = _chat_id(msg) or str((cb.get("from") or {}).get("id") or "")
    if not chat_id or not cb.get("id"):
        return "callback query without chat or id"
    return Inbound(provider_message_id=f"callback:{cb['id']}", contact_id=chat_id, kind="interactive",
                   text=str(cb.get("data") or cb.get("game_short_name") or ""), display_name=_name(cb),
                   meta={"reply_id": cb.get("data"), "reply_type": "callback_query", "callback_query_id": cb["id"],
                         "reply_to": msg.get("message_id")})


def parse_reaction(r: dict[str, Any]) -> Inbound | str:
    chat_id = _chat_id(r)
    user = r.get("user") or r.get("actor_chat") or {}
    if chat_id is None or not user:
        return "anonymous reaction update"
    emojis = [x.get("emoji") or x.get("custom_emoji_id") or "" for x in r.get("new_reaction") or []]
    return Inbound(
        provider_message_id=f"reaction:{chat_id}:{r.get('message_id')}:{user.get('id')}:{r.get('date')}",
        contact_id=chat_id, kind="reaction", text=" ".join(e for e in emojis if e), display_name=_name(r),
        meta={"target": f"{chat_id}:{r.get('message_id')}", "removed": not emojis},
    )
