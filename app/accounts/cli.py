"""`switchboard user ...`: people and their roles, from the machine's operator (who acts as an owner).

Runs against the database directly, also while `switchboard serve` runs (SQLite's WAL lets both write), through
the same service as the admin API (`app/accounts/service.py`).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

user_app = typer.Typer(help="Manage the people who log in (agents, admins, owners, viewers).", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _read_password() -> str:
    if sys.stdin.isatty():
        raise _fail("--password-stdin reads the password from a pipe, e.g. `printf %s \"$PW\" | switchboard user add "
                    "... --password-stdin`")
    password = sys.stdin.read()
    # One trailing newline (echo, a heredoc) is not part of the password; anything else is.
    return password.removesuffix("\n").removesuffix("\r")


@user_app.command("add")
def add(
    tenant: Annotated[str, typer.Option(help="Tenant slug.")],
    email: Annotated[str, typer.Option(help="The person's email (their login name).")],
    role: Annotated[str, typer.Option(help="owner, admin, agent or viewer.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the initial password from "
                                                 "standard input (needed for a new account).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Give a person a role in a tenant. A new email gets an account with the password read from stdin; an email
    that already has an account is added to the tenant and keeps its own password."""
    from app.accounts import service
    from app.cli_support import prepare as _prepare
    from app.db import session_scope
    from app.tenants.service import TenantError, tenant_id_of

    password = _read_password() if password_stdin else None
    _prepare()
    try:
        tenant_id = tenant_id_of(tenant)
    except TenantError as exc:
        raise _fail(str(exc)) from None
    try:
        with session_scope(tenant=tenant_id) as session:
            operator = service.tenant_operator(session, tenant)
            member, created = service.add_member(session, operator, email, role, password)
    except service.AccountError as exc:
        raise _fail(exc.message) from None
    if not created and password is not None:
        typer.secho(f"note: {member.email} already had an account; it keeps its own password", err=True)
    if as_json:
        typer.echo(json.dumps({"user_id": member.user_id, "email": member.email, "role": member.role}, indent=2))
    else:
        typer.echo(f"{member.email} is now {member.role} of {tenant} (user id {member.user_id})"
                   + ("" if created else "; existing account, own password kept"))
