"""The channel ports the core owns: what a channel is (`ChannelSpec`), how a reply leaves (`Sender`, taking a
plain `SendRequest`), how it may fail (`SendError` and its four kinds) and when a channel accepts a reply at all
(`ReplyPolicy`). Gateways implement them and register their specs (gateways/plugin.py); the core never imports a
gateway.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from app.bus.base import RetryLater

# --------------------------------------------------------------------------------------------------- send errors


class SendError(Exception):
    """A delivery failed. The dispatcher retries a transient one (after `retry_after` when the provider said how
    long) and records a permanent one on the message."""

    permanent: ClassVar[bool] = False

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transient(SendError, RetryLater):
    """5xx, timeouts, connection errors: try again later (a consumer redelivers it, logged as a warning)."""


class RateLimited(Transient):
    """The provider asked us to slow down; `retry_after` says for how long, when it said."""


class Permanent(SendError):
    """The provider refused this message (bad recipient, policy, payload): retrying cannot help."""

    permanent = True


class AuthFailed(Permanent):
    """The tenant's credentials are wrong or revoked: stop and tell the operator."""


# ------------------------------------------------------------------------------------------------ what is sent


# The container's name for the gateways' cache of channel accounts (`Container.shared`): dropped when an account
# is created, changed or deleted, so a rotated secret or a re-created account counts at once.
ACCOUNT_ROUTING = "gateway_routing"


@dataclass(frozen=True)
class Account:
    """A detached, decrypted view of a channel account, safe to use outside its session."""

    id: str
    tenant_id: str
    channel: str
    external_id: str
    config: Mapping[str, Any]
    credentials: Mapping[str, Any]


@dataclass(frozen=True)
class InboundRef:
    """The customer message a reply answers (provider handles such as an interaction token sit in `meta`)."""

    id: str
    meta: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class SendRequest:
    """One stored reply, as a sender needs it: no session, no ORM rows. `sent` holds the provider ids of the
    parts that already went out (a retry resumes after them); `answered_before` says whether another reply
    already went out through `answers` (Discord: its original response is written)."""

    message_id: str
    tenant_id: str
    idempotency_key: str
    text: str
    recipient: str
    account: Account
    author: str | None = None
    last_inbound_at: datetime | None = None
    answers: InboundRef | None = None
    answered_before: bool = False
    sent: tuple[str, ...] = ()

    @property
    def by_human(self) -> bool:
        return bool(self.author and self.author.startswith("agent:"))


class Sender(Protocol):
    """Delivers one reply through a provider and returns the provider ids of all its parts, in order.

    `record(provider_id)` must be called as each part goes out (the dispatcher commits it), so a retry after a
    crash never repeats a part. Raises a `SendError`. `in_process`: nothing leaves the process (the web chat
    reads its messages from the database), so a transaction is the delivery: the one that stores the
    orchestrator's reply, or the dispatcher's own."""

    in_process: bool

    def send(self, request: SendRequest, record: Callable[[str], None]) -> list[str]: ...


# ------------------------------------------------------------------------------------------------ reply policy


class ReplyMode(enum.Enum):
    FREE_FORM = "free_form"
    TEMPLATE = "template"  # outside the window: the account's approved template instead of the text
    HUMAN_AGENT = "human_agent"  # a person's reply, tagged so the provider allows it outside the window


OUTSIDE_WINDOW = "outside_24h_window"


@dataclass(frozen=True)
class ReplyPolicy:
    """When a channel accepts a reply. `window`: free-form replies only this long after the customer's last
    message (WhatsApp: 24 hours); outside it, a `template` if the account has one. `human_agent_tag`: a reply
    written by a person carries the provider's human-agent tag (Instagram's HUMAN_AGENT)."""

    window: timedelta | None = None
    human_agent_tag: bool = False

    def mode(self, *, now: datetime, last_inbound_at: datetime | None, by_human: bool,
             has_template: bool) -> ReplyMode:
        """Raises `Permanent(OUTSIDE_WINDOW ...)` for a reply the provider would never deliver."""
        if self.human_agent_tag and by_human:
            return ReplyMode.HUMAN_AGENT
        if self.window is None:
            return ReplyMode.FREE_FORM
        if last_inbound_at is not None and now - _aware(last_inbound_at, now) < self.window:
            return ReplyMode.FREE_FORM
        if has_template:
            return ReplyMode.TEMPLATE
        hours = int(self.window.total_seconds() // 3600)
        raise Permanent(f"{OUTSIDE_WINDOW}: the customer last wrote over {hours} hours ago and no approved template "
                        "is configured (the channel account's config.template)")


def _aware(value: datetime, like: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns."""
    return value.replace(tzinfo=like.tzinfo) if value.tzinfo is None and like.tzinfo is not None else value


# ------------------------------------------------------------------------------------------------- the channel


class NoSettings(BaseModel):
    """A channel with nothing to set."""


@dataclass(frozen=True)
class ChannelSpec:
    """Everything that makes a channel: its typed credentials and config (validated on every path that creates
    or updates an account; secrets as `SecretStr`), where its webhooks arrive, how its reply leaves and when a
    reply is allowed. `verify` and `parse` are the gateway's pure functions over the provider's request.

    `webhook_path` is formatted with `external_id`; `example` is a complete create request, shown in the OpenAPI
    document and tested as such. `prepare(credentials, external_id)` fills in what can be derived or generated
    (a Telegram bot id from its token, a USSD webhook token) and returns the external id."""

    name: str
    title: str
    credentials: type[BaseModel]
    config: type[BaseModel]
    webhook_path: str
    example: dict[str, Any]
    sender: Sender | None = None
    reply_policy: ReplyPolicy = field(default_factory=ReplyPolicy)
    external_id_help: str = "The provider's id of the account; routes its webhooks."
    verify: Callable[..., Any] | None = None
    parse: Callable[..., Any] | None = None
    prepare: Callable[[dict[str, Any], str | None], str | None] | None = None
    # Credentials the webhook URL itself must carry (USSD aggregators cannot sign: a token in the query string).
    url_token: str | None = None
    # The gateway answers inside its own HTTP response (USSD), so it waits for the orchestrator's decision
    # (`Intake.await_outcome`): the orchestrator wakes it through the push hub when that decision commits.
    awaits_outcome: bool = False

    def webhook_url(self, base_url: str, external_id: str, credentials: Mapping[str, Any] | None = None) -> str:
        url = base_url.rstrip("/") + self.webhook_path.format(external_id=external_id)
        if self.url_token and credentials and credentials.get(self.url_token):
            url += f"?token={credentials[self.url_token]}"
        return url


class UnknownChannel(KeyError):
    pass


class ChannelRegistry:
    """The channels this process knows, filled by the edge plugins at start-up (app/plugins.py)."""

    def __init__(self) -> None:
        self._specs: dict[str, ChannelSpec] = {}

    def add(self, spec: ChannelSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"channel {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ChannelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownChannel(f"unknown channel type {name!r}; choose one of {', '.join(self.names())}") from None

    def find(self, name: str) -> ChannelSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return list(self._specs)

    def specs(self) -> list[ChannelSpec]:
        return list(self._specs.values())

    def sender(self, name: str) -> Sender | None:
        spec = self._specs.get(name)
        return spec.sender if spec else None
