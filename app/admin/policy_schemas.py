"""The tenant's policies as the admin API takes them: persona, answer checks, modes, SLA, and the LLM providers
and routing. Inputs are strict (`extra="forbid"`): a misspelt policy name is a 422 naming the field, not a silently
ignored key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, model_validator

from app import ussd_menu
from app.netguard import check_url

Channel = Literal["webchat", "whatsapp", "instagram", "telegram", "twilio", "ussd", "discord"]
Mode = Literal["auto", "draft", "human"]  # app/assistant/modes.py


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        description="The knowledge's language, BCP 47 (e.g. 'en', 'pt-BR'); customers writing another one get a "
                    "translated answer with an LLM, else an escalation `language` (docs/admin.md).",
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
    over_quota: Literal["escalate", "offline"] | None = Field(
        default=None,
        description="Past the plan's monthly messages or LLM tokens, or its messages per minute (GET /admin/v1/usage): "
                    "escalate: each message goes to an agent with reason quota_exceeded and the customer gets "
                    "`escalation_notice` (default); offline: answered from the knowledge by the offline composer, "
                    "without the LLM (escalated as usual when the knowledge has no answer).",
    )
    llm: LLMPolicy | None = None
    ussd_menu: UssdMenu | None = Field(
        default=None, description="Numbered menus on USSD (replaced whole; null: sessions open on the account's "
                                  "prompt and take a question).",
    )
    pii_ner: bool | None = Field(
        default=None,
        description="Also mask customers' names and street addresses before the LLM (the optional named-entity "
                    "extra: `pip install 'switchboard[ner]'` plus a spaCy model, see docs/security.md). Null: the "
                    "operator's SWITCHBOARD_PII_NER (default off). Turning it on where the extra is not installed "
                    "is refused with the install command.",
    )
    injection_threshold: float | None = Field(
        default=None, ge=0.05, le=1,
        description="Prompt-injection score (0..1) at or above which a message is escalated and a knowledge chunk "
                    "quarantined (null: the detector's own threshold, chosen when its model was trained; lower "
                    "catches more and flags more benign text).",
    )
    pii_retention_days: int | None = Field(
        default=None, ge=1, le=3650,
        description="Days the structured PII customers give (emails, phone numbers, cards...) is kept as written; "
                    "past them it is replaced by the placeholders agents see, in messages, escalations and audit "
                    "data, and no reveal can bring it back (null: kept).",
    )
    message_retention_days: int | None = Field(
        default=None, ge=1, le=3650,
        description="Days message texts are kept; past them messages' text, escalations' drafts and passages and "
                    "long audit strings are emptied (counts, times and statuses stay). null: kept until erased.",
    )
