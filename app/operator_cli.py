"""`switchboard tenant`, `guard`, `retention`, `contact` and `keys`: the operator's commands about tenants and the
data duties (docs/operations.md). Registered on the `switchboard` command by app/cli.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from app import operations
from app.bootstrap import container
from app.cli_support import fail as _fail
from app.cli_support import prepare as _prepare
from app.cli_support import print_json as _print_json
from app.cli_support import remote as _remote
from app.config import get_settings

tenant_cli = typer.Typer(help="Create and inspect tenants.", no_args_is_help=True)


@tenant_cli.command("create")
def tenant_create(
    slug: str,
    name: Annotated[str | None, typer.Option(help="Display name (default: the slug).")] = None,
    from_folder: Annotated[Path | None, typer.Option("--from", help="A tenant folder with tenant.toml.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create a tenant with its first admin and agent API keys (shown once) and a web chat widget."""
    _prepare()
    server = operations.running_server()
    folder = str(from_folder.resolve()) if from_folder else None
    try:
        result = (
            _remote(server, "POST", "/operator/v1/tenants", {"slug": slug, "name": name, "folder": folder})
            if server else operations.create_tenant(slug, name, from_folder)
        )
    except operations.OperationError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json({k: result[k] for k in ("tenant", "admin_api_key", "agent_api_key")})
        return
    typer.echo(f"tenant {result['tenant']} created\n  admin API key: {result['admin_api_key']}\n"
               f"  agent API key: {result['agent_api_key']}\n"
               f"  web chat: {get_settings().public_base_url}/widget/{result['widget_id']}\n"
               "Keep the keys: they are not shown again.")


@tenant_cli.command("plan")
def tenant_plan(
    slug: str,
    plan: Annotated[str | None, typer.Option(help="free, standard, scale or unlimited (app/tenants/plans.py); "
                                                  "default: keep the current one.")] = None,
    messages: Annotated[int | None, typer.Option(help="Override: inbound messages per month.")] = None,
    llm_tokens: Annotated[int | None, typer.Option(help="Override: LLM tokens per month.")] = None,
    messages_per_minute: Annotated[int | None, typer.Option(help="Override: messages handled per minute.")] = None,
    admin_requests_per_minute: Annotated[int | None, typer.Option(help="Override: admin API requests per "
                                                                       "minute.")] = None,
    clear_overrides: Annotated[bool, typer.Option("--clear-overrides", help="Drop the figures set before, back "
                                                  "to the plan's own.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Assign a tenant's plan and override its figures for this tenant; prints the plan in effect."""
    _prepare()
    figures = {"messages_per_month": messages, "llm_tokens_per_month": llm_tokens,
               "messages_per_minute": messages_per_minute, "admin_requests_per_minute": admin_requests_per_minute}
    overrides = {k: v for k, v in figures.items() if v is not None}
    server = operations.running_server()
    try:
        result = (
            _remote(server, "PUT", f"/operator/v1/tenants/{slug}/plan",
                    {"plan": plan, "overrides": overrides, "clear_overrides": clear_overrides})
            if server else operations.set_plan(container(), slug, plan, overrides, clear_overrides=clear_overrides)
        )
    except operations.OperationError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(result)
        return
    shown = ", ".join(f"{k}={'unlimited' if v is None else v}" for k, v in result["plan"].items() if k != "name")
    typer.echo(f"tenant {slug}: plan {result['plan']['name']} ({shown})"
               + (f"; overridden: {', '.join(result['overrides'])}" if result["overrides"] else ""))


guard_cli = typer.Typer(help="Check text with the assistant's guardrails.", no_args_is_help=True)


@guard_cli.command("scan")
def guard_scan(
    file: Annotated[Path, typer.Argument(help="JSONL: one {\"text\": ...} object per line ('-' for stdin).")],
    tenant: Annotated[str | None, typer.Option(help="Apply this tenant's policies (slug).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array, one verdict per line, in order.")]
    = False,
) -> None:
    """Prompt-injection score and PII spans of each line, with the detectors and settings the orchestrator
    uses. Needs no running server (a tenant's policies are read from the database)."""
    from app.assistant.guard_scan import ScanError, parse_lines, scan

    try:
        raw = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read {file}: {exc}") from exc
    try:
        texts = parse_lines(raw.splitlines())
    except ScanError as exc:
        for problem in exc.problems[:50]:
            typer.secho(f"error: {file}: {problem}", fg=typer.colors.RED, err=True)
        if len(exc.problems) > 50:
            typer.secho(f"error: ... and {len(exc.problems) - 50} more bad lines", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    policies: dict[str, Any] = {}
    if tenant is not None:
        from app.db import migrate, session_scope
        from app.models import Tenant
        from app.tenants.service import TenantError, tenant_id_of

        migrate()
        try:
            tenant_id = tenant_id_of(tenant)
        except TenantError as exc:
            raise _fail(str(exc)) from exc
        with session_scope(tenant=tenant_id) as session:
            policies = dict(session.get_one(Tenant, tenant_id).policies or {})
    from app.assistant.pii_ner import NerUnavailable

    try:
        recognizers = container().pii_ner.recognizers(policies)  # names and addresses, when the tenant turned them on
    except NerUnavailable as exc:
        raise _fail(str(exc)) from exc
    results = scan(texts, policies, recognizers)
    if as_json:
        typer.echo(json.dumps(results))
        return
    for number, r in enumerate(results, start=1):
        kinds = ", ".join(sorted({p["kind"] for p in r["pii"]})) or "none"
        flag = "INJECTION" if r["injection"] else "ok"
        typer.echo(f"line {number}: {flag} (score {r['score']:.2f}); PII: {kinds}")


retention_cli = typer.Typer(help="Retention of customers' personal data.", no_args_is_help=True)


@retention_cli.command("purge")
def retention_purge(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (slug).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Mask the raw PII older than each tenant's `pii_retention_days` now (the background loops also do it
    every RETENTION_INTERVAL_S)."""
    from app.retention import purge

    _prepare()
    try:
        report = purge(tenant_slug=tenant)
    except LookupError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(report)
        return
    if not report:
        typer.echo("no tenant has a pii_retention_days policy")
    for slug, counts in report.items():
        typer.echo(f"{slug}: masked {counts['messages']} message(s), {counts['escalations']} escalation(s), "
                   f"{counts['audit_events']} audit event(s)")


contact_cli = typer.Typer(help="A contact's data: export, erase, consent (docs/operations.md).", no_args_is_help=True)
TenantOpt = Annotated[str, typer.Option(help="Tenant slug.")]
ContactOpt = Annotated[str, typer.Option(help="The contact's id, or the channel's id for them.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _contact_call(tenant: str, method: str, path: str, body: dict[str, Any] | None,
                  local: Callable[[], Any]) -> Any:
    """Through the running embedded server when there is one (it holds the in-process bus), else here."""
    from urllib.parse import quote

    from app.contacts.privacy import ContactBusy, ContactNotFound
    from app.tenants.service import TenantError

    server = operations.running_server()
    if server:
        return _remote(server, method, "/admin/v1/contacts/" + quote(path, safe="/"), body, tenant=tenant)
    try:
        return local()
    except (ContactNotFound, ContactBusy, TenantError) as exc:
        raise _fail(str(exc)) from exc


def _tenant_id(slug: str) -> str:
    from app.tenants.service import tenant_id_of

    return tenant_id_of(slug)


@contact_cli.command("export")
def contact_export(tenant: TenantOpt, contact: ContactOpt, as_json: JsonOpt = True) -> None:
    """Everything stored about a contact, as JSON (always JSON; `--json` is accepted for symmetry)."""
    from app.contacts import privacy
    from app.db import session_scope

    _prepare()

    def local() -> Any:
        tenant_id = _tenant_id(tenant)
        with session_scope(tenant=tenant_id) as session:
            return privacy.export(session, tenant_id, contact)

    _print_json(_contact_call(tenant, "GET", f"{contact}/export", None, local))


@contact_cli.command("erase")
def contact_erase(tenant: TenantOpt, contact: ContactOpt, as_json: JsonOpt = False) -> None:
    """Erase everything stored about a contact, leaving an audit tombstone with counts only. Cannot be undone."""
    from app.contacts import privacy
    from app.db import flush_deleted, session_scope

    _prepare()

    def local() -> Any:
        tenant_id = _tenant_id(tenant)
        with session_scope(tenant=tenant_id) as session:
            erased, messages, conversations = privacy.erase(session, tenant_id, contact, "operator")
        on_bus = privacy.erase_bus_entries(container().bus, tenant_id, [*messages, *conversations])
        flush_deleted()
        return {**erased.as_json(), "bus_entries": on_bus}

    report = _contact_call(tenant, "DELETE", contact, None, local)
    if as_json:
        _print_json(report)
    else:
        typer.echo(f"erased contact {report['contact_id']}: {report['conversations']} conversation(s), "
                   f"{report['messages']} message(s), {report['escalations']} escalation(s), "
                   f"{report['audit_events']} audit event(s), {report['bus_entries']} bus entr(ies)")


@contact_cli.command("consent")
def contact_consent(tenant: TenantOpt, contact: ContactOpt,
                    status: Annotated[str, typer.Argument(help="granted | withdrawn | unknown")],
                    as_json: JsonOpt = False) -> None:
    """Record a contact's consent; `withdrawn` opts them out (nothing is sent to them)."""
    from app.contacts import privacy
    from app.db import session_scope

    _prepare()
    if status not in privacy.CONSENT_STATES:
        raise _fail(f"consent must be one of {', '.join(privacy.CONSENT_STATES)}")

    def local() -> Any:
        tenant_id = _tenant_id(tenant)
        with session_scope(tenant=tenant_id) as session:
            row = privacy.set_consent(session, tenant_id, contact, status, "operator", "operator")
            return {"contact_id": row.id, "status": row.consent_status, "source": row.consent_source}

    report = _contact_call(tenant, "PUT", f"{contact}/consent", {"status": status}, local)
    _print_json(report) if as_json else typer.echo(f"contact {report['contact_id']}: consent {report['status']}")


keys_cli = typer.Typer(help="Encryption and signing keys: status and rotation (docs/operations.md).",
                       no_args_is_help=True)


@keys_cli.command("rotate")
def keys_rotate(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """New encryption and signing keys first, every stored secret re-encrypted, old keys kept while needed.
    Safe while `serve` and the other roles run: they pick the new keys up within a second."""
    from app.key_rotation import rotate
    from app.keys import KeyringError

    _prepare()
    try:
        report = rotate(progress=None if as_json else lambda line: typer.echo(line, err=True))
    except KeyringError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(report.as_json())
    else:
        total = sum(report.reencrypted.values())
        typer.echo(f"encrypting with key {report.encryption_key}, signing with key {report.signing_key}; "
                   f"{total} stored secret(s) re-encrypted, {report.on_old_keys} still on an old key")
        if report.dropped:
            typer.echo(f"dropped key(s) nothing needs any more: {', '.join(report.dropped)}")
        if report.source == "env":
            typer.echo("keys come from the environment: put a new key first in SWITCHBOARD_ENCRYPTION_KEYS / "
                       "SWITCHBOARD_SIGNING_KEYS, deploy, then run this again (docs/operations.md)")
            if report.removable:
                typer.echo(f"no stored secret needs encryption key(s) {', '.join(report.removable)}: "
                           "they can be removed")
    if report.on_old_keys:
        raise _fail(f"{report.on_old_keys} secret(s) changed during the pass and still need an old key: "
                    "run `switchboard keys rotate` again", code=2)


@keys_cli.command("status")
def keys_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Where the keys come from, their ids and ages, and how many stored secrets each key decrypts."""
    from app.key_rotation import status
    from app.keys import KeyringError

    _prepare()
    try:
        report = status()
    except KeyringError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(report)
        return
    typer.echo(f"keys from: {report['path'] or 'the environment'}")
    for key in report["encryption_keys"]:
        state = f"retired {key['retired_at']}" if key["retired_at"] else "encrypts"
        typer.echo(f"  encryption {key['id']}  {state}  decrypts {key['secrets']} stored secret(s)")
    for key in report["signing_keys"]:
        state = f"verifies until {key['retire_after']}" if key["retire_after"] else "signs"
        typer.echo(f"  signing    {key['id']}  {state}")
