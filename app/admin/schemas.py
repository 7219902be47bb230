"""Request and response shapes of the admin API. Their examples are what the OpenAPI page shows.

Inputs are strict (`extra="forbid"`): a misspelt policy name is a 422 naming the field, not a silently ignored
key. The tenant's policies (persona, modes, SLA, LLM providers and routing) are in app/admin/policy_schemas.py."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from app.admin.policy_schemas import Persona, Policies


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- tenant -------------------------------------------------------------------------------------------------

class TenantOut(BaseModel):
    id: str
    slug: str
    name: str
    persona: dict[str, Any]
    policies: dict[str, Any]
    has_llm_key: bool
    llm_provider_keys: list[str] = Field(default_factory=list,
                                         description="Names of the `policies.llm.providers` entries with a key.")
    live_pack_version: int | None
    created_at: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5f0c1e9a2b7d4c3e8f1a6b2c9d0e7f14",
                    "slug": "northwind",
                    "name": "Northwind Outfitters",
                    "persona": {
                        "name": "Ava",
                        "brand": "Northwind Outfitters",
                        "tone": "Warm and concise.",
                        "language": "en",
                    },
                    "policies": {
                        "min_relevance": 0.45,
                        "banned_phrases": ["lifetime warranty"],
                        "handoff_keywords": ["chargeback"],
                        "max_reply_chars": 700,
                    },
                    "has_llm_key": False,
                    "live_pack_version": 1,
                    "created_at": "2026-11-23T18:20:00Z",
                }
            ]
        }
    )


class TenantPatch(_In):
    """Only the fields you send change. Inside `persona` and `policies` too: send a field as `null` to reset
    it to the default."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    persona: Persona | None = None
    policies: Policies | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "persona": {"name": "Ava", "tone": "Warm, practical and concise."},
                    "policies": {
                        "min_relevance": 0.5,
                        "banned_phrases": ["lifetime warranty"],
                        "llm": {
                            "base_url": "https://llm.example.com/v1",
                            "model": "gpt-4o-mini",
                            "timeout_s": 20,
                            "max_retries": 2,
                        },
                    },
                }
            ]
        }
    )


class LLMKeyIn(_In):
    api_key: SecretStr = Field(min_length=1, max_length=500, description="Stored encrypted; never returned.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"api_key": "sk-..."}]})


class LLMKeyOut(BaseModel):
    has_llm_key: bool


class LLMProviderKeysOut(BaseModel):
    llm_provider_keys: list[str] = Field(description="Names of the provider entries that have a key stored.")


class LLMUsageRow(BaseModel):
    day: date
    provider: str
    model: str
    calls: int = Field(description="Attempts, failed ones included.")
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = Field(description="From the price table; null when no call of the group had a price.")
    avg_latency_ms: int


class LLMUsageOut(BaseModel):
    since: date
    until: date
    usage: list[LLMUsageRow]
    total_cost: float
    total_prompt_tokens: int
    total_completion_tokens: int

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "since": "2026-11-01", "until": "2026-11-30", "total_cost": 0.0123, "total_prompt_tokens": 52_100,
        "total_completion_tokens": 6_020,
        "usage": [{"day": "2026-11-23", "provider": "cheap", "model": "gpt-4o-mini", "calls": 112, "failed": 2,
                   "prompt_tokens": 52_100, "completion_tokens": 6_020, "cost": 0.0123, "avg_latency_ms": 840}],
    }]})


# --- API keys -----------------------------------------------------------------------------------------------


class ApiKeyIn(_In):
    name: str = Field(min_length=1, max_length=200, description="Who or what uses the key, e.g. 'support-team'.")
    scope: Literal["admin", "agent"] = Field(description="`admin`: everything; `agent`: review queue, conversations.")

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "support-team", "scope": "agent"}]}
    )


class ApiKeyOut(BaseModel):
    id: str
    name: str
    scope: str
    prefix: str = Field(description="The `sb_<prefix>_` part of the key, to tell keys apart.")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeysOut(BaseModel):
    api_keys: list[ApiKeyOut]


class NewApiKeyOut(ApiKeyOut):
    api_key: str = Field(description="The key itself. Shown only in this response; store it now.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6f0e1c7a3d4e5f8a9b0c1d2e3f4a5b",
                    "name": "support-team",
                    "scope": "agent",
                    "prefix": "3fa2c1d0",
                    "created_at": "2026-11-23T18:20:00Z",
                    "last_used_at": None,
                    "revoked_at": None,
                    "api_key": "sb_3fa2c1d0_q3J9...",
                }
            ]
        }
    )


# --- channel accounts ---------------------------------------------------------------------------------------


class ChannelPatch(_In):
    """Validated against the account's channel type (its `credentials` and `config` schemas)."""

    name: str | None = Field(default=None, max_length=200)
    config: dict[str, Any] | None = Field(default=None, description="Replaces the stored config.")
    credentials: dict[str, SecretStr] | None = Field(default=None, description="Replaces the stored credentials.")
    enabled: bool | None = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})


class ChannelOut(BaseModel):
    id: str
    channel: str
    external_id: str
    name: str
    config: dict[str, Any]
    enabled: bool
    has_credentials: bool
    webhook_url: str = Field(description="Where the provider must send this account's events.")
    created_at: datetime
    setup: dict[str, str] = Field(
        default_factory=dict, description="Secrets generated for this account, to give "
        "the provider (a verify token, a Telegram secret token); in the create response only.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "9a1b2c3d4e5f60718293a4b5c6d7e8f9",
                    "channel": "telegram",
                    "external_id": "8123456789",
                    "name": "Northwind bot",
                    "config": {},
                    "enabled": True,
                    "has_credentials": True,
                    "webhook_url": "https://switchboard.example.com/webhooks/telegram/8123456789",
                    "created_at": "2026-11-23T18:20:00Z",
                }
            ]
        }
    )


class ChannelsOut(BaseModel):
    channels: list[ChannelOut]


# --- conversations ------------------------------------------------------------------------------------------


class ContactOut(BaseModel):
    id: str
    external_id: str
    display_name: str | None


class ConversationOut(BaseModel):
    id: str
    channel: str
    mode: str = Field(description="`bot`: the assistant answers; `human`: an agent took over.")
    assigned_agent: str | None
    contact: ContactOut
    open_escalation: bool
    created_at: datetime
    updated_at: datetime | None


class ConversationsOut(BaseModel):
    conversations: list[ConversationOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


class MessageOut(BaseModel):
    id: str
    direction: str = Field(description="`in` from the customer, `out` to the customer.")
    author: str | None
    text: str
    status: str
    citations: list[dict[str, Any]] | None
    in_reply_to_id: str | None
    created_at: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "7e...",
                    "direction": "out",
                    "author": "bot",
                    "status": "sent",
                    "text": "Returns are free within 30 days [1].",
                    "in_reply_to_id": "6d...",
                    "citations": [{"document": "returns-and-refunds.md", "chunk_id": "1b0e...", "score": 0.71}],
                    "created_at": "2026-11-23T18:21:00Z",
                }
            ]
        }
    )


class MessagesOut(BaseModel):
    messages: list[MessageOut]
    next_cursor: str | None


class ConversationDetail(ConversationOut):
    messages: list[MessageOut] = Field(description="The latest messages, oldest first; page the rest with /messages.")
    more_messages: bool


# --- audit --------------------------------------------------------------------------------------------------


class AuditOut(BaseModel):
    id: str
    actor: str = Field(description="`key:<api key id>` for an API key, `operator` for the server's operator "
                                   "(its token or the local CLI), `system` for jobs, `bot` for the assistant.")
    actor_name: str | None = Field(
        default=None, description="For a key: its scope and name when the log is read (`admin:ops`)."
    )
    action: str
    subject_type: str
    subject_id: str | None
    data: dict[str, Any]
    created_at: datetime


class AuditPage(BaseModel):
    events: list[AuditOut]
    next_cursor: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "id": "a1...",
                            "actor": "key:7c0e...",
                            "actor_name": "admin:admin",
                            "action": "channel.created",
                            "subject_type": "channel_account",
                            "subject_id": "9a1b...",
                            "data": {"channel": "telegram"},
                            "created_at": "2026-11-23T18:20:00Z",
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )
