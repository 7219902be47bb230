"""The `switchboard` command. Command names and `--json` shapes are a public contract: scripts depend on them."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app import operations
from app.accounts.cli import user_app
from app.bootstrap import container, plugins, tune_gc
from app.cli_support import fail as _fail
from app.cli_support import prepare as _prepare
from app.cli_support import print_json as _print_json
from app.cli_support import remote as _remote
from app.cli_support import trace as _trace
from app.config import SettingsError, get_settings
from app.knowledge.cli import eval_command, pack_app
from app.operator_cli import contact_cli, guard_cli, keys_cli, retention_cli, tenant_cli

cli = typer.Typer(
    name="switchboard",
    help="Switchboard: a multi-tenant messaging assistant. Embedded by default; scale-out by environment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.add_typer(tenant_cli, name="tenant")
cli.add_typer(pack_app, name="pack")
cli.command("eval")(eval_command)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_TENANT = REPO / "tenants" / "northwind"


cli.add_typer(guard_cli, name="guard")
cli.add_typer(retention_cli, name="retention")
cli.add_typer(contact_cli, name="contact")
cli.add_typer(keys_cli, name="keys")


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (run once before rolling out a new version)."""
    _prepare()
    typer.echo("database is up to date")


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

        return operations.ingest(container(), tenant, paths, line, promote=promote, replace=replace,
                                    dedicated=True)
    if not show:
        return operations.ingest(container(), tenant, paths, promote=promote, replace=replace, dedicated=True)
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  transient=True) as bar:
        task = bar.add_task("reading files", total=None, detail="")

        def progress(event: Any) -> None:
            bar.update(task, total=event.bytes_total or None, completed=event.bytes_done,
                       description=event.file[-40:] or "finishing", detail=_progress_text(event, file=False))

        return operations.ingest(container(), tenant, paths, progress, promote=promote, replace=replace,
                                    dedicated=True)


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
    app = create_app(container=container(), started=tune_gc)
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
    try:
        uvicorn.run(app, host=host, port=port, **_uvicorn_options())
    finally:
        operations.remove_server_file()


# On shutdown uvicorn waits for open responses to finish; an event stream never does (it runs for minutes), so
# after this grace the streams are cancelled (their clients reconnect elsewhere) and the app's lifespan shutdown
# stops its threads. Without it a server with one open stream would never stop.
SHUTDOWN_GRACE_S = 3.0
# An idle keep-alive connection stays open this long: longer than the clients and proxies in front keep theirs
# (httpx 5 s, AWS ALB 60 s), so they close first. With uvicorn's 5 s a client reusing a connection just as the
# server closed it got "server disconnected without a response" (1 widget visitor of 128 in
# benchmarks/e2e_widget.py; a proxy answers its client 502).
KEEP_ALIVE_S = 75


def _uvicorn_options() -> dict[str, Any]:
    """Warnings and errors only, and no access log: at WARNING it would print nothing, yet uvicorn would still
    format each request's client and path for it. X-Forwarded-For is believed only from
    SWITCHBOARD_TRUSTED_PROXIES: per-IP rate limits key on the address uvicorn derives from it. No log config of
    uvicorn's own: its records go to the root handler (app/logs.py), JSON or console like every other line."""
    trusted = get_settings().trusted_proxies.strip()
    return {"log_level": "warning", "log_config": None, "access_log": False, "proxy_headers": bool(trusted),
            "forwarded_allow_ips": trusted or None, "timeout_graceful_shutdown": SHUTDOWN_GRACE_S,
            "timeout_keep_alive": KEEP_ALIVE_S}


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
    try:
        cli()
    except SettingsError as exc:  # a message naming the variables, not a traceback
        typer.echo(f"switchboard: {exc}", err=True)
        raise SystemExit(2) from None


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
