"""Request and response shapes of the admin API. Their examples are what the OpenAPI page shows.

Inputs are strict (`extra="forbid"`): a misspelt policy name is a 422 naming the field, not a silently ignored
key."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, SecretStr, model_validator

from app import ussd_menu
from app.netguard import check_url

Channel = Literal["webchat", "whatsapp", "instagram", "telegram", "twilio", "ussd", "discord"]
Mode = Literal["auto", "draft", "human"]  # app/assistant/modes.py


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- tenant -------------------------------------------------------------------------------------------------


class Persona(_In):
    """How the assistant speaks for the brand. Rendered into the prompts; unset fields use defaults."""

    name: str | None = Field(default=None, max_length=100, description="The assistant's name, as customers see it.")
    brand: str | None = Field(default=None, max_length=200, description="The brand the assistant speaks for.")
    tone: str | None = Field(default=None, max_length=2000, description="Guidance on voice, written to the model.")
    greeting: str | None = Field(default=None, max_length=1000, description="First message of a conversation.")
    sign_off: str | None = Field(default=None, max_length=200)
    language: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
        description="BCP 47 tag, e.g. 'en' or 'pt-BR'.",
    )


def _public_url(url: HttpUrl) -> HttpUrl:
    if problem := check_url(str(url)):
        raise ValueError(problem)
    return url


# A URL a tenant sets and the server calls: http(s), never loopback, private, link-local or metadata addresses
# (checked again on every connection, see app/netguard.py).
TenantURL = Annotated[HttpUrl, AfterValidator(_public_url)]


ProviderName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$",
                                    description="Lower-case letters, digits, `-` and `_`; at most 40.")]


class LLMProvider(_In):
    """One entry of the tenant's ordered LLM list."""

    name: ProviderName = Field(description="Names the entry in usage records and for its key "
                                           "(PUT /admin/v1/tenant/llm-keys/{name}).")
    base_url: TenantURL | None = Field(
        default=None,
        description="Any OpenAI-compatible API base (a hosted provider, or a local server the operator allowed in "
        "OUTBOUND_ALLOW_HOSTS). Unset: the server's own endpoint, with this model. Gets the key stored for this "
        "name, else the tenant's key, else none; never the server's own key.",
    )
    model: str = Field(min_length=1, max_length=200)
    timeout_s: float | None = Field(default=None, gt=0, le=300, description="One attempt's limit.")
    max_retries: int | None = Field(default=None, ge=0, le=10, description="Further attempts at this entry.")
    input_per_1m: float | None = Field(default=None, ge=0, description="Price of a million prompt tokens.")
    output_per_1m: float | None = Field(default=None, ge=0, description="Price of a million completion tokens.")


class LLMRoute(_In):
    """Questions of at most `max_words` words (and, with `min_score`, whose best passage scores at least that, i.e.
    the knowledge answers them directly) go first to the entry named `use`; the rest of the list follows it."""

    max_words: int = Field(ge=1, le=200)
    use: ProviderName
    min_score: float | None = Field(default=None, ge=0, le=1)


class LLMPolicy(_In):
    """The tenant's LLM: one endpoint (`base_url`, `model`...) or an ordered list (`providers`), tried in order
    until one answers within `deadline_s`. Unset fields fall back to the server's defaults."""

    base_url: TenantURL | None = Field(
        default=None,
        description="OpenAI-compatible API base, e.g. https://host/v1. Must reach a public address; the server's "
        "own LLM key is never sent to it (set the tenant's key with PUT /admin/v1/tenant/llm-key).",
    )
    model: str | None = Field(default=None, min_length=1, max_length=200)
    timeout_s: float | None = Field(default=None, gt=0, le=300)
    max_retries: int | None = Field(default=None, ge=0, le=10)
    providers: list[LLMProvider] | None = Field(
        default=None, min_length=1, max_length=8,
        description="Ordered list, tried first to last; replaces `base_url`/`model` when set.",
    )
    deadline_s: float | None = Field(default=None, gt=0, le=600,
                                     description="Time for the whole answer, every provider and retry included.")
    route: LLMRoute | None = Field(default=None, description="Optional rule sending short questions to a cheaper "
                                                             "entry of `providers`.")

    @model_validator(mode="after")
    def _one_form(self) -> LLMPolicy:
        if self.providers is not None:
            if self.base_url is not None:
                raise ValueError("set either base_url (one endpoint) or providers (a list), not both")
            names = [p.name for p in self.providers]
            if len(set(names)) != len(names):
                raise ValueError(f"provider names must be unique: {names}")
        return self


USSD_MAX_DEPTH = 4  # menu levels, the root included
USSD_MAX_OPTIONS = 9  # per menu: one digit each, `0` is back
USSD_MAX_TOTAL_OPTIONS = 100


class UssdOption(_In):
    """One numbered choice: exactly one of `answer`, `ask` or `options`."""

    key: str = Field(pattern=r"^[1-9]$", description="The digit the customer types (`0` is reserved for back).")
    label: str = Field(min_length=1, max_length=60)
    answer: str | None = Field(default=None, min_length=1, max_length=ussd_menu.ANSWER_MAX,
                               description="Shown as the final screen (`END`).")
    ask: bool | None = Field(default=None, description="true: the next input is a free-text question, answered "
                                                       "like any channel's message (escalated when unsure).")
    prompt: str | None = Field(default=None, min_length=1, max_length=ussd_menu.ASK_PROMPT_MAX,
                               description=f"With `ask`: the screen asking for the question "
                                           f"(default {ussd_menu.ASK_PROMPT!r}).")
    text: str | None = Field(default=None, max_length=ussd_menu.MENU_BODY_MAX,
                             description="With `options`: the sub-menu's title (default: the label).")
    options: list[UssdOption] | None = Field(default=None, min_length=1, max_length=USSD_MAX_OPTIONS,
                                             description="A sub-menu.")

    @model_validator(mode="after")
    def _one_kind(self) -> UssdOption:
        kinds = [k for k, v in (("answer", self.answer), ("ask", self.ask), ("options", self.options)) if v]
        if len(kinds) != 1:
            raise ValueError(f"option {self.key!r} needs exactly one of answer, ask (true) or options; "
                             f"it has {', '.join(kinds) or 'none'}")
        if self.prompt is not None and not self.ask:
            raise ValueError(f"option {self.key!r}: `prompt` goes with `ask`")
        if self.text is not None and not self.options:
            raise ValueError(f"option {self.key!r}: `text` is a sub-menu's title; it goes with `options`")
        return self


class UssdMenu(_In):
    """Numbered USSD menus: the first screen of a session and its sub-menus. A screen is at most 182 characters;
    a menu screen keeps room for "CON " and the "Invalid option." line."""

    text: str = Field(min_length=1, max_length=ussd_menu.MENU_BODY_MAX, description="The first screen's title.")
    options: list[UssdOption] = Field(min_length=1, max_length=USSD_MAX_OPTIONS)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "text": "Northwind", "options": [
            {"key": "1", "label": "Opening hours", "answer": "Mon-Sat 9:00-18:00."},
            {"key": "2", "label": "Ask a question", "ask": True},
            {"key": "3", "label": "More", "options": [
                {"key": "1", "label": "Returns", "answer": "Free returns within 30 days."}]},
        ]}]})

    @model_validator(mode="after")
    def _fits(self) -> UssdMenu:
        total = 0

        def check(node: dict[str, Any], where: str, depth: int) -> None:
            nonlocal total
            if depth > USSD_MAX_DEPTH:
                raise ValueError(f"{where}: menus nest at most {USSD_MAX_DEPTH} levels deep")
            keys = [o["key"] for o in node["options"]]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{where}: option keys must be unique, got {keys}")
            total += len(keys)
            body = ussd_menu.menu_body(node, is_root=depth == 1)
            if len(body) > ussd_menu.MENU_BODY_MAX:
                raise ValueError(f"{where}: the screen is {len(body)} characters, at most "
                                 f"{ussd_menu.MENU_BODY_MAX} fit (182 minus 'CON ' and the invalid-option line); "
                                 f"shorten its text or labels")
            for option in node["options"]:
                if option.get("options"):
                    sub = {"text": option.get("text") or option["label"], "options": option["options"]}
                    below = f"{where} > {option['key']}" if depth > 1 else f"the screen of option {option['key']}"
                    check(sub, below, depth + 1)

        check(self.model_dump(), "the first screen", 1)
        if total > USSD_MAX_TOTAL_OPTIONS:
            raise ValueError(f"ussd_menu has {total} options; at most {USSD_MAX_TOTAL_OPTIONS}")
        return self


class Policies(_In):
    min_relevance: float | None = Field(
        default=None, ge=0, le=1, description="Retrieval score below which the assistant escalates instead."
    )
    banned_phrases: list[str] | None = Field(
        default=None,
        max_length=500,
        description="A reply containing one (case-insensitive) is held for review.",
    )
    handoff_keywords: list[str] | None = Field(
        default=None,
        max_length=500,
        description="A customer message containing one goes straight to a human.",
    )
    escalation_notice: str | None = Field(
        default=None, max_length=1000, description="What the customer is told while a human looks at it."
    )
    max_reply_chars: int | None = Field(default=None, ge=50, le=10_000)
    burst_window_s: float | None = Field(
        default=None, ge=0, le=30,
        description="Messages from one contact within this many seconds are answered as one turn (0: off).",
    )
    stream_replies: bool | None = Field(
        default=None,
        description="Show web chat visitors the LLM's answer as it is written (default true; the reply is final "
                    "only after the checks on the whole answer).",
    )
    mode: Mode | None = Field(
        default=None,
        description="auto: answers go out when grounded (default); draft: every answer waits for an agent's "
                    "approval; human: the bot only acknowledges (`escalation_notice`) and routes to an agent.",
    )
    channel_modes: dict[Channel, Mode | None] | None = Field(
        default=None, description="Per-channel overrides of `mode`, e.g. {\"whatsapp\": \"draft\"} (null resets one).",
    )
    draft_notice: bool | None = Field(
        default=None,
        description="In draft mode, send the customer `escalation_notice` while the draft waits (default false: "
                    "the customer hears nothing until the approved answer).",
    )
    sla_first_response_s: int | None = Field(
        default=None, ge=10, le=7 * 86400,
        description="First-response target: this long after an escalation opens with no agent decision or reply, "
                    "the customer gets one holding message and the escalation is marked breached (null: none).",
    )
    sla_holding_message: str | None = Field(
        default=None, min_length=1, max_length=1000, description="The holding message sent when the target passes.",
    )
    llm: LLMPolicy | None = None
    ussd_menu: UssdMenu | None = Field(
        default=None, description="Numbered menus on USSD (replaced whole; null: sessions open on the account's "
                                  "prompt and take a question).",
    )
    pii_retention_days: int | None = Field(
        default=None, ge=1, le=3650,
        description="Days the structured PII customers give (emails, phone numbers, cards...) is kept as written; "
                    "past them it is replaced by the placeholders agents see, in messages, escalations and audit "
                    "data, and no reveal can bring it back (null: kept).",
    )


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


# --- knowledge ----------------------------------------------------------------------------------------------


class FileError(BaseModel):
    file: str
    reason: str


class JobOut(BaseModel):
    id: str
    status: str = Field(description="`queued`, `running`, `succeeded` or `failed`.")
    pack_version: int | None = Field(default=None, description="The pack version this job builds.")
    total_files: int
    done_files: int
    chunks: int
    errors: list[FileError] = Field(
        description="Files that were refused, with the reason; a succeeded job can have some."
    )
    detail: str | None
    created_at: datetime
    finished_at: datetime | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "4c2d...",
                    "status": "succeeded",
                    "total_files": 3,
                    "done_files": 3,
                    "chunks": 57,
                    "errors": [{"file": "broken.csv", "reason": "row 4 has no answer column"}],
                    "detail": None,
                    "created_at": "2026-11-23T18:20:00Z",
                    "finished_at": "2026-11-23T18:20:09Z",
                }
            ]
        }
    )


class JobsOut(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class UploadAccepted(BaseModel):
    job_id: str
    status: str
    status_url: str
    files: list[str] = Field(description="The files the job will ingest, by their name within the pack.")
    skipped: list[FileError] = Field(description="Zip members left out (unsupported type), with the reason.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "4c2d...",
                    "status": "queued",
                    "status_url": "/admin/v1/knowledge/jobs/4c2d...",
                    "files": ["faq.csv", "returns.md"],
                    "skipped": [{"file": "logo.png", "reason": "unsupported type '.png'"}],
                }
            ]
        }
    )


class DocumentOut(BaseModel):
    id: str
    path: str
    title: str
    kind: str
    chunks: int
    pack_version: int
    status: str
    error: str | None
    meta: dict[str, Any] = Field(default_factory=dict, description="brand, category, language, source_url.")
    created_at: datetime


class DocumentsOut(BaseModel):
    documents: list[DocumentOut]


class PackVersionOut(BaseModel):
    version: int
    status: str = Field(description="`building`, `ready`, `live`, `retired`, `failed` or `pruned`.")
    documents: int
    chunks: int
    embedded: int = Field(description="Chunks embedded for this build; the others reused cached vectors.")
    scores: dict[str, Any] = Field(description="Evaluation on the tenant's eval set: n, hit@1, hit@5, mrr.")
    notes: str | None
    job_id: str | None
    created_at: datetime
    promoted_at: datetime | None


class PackVersionsOut(BaseModel):
    live_version: int | None
    versions: list[PackVersionOut]


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
