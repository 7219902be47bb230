"""Operator actions shared by the CLI and the embedded server's operator routes.

In embedded mode only one process may hold the vector store and the in-process bus. While `switchboard serve`
runs, it writes `$SWITCHBOARD_HOME/server.json` (its URL and an operator token, mode 0600) and the CLI sends
these actions to it over HTTP; otherwise the CLI runs them in its own process. Scale-out CLIs always run them
locally: every resource is a shared server then.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from app.config import get_settings
from app.db import session_scope
from app.models import Escalation, Message

if TYPE_CHECKING:
    from app.bootstrap import Container

SERVER_FILE = "server.json"


class OperationError(Exception):
    pass


def create_tenant(slug: str, name: str | None = None, folder: Path | None = None) -> dict[str, Any]:
    from app.tenants.service import TenantError, TenantSpec
    from app.tenants.service import create_tenant as create

    spec = TenantSpec.load(folder) if folder else None
    try:
        # A tenant that does not exist yet has no scope: its creation (unique slug, keys, widget) crosses tenants.
        with session_scope(cross_tenant="tenant creation") as session:
            new = create(session, slug, name or (spec.name if spec else None),
                         spec.persona if spec else None, spec.policies if spec else None)
            result = {
                "tenant": slug,
                "admin_api_key": new.admin_api_key,
                "agent_api_key": new.agent_api_key,
                "widget_id": new.widget_id,
            }
    except TenantError as exc:
        raise OperationError(str(exc)) from exc
    return result


def set_plan(services: Container, slug: str, plan: str | None = None,
             overrides: Mapping[str, int | None] | None = None, *, clear_overrides: bool = False) -> dict[str, Any]:
    """Assign a tenant's plan (None: keep it) and set figures of it for this tenant (merged into the ones set
    before; `clear_overrides` drops those first). Returns the effective plan. Other processes see it within
    QUOTA_CACHE_S."""
    from app import audit
    from app.models import Tenant
    from app.tenants.plans import FIGURES, PLANS, UnknownPlan, effective
    from app.tenants.service import TenantError, tenant_id_of

    if plan is not None and plan not in PLANS:
        raise OperationError(str(UnknownPlan(plan)))
    unknown = set(overrides or {}) - set(FIGURES)
    if unknown:
        raise OperationError(f"unknown plan figures {sorted(unknown)}: use {', '.join(FIGURES)}")
    if any(v is not None and v < 0 for v in (overrides or {}).values()):
        raise OperationError("plan figures must be 0 or more")
    try:
        tenant_id = tenant_id_of(slug)
    except TenantError as exc:
        raise OperationError(str(exc)) from exc
    with session_scope(tenant=tenant_id) as session:
        tenant = session.get_one(Tenant, tenant_id)
        if plan is not None:
            tenant.plan = plan
        merged = {} if clear_overrides else dict(tenant.plan_overrides or {})
        merged.update(overrides or {})
        tenant.plan_overrides = merged or None
        settings = get_settings()
        in_effect = effective(tenant.plan, tenant.plan_overrides, settings.default_plan)
        result = {"tenant": slug, "plan": in_effect.as_dict(), "overrides": sorted(merged)}
        audit.record(session, tenant.id, "operator", "tenant.plan_set", "tenant", tenant.id,
                     {"plan": in_effect.name, "overrides": merged})
    services.quota.forget(tenant_id)
    return result


def tenant_exists(slug: str) -> bool:
    from app.tenants.service import TenantError, tenant_id_of

    try:
        tenant_id_of(slug)
    except TenantError:
        return False
    return True


def ingest(services: Container, slug: str, paths: list[Path], progress: Callable[[Any], None] | None = None, *,
           promote: bool = True, replace: bool = False, dedicated: bool = False) -> dict[str, Any]:
    """`dedicated`: this process does nothing else meanwhile (the CLI with no server running): every core embeds
    unless INGEST_THREADS says otherwise (`Container.ingestion`)."""
    from app.knowledge.service import ingest_paths
    from app.tenants.service import TenantError, tenant_id_of

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise OperationError(f"no such file or folder: {', '.join(missing)}")
    try:
        tenant_id = tenant_id_of(slug)
        with session_scope(tenant=tenant_id) as session:
            report = ingest_paths(session, tenant_id, paths, progress=progress, promote=promote, replace=replace,
                                  deps=services.ingestion(dedicated=dedicated))
            return report.to_dict()
    except TenantError as exc:
        raise OperationError(str(exc)) from exc


def chat(services: Container, slug: str, text: str, contact: str | None = None, *, timeout_s: float = 60.0,
         client_message_id: str | None = None) -> dict[str, Any]:
    """Send `text` as a web-chat visitor through the full pipeline and wait for its outcome."""
    from app.conversations.service import InboundRequest
    from app.tenants.service import TenantError, tenant_id_of, widget_account

    try:
        tenant_id = tenant_id_of(slug)
        with session_scope(tenant=tenant_id) as session:
            account_id = widget_account(session, tenant_id).id
    except TenantError as exc:
        raise OperationError(str(exc)) from exc
    contact = contact or "cli"
    [accepted] = services.intake.accept([InboundRequest(
        tenant_id=tenant_id, channel="webchat", contact_external_id=f"cli:{contact}",
        provider_message_id=f"cli:{contact}:{client_message_id or time.time_ns()}", text=text,
        channel_account_id=account_id,
    )])
    return wait_for_outcome(tenant_id, accepted.message_id, timeout_s=timeout_s)


def wait_for_outcome(tenant_id: str, message_id: str, *, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(tenant=tenant_id) as session:
            message = session.get(Message, message_id)
            if message is not None and message.tenant_id == tenant_id and message.status != "received":
                return _outcome(session, message)
        if time.monotonic() > deadline:
            hint = ("is 'switchboard orchestrator' running?" if not get_settings().embedded
                    else "the orchestrator thread did not answer")
            raise OperationError(f"no answer within {timeout_s:.0f}s: {hint}")
        time.sleep(0.05)


def _outcome(session: Any, message: Message) -> dict[str, Any]:
    reply = session.scalars(
        select(Message).where(Message.in_reply_to_id == message.id, Message.tenant_id == message.tenant_id)
        .order_by(Message.created_at)
    ).first()
    escalation = session.scalars(select(Escalation).where(Escalation.message_id == message.id)).first()
    return {
        "message_id": message.id,
        "status": message.status,  # answered | escalated (| human | merged | dead)
        "text": reply.text if reply else None,
        "citations": [
            {"document": c["document"], "chunk_id": c["chunk_id"], "score": c["score"]}
            for c in (reply.citations or [])
        ] if reply else [],
        "escalation_id": escalation.id if escalation else None,
        **({"reason": escalation.reason} if escalation else {}),
        **({"error": message.error} if message.status == "dead" else {}),
    }


# -- the running embedded server ------------------------------------------------------------------------
def server_file() -> Path:
    return get_settings().home_dir / SERVER_FILE


def write_server_file(url: str, token: str) -> None:
    from app.files import write_private

    write_private(server_file(), json.dumps({"url": url, "pid": os.getpid(), "token": token}).encode())


def remove_server_file() -> None:
    path = server_file()
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def running_server() -> dict[str, Any] | None:
    """The embedded server holding this SWITCHBOARD_HOME, if one is alive."""
    if not get_settings().embedded:
        return None
    path = server_file()
    try:
        info: dict[str, Any] = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info
