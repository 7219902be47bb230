"""Tenants: creation (with its first keys and its web-chat account), lookup, and loading a tenant folder."""

from __future__ import annotations

import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import record
from app.auth import issue_key
from app.models import ChannelAccount, Tenant

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")

DEFAULT_PERSONA: dict[str, Any] = {"name": "Assistant", "tone": "friendly and concise", "language": "en"}
# No `min_relevance`: a tenant that does not set one gets its live pack version's calibrated threshold, else 0.45
# (app/knowledge/calibration.py).
DEFAULT_POLICIES: dict[str, Any] = {"banned_phrases": [], "handoff_keywords": []}


class TenantError(ValueError):
    pass


@dataclass
class NewTenant:
    tenant: Tenant
    admin_api_key: str
    agent_api_key: str
    widget_id: str


@dataclass
class TenantSpec:
    """What a tenant folder (tenants/<slug>/tenant.toml) describes."""

    slug: str
    name: str
    persona: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    knowledge_dir: Path | None = None

    @classmethod
    def load(cls, folder: Path) -> TenantSpec:
        data = tomllib.loads((folder / "tenant.toml").read_text(encoding="utf-8"))
        knowledge = folder / "knowledge"
        policies = data.get("policies", {})
        if "ussd_menu" in policies:  # walked by the USSD route as saved: checked like the admin API's
            from pydantic import ValidationError

            from app.admin.policy_schemas import UssdMenu

            try:
                policies["ussd_menu"] = UssdMenu.model_validate(policies["ussd_menu"]).model_dump(exclude_none=True)
            except ValidationError as e:
                problems = "; ".join(".".join(["policies.ussd_menu", *map(str, err["loc"])]) + f": {err['msg']}"
                                     for err in e.errors())
                raise TenantError(f"{folder / 'tenant.toml'}: {problems}") from e
        return cls(
            slug=data["slug"],
            name=data.get("name", data["slug"]),
            persona=data.get("persona", {}),
            policies=policies,
            knowledge_dir=knowledge if knowledge.is_dir() else None,
        )


def validate_slug(slug: str) -> str:
    if not SLUG_RE.match(slug):
        raise TenantError(
            f"invalid tenant slug {slug!r}: use 1-64 lowercase letters, digits and dashes, not starting or ending "
            "with a dash"
        )
    return slug


def create_tenant(
    session: Session,
    slug: str,
    name: str | None = None,
    persona: dict[str, Any] | None = None,
    policies: dict[str, Any] | None = None,
) -> NewTenant:
    validate_slug(slug)
    if session.scalars(select(Tenant).where(Tenant.slug == slug)).first() is not None:
        raise TenantError(f"tenant {slug!r} already exists")
    tenant = Tenant(
        slug=slug,
        name=name or slug,
        persona={**DEFAULT_PERSONA, **(persona or {})},
        policies={**DEFAULT_POLICIES, **(policies or {})},
    )
    try:
        with session.begin_nested():
            session.add(tenant)
    except IntegrityError as exc:
        raise TenantError(f"tenant {slug!r} already exists") from exc
    _, admin_key = issue_key(session, tenant.id, "admin", "admin")
    _, agent_key = issue_key(session, tenant.id, "agent", "agent")
    widget = ChannelAccount(
        tenant_id=tenant.id, channel="webchat", external_id=f"w_{secrets.token_urlsafe(12)}", name="Web chat"
    )
    session.add(widget)
    session.flush()
    record(session, tenant.id, "system", "tenant.created", "tenant", tenant.id, {"slug": slug})
    return NewTenant(tenant, admin_key, agent_key, widget.external_id)


def get_by_slug(session: Session, slug: str) -> Tenant:
    tenant = session.scalars(select(Tenant).where(Tenant.slug == slug)).first()
    if tenant is None:
        raise TenantError(f"no tenant {slug!r}: create it with 'switchboard tenant create {slug}'")
    return tenant


def tenant_id_of(slug: str) -> str:
    """The id of the tenant an operator names by its slug (a CLI argument, a header of the operator token): the
    one lookup that must cross tenants before there is a tenant to scope the work to."""
    from app.db import session_scope

    with session_scope(cross_tenant="tenant lookup by slug") as session:
        return get_by_slug(session, slug).id


def widget_account(session: Session, tenant_id: str) -> ChannelAccount:
    account = session.scalars(
        select(ChannelAccount).where(ChannelAccount.tenant_id == tenant_id, ChannelAccount.channel == "webchat")
    ).first()
    if account is None:
        raise TenantError("this tenant has no web chat account")
    return account
