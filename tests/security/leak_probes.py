"""The tenant leak suite's engine, shared by tests/security/test_leak_suite.py (a bounded sample) and
benchmarks/leak_probes.py (every route x every id x every principal, >= 10,000 probes).

`seed_tenant` gives a tenant data of every kind through the API (and the pipeline): conversations and messages
carrying unique canary strings, an escalation, knowledge documents, ingestion jobs and pack versions, API keys,
people with a login of each role, channel accounts, a webhook and contacts. `plan` reads the OpenAPI document and
makes, for every operation (method and path template), one probe per id of the victim in each path parameter (and
in the id-like query, header and body fields the schema has); `run_probe` sends one as one of the attacker's
principals and judges it. A probe leaks when it answers 2xx on a route whose request named the victim's object
(outside the few public routes), or when any answer, whatever its status, carries a canary of the victim or an id of
the victim that the request did not send.

A path parameter the planner has no ids for raises `Unprobed`: a new route is never silently left out.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

# Path parameter -> the kind of the victim's ids that fills it. A new path parameter must be added here.
PATH_KINDS: dict[str, str] = {
    "widget_id": "widget",
    "bot_id": "telegram_bot",
    "application_id": "discord_app",
    "name": "llm_key_name",
    "key_id": "api_key",
    "conversation_id": "conversation",
    "account_id": "channel",
    "job_id": "job",
    "document_id": "document",
    "version": "pack_version",
    "escalation_id": "escalation",
    "user_id": "user",
    "invitation_id": "invitation",
    "message_id": "message",
    "contact": "contact",
    "chunk_id": "chunk",
}
# Id-like query parameters and body fields -> kinds. Unlisted optional ones are left out of the request.
QUERY_KINDS: dict[str, str] = {
    "contact": "contact",
    "subject_id": "any",
    "cursor": "cursor",
    "ticket": "forged_ticket",
    "pack_version": "pack_version",
}
BODY_KINDS: dict[str, str] = {"tenant": "slug", "serviceCode": "ussd_code"}
# Bodies that name one of the victim's objects by its channel id: claiming it must fail (a 2xx is a leak).
CLAIMS: dict[tuple[str, str], tuple[str, Any]] = {
    ("POST", "/admin/v1/channels"): ("telegram_bot", lambda bot: {
        "channel": "telegram", "external_id": bot, "credentials": {"bot_token": f"{bot}:claimed"}}),
}
# Kinds that name something in the caller's own namespace (a provider's key slot), not one of the victim's
# objects: a 2xx is the caller acting on its own; only a victim's canary or id in the answer is a leak.
OWN_NAMESPACE = {"llm_key_name"}
HEADER_KINDS: dict[str, str] = {"x-switchboard-tenant": "slug"}
# Routes anyone may call with a victim's public id: a visitor opens a session on any brand's widget.
PUBLIC = {("POST", "/widget/v1/{widget_id}/sessions")}
ROLES = ("owner", "admin", "agent", "viewer")
PASSWORD = "correct horse battery staple"  # a test account's

# Each seeded tenant's pack version number, from a random start and 100 apart: never one another tenant has, its
# seeded one or the next that `seed_document`'s ingestion makes (a random number per tenant collided one run in
# ~900, and the caller's own version then looked like a leak).
_PACK_VERSIONS = itertools.count(100 + uuid.uuid4().int % 800, 100)


class Unprobed(Exception):
    """A route has a path parameter the planner cannot fill: add it to PATH_KINDS (and seed ids of that kind)."""


@dataclass
class Tenant:
    """One tenant's credentials, every id it owns by kind, and the canary strings written into its data."""

    id: str
    slug: str
    admin: str
    agent: str
    widget_id: str
    visitor: str = ""
    visitor_conversation: str = ""
    tickets: list[str] = field(default_factory=list)  # its own stream tickets (credentials, never sent by others)
    logins: dict[str, str] = field(default_factory=dict)  # role -> access token
    emails: dict[str, str] = field(default_factory=dict)  # role -> email
    refresh: list[str] = field(default_factory=list)
    ids: dict[str, list[str]] = field(default_factory=dict)  # kind -> ids
    canaries: list[str] = field(default_factory=list)

    def principals(self) -> dict[str, str]:
        """name -> bearer token: the admin key, the agent key, a login of each role, and a widget visitor."""
        return {"admin-key": self.admin, "agent-key": self.agent,
                **{f"login-{role}": token for role, token in self.logins.items()}, "widget-visitor": self.visitor}

    def canary(self, what: str) -> str:
        value = f"CANARY{uuid.uuid4().hex[:12]}{what}"
        self.canaries.append(value)
        return value

    def add(self, kind: str, *values: str) -> None:
        self.ids.setdefault(kind, []).extend(v for v in values if v not in self.ids.get(kind, []))

    def secrets(self) -> set[str]:
        """Strings of this tenant that no other tenant's answer may carry: canaries, ids, credentials."""
        ids = {v for kind, values in self.ids.items() if kind not in OWN_NAMESPACE | {"pack_version"}
               for v in values}
        return {*self.canaries, *ids, self.id, self.slug, self.admin, self.agent, self.visitor,
                *self.logins.values(), *self.refresh, *self.tickets}


def _ok(response: httpx.Response, *expected: int) -> Any:
    assert response.status_code in expected, (response.request.method, response.request.url, response.text)
    return response.json() if response.content else None


def seed_tenant(http: httpx.Client, prefix: str, *, conversations: int = 2) -> Tenant:
    """A tenant with data of every kind, made through the API where the API makes it."""
    from app.db import session_scope
    from app.models import Contact, Escalation, IngestionJob, Message, PackVersion
    from app.tenants.service import create_tenant

    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with session_scope(cross_tenant="tests") as session:
        new = create_tenant(session, slug, name=f"{prefix} brand")
        t = Tenant(new.tenant.id, slug, new.admin_api_key, new.agent_api_key, new.widget_id)
    admin = {"Authorization": f"Bearer {t.admin}"}
    _ok(http.patch("/admin/v1/tenant", headers=admin, json={"name": t.canary("name")}), 200)
    t.add("widget", t.widget_id)

    # People: one of each role, each logged in.
    for role in ROLES:
        email = f"{role}-{uuid.uuid4().hex[:10]}@example.com"
        r = http.post("/admin/v1/users", headers=admin, json={"email": email, "role": role})
        if r.status_code == 403 and role == "owner":  # only an owner may make an owner: do it as the service would
            from app.accounts import service as accounts
            from app.auth import Principal

            with session_scope(cross_tenant="tests") as session:
                who = Principal(t.id, t.slug, "admin", None, "operator", role="owner")
                member, _ = accounts.add_member(session, who, email, role, PASSWORD)
                user_id = member.user_id
        else:
            token = _ok(r, 201)["token"]
            access = _ok(http.post("/auth/invitations/accept", json={"token": token, "password": PASSWORD}), 200)
            me = _ok(http.get("/auth/me", headers={"Authorization": f"Bearer {access['access_token']}"}), 200)
            user_id = me["user_id"]
        t.add("user", user_id)
        t.emails[role] = email
        login(http, t, role)

    # An invitation still pending (its email a canary; emails are stored lower-cased).
    invitee = t.canary("invite").lower()
    t.canaries.append(invitee)
    pending = _ok(http.post("/admin/v1/users", headers=admin,
                            json={"email": f"{invitee}@example.com", "role": "agent"}), 201)
    t.add("invitation", pending["invitation_id"])

    # API keys beyond the two the tenant was made with.
    for scope in ("admin", "agent"):
        _ok(http.post("/admin/v1/api-keys", headers=admin, json={"name": t.canary("key"), "scope": scope}), 201)
    t.add("api_key", *[k["id"] for k in _ok(http.get("/admin/v1/api-keys", headers=admin), 200)["api_keys"]])

    # Channel accounts: a Telegram bot and a Discord application (their credentials are canaries), with webchat.
    bot = str(uuid.uuid4().int % 10**10)
    _ok(http.post("/admin/v1/channels", headers=admin, json={
        "channel": "telegram", "external_id": bot, "credentials": {"bot_token": f"{bot}:{t.canary('bot')}"}}), 201)
    t.add("telegram_bot", bot)
    app_id = str(uuid.uuid4().int % 10**17)
    r = http.post("/admin/v1/channels", headers=admin, json={
        "channel": "discord", "external_id": app_id,
        "credentials": {"public_key": "0" * 64, "bot_token": t.canary("discord")}})
    if r.status_code == 201:
        t.add("discord_app", app_id)
    t.add("discord_app", app_id)  # unused or not, the victim's id goes into the path
    code = f"*{uuid.uuid4().int % 1000}*{uuid.uuid4().int % 10000}#"
    r = http.post("/admin/v1/channels", headers=admin, json={"channel": "ussd", "external_id": code})
    if r.status_code == 201:
        t.add("ussd_code", code)
    t.add("channel", *[c["id"] for c in _ok(http.get("/admin/v1/channels", headers=admin), 200)["channels"]])

    # The escalation webhook (its URL is a canary; a URL the outbound guard refuses is stored by the service).
    r = http.put("/admin/v1/webhook", headers=admin, json={"url": f"https://hooks.example.com/{t.canary('hook')}"})
    if r.status_code != 200:
        from app.crypto import encrypt_json
        from app.models import TenantWebhook

        with session_scope(cross_tenant="tests") as session:
            session.add(TenantWebhook(tenant_id=t.id, url=f"https://hooks.example.com/{t.canary('hook')}",
                                      secret_encrypted=encrypt_json({"secret": t.canary("hooksecret")})))
    t.add("llm_key_name", "openai", "default")

    # A widget visitor who writes a canary through the public API.
    t.visitor = _ok(http.post(f"/widget/v1/{t.widget_id}/sessions", json={}), 201)["token"]
    visitor = {"Authorization": f"Bearer {t.visitor}"}
    sent = _ok(http.post(f"/widget/v1/{t.widget_id}/messages", headers=visitor,
                         json={"text": f"hello {t.canary('widget')}", "client_message_id": "c1"}), 202)
    t.visitor_conversation = sent["conversation_id"]
    t.add("conversation", sent["conversation_id"])
    t.add("message", sent["message_id"])
    ticket = _ok(http.post(f"/widget/v1/{t.widget_id}/events/tickets", headers=visitor), 201)["ticket"]
    console = _ok(http.post("/review/v1/events/tickets", headers=admin), 201)["ticket"]
    t.tickets += [ticket, console]

    # Conversations, messages and an escalation each, as the pipeline writes them, and an ingestion job and pack
    # version (the rows the knowledge API reads).
    from app.conversations.replies import add_outbound
    from tests.factories import get_or_create_contact, get_or_create_conversation

    version = next(_PACK_VERSIONS)  # tenants' numbers differ, so another's names nothing of the caller's
    with session_scope(cross_tenant="tests") as session:
        for i in range(conversations):
            contact = get_or_create_contact(session, t.id, "webchat", f"v-{uuid.uuid4().hex[:12]}", t.canary("who"))
            conversation = get_or_create_conversation(session, t.id, contact, None)
            inbound = Message(tenant_id=t.id, conversation_id=conversation.id, channel="webchat", direction="in",
                              provider_message_id=f"{contact.external_id}:q{i}", status="escalated",
                              text=f"my question {t.canary('q')} mail {t.canary('m')}@example.com")
            session.add(inbound)
            session.flush()
            out, _ = add_outbound(session, conversation, key=f"reply:{inbound.id}", text=f"answer {t.canary('a')}",
                               author="bot", in_reply_to_id=inbound.id)
            escalation = Escalation(tenant_id=t.id, conversation_id=conversation.id, message_id=inbound.id,
                                    reason="no_knowledge", draft=f"draft {t.canary('draft')}")
            session.add(escalation)
            session.flush()
            t.add("conversation", conversation.id)
            t.add("message", inbound.id, out.id)
            t.add("escalation", escalation.id)
        job = IngestionJob(tenant_id=t.id, status="succeeded", total_files=1, done_files=1, chunks=1,
                           detail=t.canary("job"), pack_version=version)
        session.add(job)
        session.flush()
        t.add("job", job.id)
        session.add(PackVersion(tenant_id=t.id, version=version, status="ready", job_id=job.id,
                                notes=t.canary("pack")))
        t.add("pack_version", str(version))
        session.flush()
        for c in session.query(Contact).filter(Contact.tenant_id == t.id):
            t.add("contact", c.id, c.external_id, f"{c.channel}:{c.external_id}")
            if c.display_name is None:
                c.display_name = t.canary("visitor")
    document = seed_document(t)
    t.add("document", document)
    # Cursors of the tenant's own pages.
    for path in ("/admin/v1/conversations", "/admin/v1/knowledge/jobs", "/admin/v1/audit"):
        page = _ok(http.get(path, headers=admin, params={"limit": 1}), 200)
        if page.get("next_cursor"):
            t.add("cursor", page["next_cursor"])
    t.add("slug", t.slug, t.id)
    return t


def seed_document(t: Tenant) -> str:
    """A document and its chunks as the ingester writes them (no vectors), title and text canaries."""
    from app.db import session_scope
    from app.models import Chunk, Document

    with session_scope(cross_tenant="tests") as session:
        doc = Document(tenant_id=t.id, path=f"{t.canary('doc')}.md", title=t.canary("title"), kind="markdown",
                       content_hash="0" * 64)
        session.add(doc)
        session.flush()
        session.add(Chunk(id=str(uuid.uuid4()), tenant_id=t.id, document_id=doc.id, ordinal=0,
                          text=f"passage {t.canary('chunk')}"))
        # One chunk held by the injection scan (app/knowledge/quarantine.py): the quarantine routes list and
        # release it, for its own tenant only.
        held = str(uuid.uuid4())
        session.add(Chunk(id=held, tenant_id=t.id, document_id=doc.id, ordinal=1,
                          text=f"held passage {t.canary('held')}",
                          quarantine={"status": "held", "reason": "prompt injection suspected (seeded)"}))
        t.add("chunk", held)
        return doc.id


# --- the plan: probes from the OpenAPI document --------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    path_params: tuple[str, ...]
    query: dict[str, Any]  # name -> {"required": bool, "schema": ...}
    body_type: str | None
    body: Any
    stream: bool
    fields: tuple[str, ...] = ()  # the body's top-level fields

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Probe:
    op: Operation
    url: str
    params: dict[str, Any]
    body: Any
    sent: set[str]  # the victim's values this request carries
    names_victim: bool  # the path names one of the victim's objects


def operations(document: dict[str, Any]) -> list[Operation]:
    """Every operation of the document; raises Unprobed for a path parameter without a kind."""
    found = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            params = op.get("parameters", [])
            path_params = tuple(p["name"] for p in params if p["in"] == "path")
            missing = [p for p in path_params if p not in PATH_KINDS]
            if missing:
                raise Unprobed(f"{method.upper()} {path}: the leak suite cannot fill path parameter(s) {missing}; "
                               f"add them to PATH_KINDS in tests/security/leak_probes.py and seed ids of that kind")
            query = {p["name"]: p for p in params if p["in"] == "query"}
            content = (op.get("requestBody") or {}).get("content", {})
            body_type = next(iter(content), None)
            schema = _resolve(document, content[body_type].get("schema", {})) if body_type else {}
            body = example(document, schema) if body_type else None
            stream = any("text/event-stream" in (r.get("content") or {}) for r in op.get("responses", {}).values())
            found.append(Operation(method.upper(), path, path_params, query, body_type, body, stream,
                                   tuple(schema.get("properties", {}))))
    return found


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def example(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A value the schema accepts: its example, default or first choice, or one built from its required parts."""
    schema = _resolve(document, schema)
    if schema.get("examples"):
        return schema["examples"][0]
    for key in ("example", "default", "const"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            choices = [s for s in schema[key] if _resolve(document, s).get("type") != "null"]
            return example(document, choices[0]) if choices else None
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example(document, props[k]) for k in schema.get("required", []) if k in props}
    if kind == "array":
        return []
    if kind == "string":
        if schema.get("format") == "date-time":
            return datetime.now(UTC).isoformat()
        return "x" * max(int(schema.get("minLength", 1)), 1)
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return None


def plan(ops: list[Operation], victim: Tenant, attacker: Tenant) -> Iterator[Probe]:
    """For each operation: one probe per combination of the victim's ids in its path parameters, and one per
    victim id in each id-like query or body field. Operations without either get one probe (the attacker's own
    lists must not show the victim)."""
    for op in ops:
        choices = [[(name, v) for v in victim.ids.get(PATH_KINDS[name], [])] for name in op.path_params]
        for name, options in zip(op.path_params, choices, strict=True):
            if not options:
                raise Unprobed(f"{op.label}: the victim has no ids of kind {PATH_KINDS[name]!r} for {name!r}")
        base_params = _base_query(op)
        base_body = _base_body(op, attacker)
        for combo in itertools.product(*choices):
            url = op.path
            for name, value in combo:
                url = url.replace("{" + name + "}", value)
            sent = {v for _, v in combo}
            names_victim = any(PATH_KINDS[name] not in OWN_NAMESPACE for name, _ in combo)
            yield Probe(op, url, dict(base_params), base_body, sent, names_victim)
            if combo:
                continue
            for name in op.query:
                if name in QUERY_KINDS:
                    for value in _victim_values(victim, QUERY_KINDS[name], attacker):
                        yield Probe(op, url, {**base_params, name: value}, base_body, {value}, False)
            if (op.method, op.path) in CLAIMS:
                kind, make = CLAIMS[(op.method, op.path)]
                for value in victim.ids.get(kind, []):
                    yield Probe(op, url, dict(base_params), make(value), {value}, True)
            if isinstance(base_body, dict):
                for name in BODY_KINDS:
                    if name in op.fields:
                        for value in _victim_values(victim, BODY_KINDS[name], attacker):
                            yield Probe(op, url, dict(base_params), {**base_body, name: value}, {value}, False)


def _victim_values(victim: Tenant, kind: str, attacker: Tenant) -> list[str]:
    if kind == "forged_ticket":
        # The attacker's own tickets (signed for it) re-pointed at the victim's tenant and contacts.
        heads = [victim.id, *[c for c in victim.ids.get("contact", []) if len(c) == 32]]
        return [f"{head}.{ticket.split('.', 1)[1]}" for ticket in attacker.tickets for head in heads]
    if kind == "any":
        return [v for vs in victim.ids.values() for v in vs]
    return victim.ids.get(kind, [])


def _base_query(op: Operation) -> dict[str, Any]:
    params: dict[str, Any] = {name: example({}, p.get("schema", {})) for name, p in op.query.items()
                              if p.get("required")}
    if "wait" in op.query:
        params["wait"] = 0  # a long-poll would hold every probe for its whole wait
    return params


def _base_body(op: Operation, attacker: Tenant) -> Any:
    if op.body_type == "application/x-www-form-urlencoded" and op.path == "/auth/login":
        # The attacker's own person, asking for a token of another tenant (the probe fills `tenant`).
        return {"username": attacker.emails.get("agent", ""), "password": PASSWORD}
    return op.body


# --- running and judging -----------------------------------------------------------------------------------------


@dataclass
class Result:
    op: str
    principal: str
    status: int
    leaked: str | None  # why, or None


@dataclass
class Tally:
    probes: int = 0
    leaks: list[Result] = field(default_factory=list)
    by_status: Counter[int] = field(default_factory=Counter)
    by_route: Counter[tuple[str, int]] = field(default_factory=Counter)

    def add(self, result: Result) -> None:
        self.probes += 1
        self.by_status[result.status] += 1
        self.by_route[(result.op, result.status)] += 1
        if result.leaked:
            self.leaks.append(result)


STREAM_READ_S = 0.3


def run_probe(http: httpx.Client, probe: Probe, principal: str, token: str, victim: Tenant,
              secrets: set[str]) -> Result:
    headers = {"Authorization": f"Bearer {token}", "X-Switchboard-Tenant": victim.slug}
    kwargs: dict[str, Any] = {"params": probe.params, "headers": headers}
    if probe.op.body_type == "application/json":
        kwargs["json"] = probe.body
    elif probe.op.body_type == "application/x-www-form-urlencoded":
        kwargs["data"] = probe.body
    elif probe.op.body_type == "multipart/form-data":
        kwargs["files"] = [("files", ("probe.md", b"# probe\n\nnothing of anyone's", "text/markdown"))]
    if probe.op.stream:
        status, text = _read_stream(http, probe, kwargs)
    else:
        response = http.request(probe.op.method, probe.url, **kwargs)
        status, text = response.status_code, response.text
    return Result(probe.op.label, principal, status, judge(probe, status, text, secrets))


def _read_stream(http: httpx.Client, probe: Probe, kwargs: dict[str, Any]) -> tuple[int, str]:
    """The status and what a stream sends in its first STREAM_READ_S (it stays open by design)."""
    chunks: list[str] = []
    try:
        with http.stream(probe.op.method, probe.url, timeout=httpx.Timeout(5, read=STREAM_READ_S * 4),
                         **kwargs) as response:
            status = response.status_code
            try:
                for chunk in response.iter_text():
                    chunks.append(chunk)
                    if "event: ready" in "".join(chunks):
                        break
            except httpx.ReadTimeout:
                pass
    except httpx.ReadTimeout:
        return 0, ""
    return status, "".join(chunks)


def judge(probe: Probe, status: int, text: str, secrets: set[str]) -> str | None:
    """Why this answer leaks, or None."""
    if 200 <= status < 300 and probe.names_victim and (probe.op.method, probe.op.path) not in PUBLIC:
        return f"{status} for the victim's {sorted(probe.sent)}"
    found = [s for s in secrets if s and s in text and not any(s in sent for sent in probe.sent)]
    if found:
        return f"{status} carries the victim's {found[:3]}"
    return None


def run_all(http: httpx.Client, probes: list[Probe], attacker: Tenant, victim: Tenant, tally: Tally) -> None:
    """Each probe as every principal of the attacker. After a probe that may end the attacker's login (logout,
    a password change) the login is renewed, so the probes after it still get past authentication."""
    secrets = victim.secrets() - attacker.secrets()
    for probe in probes:
        for principal, token in attacker.principals().items():
            tally.add(run_probe(http, probe, principal, token, victim, secrets))
            if probe.op.path in ("/auth/logout", "/auth/password") and principal.startswith("login-"):
                login(http, attacker, principal.removeprefix("login-"))


def login(http: httpx.Client, t: Tenant, role: str) -> None:
    token = _ok(http.post("/auth/login", data={"username": t.emails[role], "password": PASSWORD, "tenant": t.slug}),
                200)
    t.logins[role] = token["access_token"]
    t.refresh.append(token["refresh_token"])


def report(tally: Tally) -> str:
    lines = [f"probes {tally.probes}, leaks {len(tally.leaks)}",
             "by status: " + json.dumps(dict(sorted(tally.by_status.items())))]
    for leak in tally.leaks[:20]:
        lines.append(f"LEAK {leak.op} as {leak.principal}: {leak.leaked}")
    return "\n".join(lines)


def sample(probes: list[Probe], n: int) -> list[Probe]:
    """Every operation at least once, then an even spread up to n."""
    seen: dict[str, Probe] = {}
    for p in probes:
        seen.setdefault(p.op.label, p)
    rest = [p for p in probes if p not in seen.values()]
    step = max(1, len(rest) // max(1, n - len(seen)))
    return [*seen.values(), *rest[::step]][:max(n, len(seen))]

