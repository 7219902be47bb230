"""The `switchboard` command. Command names and `--json` shapes are a public contract: scripts depend on them."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from app import operations
from app.accounts.cli import user_app
from app.bootstrap import container, plugins, tune_gc
from app.config import get_settings
from app.knowledge.cli import eval_command, pack_app

cli = typer.Typer(
    name="switchboard",
    help="Switchboard: a multi-tenant messaging assistant. Embedded by default; scale-out by environment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tenant_cli = typer.Typer(help="Create and inspect tenants.", no_args_is_help=True)
cli.add_typer(tenant_cli, name="tenant")
cli.add_typer(pack_app, name="pack")
cli.command("eval")(eval_command)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_TENANT = REPO / "tenants" / "northwind"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _prepare() -> None:
    from app import logs
    from app.db import migrate

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level or logging.WARNING)
    # The HTTP clients log every request at INFO (one line per LLM call or provider send): kept for failures.
    for chatty in ("httpx", "httpx2"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    migrate()


def _trace(role: str) -> None:
    """Traces of this role's process to OTEL_EXPORTER_OTLP_ENDPOINT, when it is set (app/tracing.py)."""
    from app import tracing

    tracing.setup(role)


def _remote(server: dict[str, Any], method: str, path: str, body: dict[str, Any] | None, timeout: float = 120,
            tenant: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {server['token']}"}
    if tenant:
        headers["X-Switchboard-Tenant"] = tenant
    try:
        response = httpx.request(method, server["url"] + path, json=body, timeout=timeout, headers=headers)
    except httpx.HTTPError as exc:
        raise _fail(f"the running server at {server['url']} did not answer ({exc}); stop it or remove "
                    f"{operations.server_file()}") from exc
    if response.status_code >= 400:
        raise _fail(response.json().get("detail", response.text))
    return response.json()


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (run once before rolling out a new version)."""
    _prepare()
    typer.echo("database is up to date")


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


@cli.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or zips: Markdown, HTML, PDF, DOCX, text, FAQ.")],
    tenant: Annotated[str, typer.Option(help="Tenant slug.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    version_only: Annotated[bool, typer.Option("--version-only", help="Build the new version, do not promote.")]
    = False,
    replace: Annotated[bool, typer.Option("--replace", help="The paths are the whole pack: live documents they "
                                          "do not contain are left out of the new version.")] = False,
) -> None:
    """Build a new pack version for a tenant (parse, chunk, embed what changed, index) and promote it."""
    _prepare()
    server = operations.running_server()
    options = {"promote": not version_only, "replace": replace}
    try:
        if server:
            report = _remote(server, "POST", f"/operator/v1/tenants/{tenant}/ingest",
                             {"paths": [str(p.resolve()) for p in paths], **options}, timeout=3600)
        else:
            report = _ingest_with_progress(tenant, paths, show=sys.stderr.isatty() and not as_json,
                                           lines=not sys.stderr.isatty() and not as_json,
                                           promote=not version_only, replace=replace)
    except operations.OperationError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(report)
    else:
        typer.echo(f"pack version {report['pack_version']} {report['status']}: {report['documents']} documents, "
                   f"{report['chunks']} chunks ({report['embedded']} embedded) in {report['seconds']:.1f}s"
                   + (f"\n  {report['notes']}" if report.get("notes") else ""))
        for failure in report["files_failed"]:
            typer.secho(f"  failed: {failure['file']}: {failure['reason']}", fg=typer.colors.RED, err=True)
        if report.get("quarantined"):
            typer.secho(f"  {report['quarantined']} chunk(s) quarantined as suspected prompt injection (not "
                        f"retrievable): switchboard pack quarantine --tenant {tenant}", fg=typer.colors.YELLOW)
    if report["files_failed"]:
        raise typer.Exit(1)


def _ingest_with_progress(tenant: str, paths: list[Path], *, show: bool, lines: bool = False, promote: bool = True,
                          replace: bool = False) -> dict[str, Any]:
    """With `show`: a bar over the upload's bytes (pages differ in length, their chunks follow their bytes),
    files done, chunks/s and the ETA the ingester computes (the same the admin API's job status reports).
    With `lines` (stderr is not a terminal): the same as a line on stderr every PROGRESS_LINE_S seconds."""
    if lines:
        last = [time.monotonic()]

        def line(event: Any) -> None:
            if time.monotonic() - last[0] >= PROGRESS_LINE_S:
                last[0] = time.monotonic()
                typer.echo(_progress_text(event), err=True)

        return operations.ingest(container(), tenant, paths, line, promote=promote, replace=replace)
    if not show:
        return operations.ingest(container(), tenant, paths, promote=promote, replace=replace)
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  transient=True) as bar:
        task = bar.add_task("reading files", total=None, detail="")

        def progress(event: Any) -> None:
            bar.update(task, total=event.bytes_total or None, completed=event.bytes_done,
                       description=event.file[-40:] or "finishing", detail=_progress_text(event, file=False))

        return operations.ingest(container(), tenant, paths, progress, promote=promote, replace=replace)


PROGRESS_LINE_S = 10.0


def _progress_text(event: Any, *, file: bool = True) -> str:
    eta = "finishing" if event.phase == "finishing" else (
        "eta --" if event.eta_s is None else f"eta {_duration(event.eta_s)}")
    return ((f"{event.file}: " if file and event.file else "")
            + f"{event.files_done}/{event.files_total} files, {event.chunks} chunks, {event.chunks_per_s:.0f}/s, {eta}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@cli.command()
def chat(
    tenant: Annotated[str, typer.Option(help="Tenant slug.")],
    contact: Annotated[str | None, typer.Option(help="Contact id (default: 'cli').")] = None,
    message: Annotated[str | None, typer.Option(help="Send one message and exit.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 60.0,
) -> None:
    """Talk to a tenant's assistant through the same pipeline a widget message takes."""
    _prepare()
    server = operations.running_server()
    roles = None
    if server is None and get_settings().embedded:
        from app.workers_runtime import RoleThreads

        roles = RoleThreads.start_all(container())
    try:
        if message is not None:
            _chat_once(tenant, contact, message, as_json, timeout, server)
            return
        typer.echo(f"Chatting with {tenant} (empty line or Ctrl-D to quit)")
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                break
            _chat_once(tenant, contact, line, as_json, timeout, server)
    finally:
        if roles is not None:
            roles.stop()


def _chat_once(tenant: str, contact: str | None, text: str, as_json: bool, timeout: float,
               server: dict[str, Any] | None) -> None:
    try:
        outcome = (
            _remote(server, "POST", f"/operator/v1/tenants/{tenant}/chat",
                    {"text": text, "contact": contact, "timeout_s": timeout}, timeout=timeout + 10)
            if server else operations.chat(container(), tenant, text, contact, timeout_s=timeout)
        )
    except operations.OperationError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        # `reason` says why a message was escalated (null when it was answered).
        _print_json({k: outcome.get(k) for k in ("status", "text", "citations", "escalation_id", "reason")})
        return
    # No text: a draft held for approval without a notice to the customer (the tenant's `draft` mode).
    typer.echo(f"bot> {outcome['text']}" if outcome["text"] is not None else "bot> (nothing sent yet: held for review)")
    sources = sorted({c["document"] for c in outcome["citations"]})
    if sources:
        typer.secho(f"     sources: {', '.join(sources)}", fg=typer.colors.BRIGHT_BLACK)
    if outcome["status"] == "escalated":
        typer.secho(f"     escalated to a human ({outcome.get('reason')}): {outcome['escalation_id']}",
                    fg=typer.colors.YELLOW)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
) -> None:
    """Run the API, the widget, the review API and the channel gateways (plus, embedded, the orchestrator)."""
    _prepare()
    _trace("serve")
    _serve(host, port)


def _serve(host: str, port: int) -> None:
    import uvicorn

    from app.main import create_app

    settings = get_settings()
    app = create_app(container=container())
    if settings.embedded:
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - mapping, not binding
        other = operations.running_server()
        if other:
            raise _fail(f"another 'switchboard serve' (pid {other['pid']}) holds {settings.home_dir}; stop it "
                        "or set SWITCHBOARD_HOME to another folder")
        from app.knowledge.cli import operator_router as knowledge_operator_router
        from app.operator_routes import operator_router

        token = app.state.container.operator_token
        app.state.operator_token = token  # also admin routes take it, with an X-Switchboard-Tenant header
        app.include_router(operator_router(token))
        app.include_router(knowledge_operator_router(token))
        operations.write_server_file(f"http://{local}:{port}", token)
    tune_gc()
    try:
        uvicorn.run(app, host=host, port=port, **_uvicorn_options())
    finally:
        operations.remove_server_file()


# On shutdown uvicorn waits for open responses to finish; an event stream never does (it runs for minutes), so
# after this grace the streams are cancelled (their clients reconnect elsewhere) and the app's lifespan shutdown
# stops its threads. Without it a server with one open stream would never stop.
SHUTDOWN_GRACE_S = 3.0


def _uvicorn_options() -> dict[str, Any]:
    """Warnings and errors only, and no access log: at WARNING it would print nothing, yet uvicorn would still
    format each request's client and path for it. X-Forwarded-For is believed only from
    SWITCHBOARD_TRUSTED_PROXIES: per-IP rate limits key on the address uvicorn derives from it. No log config of
    uvicorn's own: its records go to the root handler (app/logs.py), JSON or console like every other line."""
    trusted = get_settings().trusted_proxies.strip()
    return {"log_level": "warning", "log_config": None, "access_log": False, "proxy_headers": bool(trusted),
            "forwarded_allow_ips": trusted or None, "timeout_graceful_shutdown": SHUTDOWN_GRACE_S}


@cli.command()
def orchestrator() -> None:
    """Scale-out role: answer inbound messages and dispatch replies (needs REDIS_URL)."""
    _prepare()
    settings = get_settings()
    logging.getLogger().setLevel(settings.log_level or logging.INFO)
    _trace("orchestrator")
    if settings.metrics_port:
        from app.metrics import serve

        serve(settings.metrics_port, settings.metrics_addr, container().bus)
    _role("orchestrator")()


@cli.command()
def gateway(
    channel: Annotated[str, typer.Argument(help="whatsapp, instagram, telegram, twilio, ussd, discord or webchat.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8081,
) -> None:
    """Scale-out role: one channel's webhook gateway on its own (needs REDIS_URL)."""
    _prepare()
    if get_settings().embedded:
        raise _fail("a gateway process needs REDIS_URL (scale-out); embedded 'switchboard serve' mounts every channel")
    _trace(f"gateway-{channel}")
    import uvicorn

    try:
        app = _role("gateway")(channel)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    tune_gc()
    uvicorn.run(app, host=host, port=port, **_uvicorn_options())


guard_cli = typer.Typer(help="Check text with the assistant's guardrails.", no_args_is_help=True)
cli.add_typer(guard_cli, name="guard")


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
cli.add_typer(retention_cli, name="retention")


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
cli.add_typer(contact_cli, name="contact")
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
cli.add_typer(keys_cli, name="keys")


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


@cli.command()
def worker() -> None:
    """Scale-out role: the RQ ingestion worker (needs REDIS_URL)."""
    _prepare()
    logging.getLogger().setLevel(logging.INFO)
    _trace("worker")
    _role("worker")()


DEMO_QUESTIONS = ["How long do I have to return something?", "Can I speak to a real person please?"]


@cli.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Show the conversation, then exit.")] = False,
) -> None:
    """Create the example tenant from tenants/, ingest its pack, show a conversation and serve the widget."""
    _prepare()
    if operations.running_server():
        raise _fail("'switchboard serve' is already running on this SWITCHBOARD_HOME; stop it first")
    _trace("serve")
    spec_dir = EXAMPLE_TENANT
    slug = "northwind"
    if not operations.tenant_exists(slug):
        created = operations.create_tenant(slug, folder=spec_dir)
        typer.echo(f"Created tenant '{slug}'.\n  admin API key: {created['admin_api_key']}\n"
                   f"  agent API key: {created['agent_api_key']}  (shown once)")
        report = _ingest_with_progress(slug, [spec_dir / "knowledge"], show=sys.stderr.isatty())
        typer.echo(f"Ingested {report['documents']} documents ({report['chunks']} chunks) "
                   f"in {report['seconds']:.1f}s.")
    from app.workers_runtime import RoleThreads

    roles = RoleThreads.start_all(container())
    try:
        typer.echo("\nA conversation through the full pipeline:")
        for question in DEMO_QUESTIONS:
            typer.echo(f"customer> {question}")
            _chat_once(slug, "demo", question, False, 60.0, None)
    finally:
        roles.stop()
    from app.db import session_scope
    from app.tenants.service import tenant_id_of, widget_account

    tenant_id = tenant_id_of(slug)
    with session_scope(tenant=tenant_id) as session:
        widget = widget_account(session, tenant_id).external_id
    if no_serve:
        return
    typer.echo(f"\nWeb chat: http://{host}:{port}/widget/{widget}   (Ctrl-C stops)")
    _serve(host, port)


def main() -> None:
    from app.files import restrict_umask
    from app.logscrub import install as scrub_logs

    restrict_umask()  # the home folder, database, objects and secrets are the user's alone
    scrub_logs()  # before any command logs: no raw PII or credentials in the output
    cli()


def _role(name: str) -> Any:
    """A process role an edge registered (gateways/plugin.py, workers/plugin.py)."""
    return plugins().roles[name]


def _add_edge_commands() -> None:
    for name, commands in plugins().cli:
        cli.add_typer(commands, name=name)


_add_edge_commands()
cli.add_typer(user_app, name="user")


if __name__ == "__main__":
    main()
