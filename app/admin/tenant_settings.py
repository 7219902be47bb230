"""The tenant's own settings through the admin API: name, persona and policies (merged field by field), and its
LLM keys, stored encrypted and never returned. Each change is written to the audit log in the caller's
transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.admin.service import Invalid, NotFound
from app.audit import record
from app.auth import Principal
from app.crypto import decrypt_json, encrypt_json
from app.models import Tenant

if TYPE_CHECKING:
    from app.assistant.pii_ner import PiiNer


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    return session.get_one(Tenant, tenant_id)


def _merge(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Merge one level deep (for `llm`); a None value removes the key, so the default applies again."""
    merged = dict(current)
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        elif isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = _merge(merged[name], value)
        elif isinstance(value, dict):
            merged[name] = {k: v for k, v in value.items() if v is not None}
        else:
            merged[name] = value
    return merged


def update_tenant(
    session: Session,
    who: Principal,
    *,
    name: str | None,
    persona: dict[str, Any] | None,
    policies: dict[str, Any] | None,
    pii_ner: PiiNer,
) -> Tenant:
    """`pii_ner`: the process's recogniser, loaded when a tenant turns names and addresses on."""
    tenant = get_tenant(session, who.tenant_id)
    changed: dict[str, Any] = {}
    if name is not None and name != tenant.name:
        tenant.name = name
        changed["name"] = name
    if persona:
        tenant.persona = _merge(tenant.persona or {}, persona)
        changed["persona"] = persona
    if policies:
        tenant.policies = _merge(tenant.policies or {}, policies)
        _check_llm(tenant.policies.get("llm") or {})
        if policies.get("pii_ner"):
            _check_pii_ner(pii_ner)
        changed["policies"] = policies
    if changed:
        record(session, tenant.id, who.actor, "tenant.updated", "tenant", tenant.id, changed)
    session.flush()
    return tenant


def _check_pii_ner(pii_ner: PiiNer) -> None:
    """Names and addresses turned on: the extra and its model must be installed here (loads the model once)."""
    from app.assistant.pii_ner import NerUnavailable

    try:
        pii_ner.recognizer()
    except NerUnavailable as exc:
        raise Invalid(f"policies.pii_ner: {exc}") from exc


def _check_llm(llm: dict[str, Any]) -> None:
    """What a single request cannot see: the merged policy must still hold together."""
    providers = llm.get("providers") or []
    if providers and llm.get("base_url"):
        raise Invalid("policies.llm: `providers` replaces `base_url`: send \"base_url\": null with the list")
    if route := llm.get("route"):
        names = [p["name"] for p in providers]
        if route.get("use") not in names:
            raise Invalid(f"policies.llm.route.use: {route.get('use')!r} is not one of policies.llm.providers "
                          f"({', '.join(names) or 'none set'})")


def llm_provider_keys(tenant: Tenant) -> list[str]:
    return sorted(decrypt_json(tenant.llm_provider_keys_encrypted)) if tenant.llm_provider_keys_encrypted else []


def set_llm_provider_key(session: Session, who: Principal, name: str, api_key: str | None) -> list[str]:
    """Store (or with None remove) the key of one `policies.llm.providers` entry, encrypted; never returned."""
    tenant = get_tenant(session, who.tenant_id)
    keys = decrypt_json(tenant.llm_provider_keys_encrypted) if tenant.llm_provider_keys_encrypted else {}
    if api_key is None and name not in keys:
        raise NotFound(f"no LLM key stored for provider {name!r}")
    if api_key is None:
        keys.pop(name)
    else:
        keys[name] = api_key
    tenant.llm_provider_keys_encrypted = encrypt_json(keys) if keys else None
    record(session, tenant.id, who.actor, "tenant.llm_provider_key_set" if api_key else
           "tenant.llm_provider_key_removed", "tenant", tenant.id, {"provider": name})
    session.flush()
    return sorted(keys)


def set_llm_key(session: Session, who: Principal, api_key: str | None) -> Tenant:
    tenant = get_tenant(session, who.tenant_id)
    tenant.llm_api_key_encrypted = encrypt_json({"api_key": api_key}) if api_key else None
    record(
        session,
        tenant.id,
        who.actor,
        "tenant.llm_key_set" if api_key else "tenant.llm_key_removed",
        "tenant",
        tenant.id,
    )
    session.flush()
    return tenant
