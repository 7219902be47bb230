"""`switchboard pack list|promote|rollback|quarantine` and `switchboard eval`.

Like every operator command, they run in this process, or, while an embedded `switchboard serve` holds the
vector store, are sent to it (`operator_router` below is mounted by embedded serve). The `--json` shapes are a
public contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel

from app import operations
from app.api.services import Services
from app.bootstrap import Container, container
from app.crypto import secrets_equal
from app.db import session_scope

pack_app = typer.Typer(help="List, promote and roll back a tenant's knowledge pack versions.", no_args_is_help=True)


class PackError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- the actions (run wherever the vector store is) ---------------------------------------------------------


def _tenant_id(slug: str) -> str:
    from app.tenants.service import TenantError, tenant_id_of

    try:
        return tenant_id_of(slug)
    except TenantError as exc:
        raise PackError(str(exc), 404) from exc


def _listing(session: Any, tenant_id: str) -> dict[str, Any]:
    from app.knowledge import quarantine, versions
    from app.models import Tenant

    return {
        "live_version": session.get_one(Tenant, tenant_id).live_pack_version,
        "versions": [
            {"version": v.version, "status": v.status, "documents": v.documents, "chunks": v.chunks,
             "embedded": v.embedded, "scores": v.scores or {}, "calibration": v.calibration, "notes": v.notes,
             "quarantined": quarantine.count_held(session, tenant_id, v.version),
             "created_at": v.created_at.isoformat(), "promoted_at": v.promoted_at.isoformat() if v.promoted_at
             else None}
            for v in versions.list_versions(session, tenant_id)
        ],
    }


def pack_action(slug: str, action: str, version: int | None = None) -> dict[str, Any]:
    """`list`, `promote` (needs `version`) or `rollback`; returns the listing afterwards."""
    from app.knowledge import versions

    tenant_id = _tenant_id(slug)
    with session_scope(tenant=tenant_id) as session:
        try:
            if action == "promote":
                if version is None:
                    raise PackError("promote needs --version N")
                versions.promote(session, tenant_id, version, actor="operator")
            elif action == "rollback":
                versions.rollback(session, tenant_id, actor="operator")
            elif action != "list":
                raise PackError(f"unknown pack action {action!r}")
        except versions.VersionError as exc:
            raise PackError(str(exc), 404 if "does not exist" in str(exc) else 409) from exc
        return _listing(session, tenant_id)


def quarantine_action(services: Container, slug: str, release: str | None = None,
                      version: int | None = None) -> dict[str, Any]:
    """The chunks held as suspected prompt injection (of `version`, default the live one), after releasing the
    chunk `release` if given (app/knowledge/quarantine.py)."""
    from app.knowledge import quarantine
    from app.models import Tenant

    tenant_id = _tenant_id(slug)
    with session_scope(tenant=tenant_id) as session:
        if release:
            try:
                version = quarantine.release(session, tenant_id, release, "operator",
                                             services.knowledge)["pack_version"]
            except quarantine.QuarantineError as exc:
                raise PackError(str(exc), exc.status) from exc
        version = version or session.get_one(Tenant, tenant_id).live_pack_version
        return {"pack_version": version, "released": release,
                "chunks": quarantine.listing(session, tenant_id, version) if version else []}


def run_eval(services: Container, slug: str, questions: str, version: int | None = None) -> dict[str, Any]:
    """Scores of `version` (default: the live one) on JSONL `questions`."""
    from app.knowledge.evaluate import EvalError, evaluate, parse_questions
    from app.models import Tenant

    try:
        parsed = parse_questions(questions)
    except EvalError as exc:
        raise PackError(f"questions file: {exc}") from exc
    tenant_id = _tenant_id(slug)
    with session_scope(tenant=tenant_id) as session:
        live = session.get_one(Tenant, tenant_id).live_pack_version
    chosen = version if version is not None else live
    return {**evaluate(tenant_id, parsed, pack_version=chosen, retriever=services.retriever), "pack_version": chosen}


def run_calibrate(services: Container, slug: str, version: int | None = None, questions: str | None = None,
                  unanswerable: str | None = None) -> dict[str, Any]:
    """Recalibrate the relevance threshold of `version` (default: the live one) from the tenant's eval sets;
    `questions` / `unanswerable` (JSONL text) first replace the stored sets, as `_eval.jsonl` and
    `_unanswerable.jsonl` in a pack upload would."""
    from app.knowledge import calibration
    from app.knowledge.evaluate import EvalError, eval_key, parse_questions

    try:  # checked before anything is stored
        if questions:
            parse_questions(questions)
        if unanswerable:
            calibration.parse_unanswerable(unanswerable)
    except EvalError as exc:
        raise PackError(f"questions file: {exc}") from exc
    tenant_id = _tenant_id(slug)
    with session_scope(tenant=tenant_id) as session:
        objects = services.knowledge.objects
        if questions:
            objects.put(eval_key(tenant_id), questions.encode(), "application/jsonl")
        if unanswerable:
            objects.put(calibration.unanswerable_key(tenant_id), unanswerable.encode(), "application/jsonl")
        try:
            return calibration.recompute(session, services.knowledge, tenant_id, version)
        except calibration.CalibrationError as exc:
            raise PackError(str(exc), exc.status) from exc


# -- embedded serve: the same actions over HTTP ----------------------------------------------------------


class PackIn(BaseModel):
    version: int | None = None


class QuarantineIn(BaseModel):
    release: str | None = None
    version: int | None = None


class EvalIn(BaseModel):
    questions: str
    version: int | None = None


class CalibrateIn(BaseModel):
    version: int | None = None
    questions: str | None = None
    unanswerable: str | None = None


def operator_router(token: str) -> APIRouter:
    router = APIRouter(prefix="/operator/v1", include_in_schema=False)

    def check(authorization: str | None) -> None:
        if not authorization or not secrets_equal(authorization.removeprefix("Bearer "), token):
            raise HTTPException(401, "operator token required (read from $SWITCHBOARD_HOME/server.json)")

    @router.post("/tenants/{slug}/pack/{action}")
    def pack(slug: str, action: str, body: PackIn, authorization: Annotated[str | None, Header()] = None
             ) -> dict[str, Any]:
        check(authorization)
        try:
            return pack_action(slug, action, body.version)
        except PackError as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    @router.post("/tenants/{slug}/quarantine")
    def held(slug: str, body: QuarantineIn, services: Services,
             authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        check(authorization)
        try:
            return quarantine_action(services, slug, body.release, body.version)
        except PackError as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    @router.post("/tenants/{slug}/eval")
    def evaluate(slug: str, body: EvalIn, services: Services,
                 authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        check(authorization)
        try:
            return run_eval(services, slug, body.questions, body.version)
        except PackError as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    @router.post("/tenants/{slug}/calibrate")
    def calibrate(slug: str, body: CalibrateIn, services: Services,
                  authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        check(authorization)
        try:
            return run_calibrate(services, slug, body.version, body.questions, body.unanswerable)
        except PackError as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    return router


# -- the commands ----------------------------------------------------------------------------------------


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _call(path: str, body: dict[str, Any], local: Any) -> dict[str, Any]:
    """Run `local()` here, or POST `body` to the running embedded server."""
    from app.db import migrate

    migrate()
    server = operations.running_server()
    try:
        if server is None:
            return dict(local())
        response = httpx.post(server["url"] + path, json=body, timeout=600,
                              headers={"Authorization": f"Bearer {server['token']}"})
    except PackError as exc:
        raise _fail(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise _fail(f"the running server at {server['url']} did not answer ({exc})") from exc  # type: ignore[index]
    if response.status_code >= 400:
        raise _fail(response.json().get("detail", response.text))
    return dict(response.json())


def _show(listing: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    if not listing["versions"]:
        typer.echo("no pack versions yet: run `switchboard ingest`")
    for v in listing["versions"]:
        marker = "*" if v["version"] == listing["live_version"] else " "
        hit5 = f"  hit@5 {v['scores']['hit@5']:.3f}" if "hit@5" in v.get("scores", {}) else ""
        held = f"  {v['quarantined']} quarantined" if v.get("quarantined") else ""
        typer.echo(f"{marker} v{v['version']:<4} {v['status']:<8} {v['documents']:>4} docs {v['chunks']:>6} chunks"
                   f"{hit5}{held}" + (f"  ({v['notes']})" if v.get("notes") else ""))
    if any(v.get("quarantined") for v in listing["versions"]):
        typer.echo("quarantined chunks (suspected prompt injection) are not retrievable: "
                   "`switchboard pack quarantine --tenant SLUG` shows them")


Tenant = Annotated[str, typer.Option(help="Tenant slug.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@pack_app.command("list")
def pack_list(tenant: Tenant, as_json: AsJson = False) -> None:
    """The tenant's pack versions, newest first; `*` marks the live one."""
    _show(_call(f"/operator/v1/tenants/{tenant}/pack/list", {}, lambda: pack_action(tenant, "list")), as_json)


@pack_app.command("promote")
def pack_promote(tenant: Tenant, version: Annotated[int, typer.Option(help="The version to make live.")],
                 as_json: AsJson = False) -> None:
    """Make a built version live (atomic: the next answer reads it)."""
    _show(_call(f"/operator/v1/tenants/{tenant}/pack/promote", {"version": version},
                lambda: pack_action(tenant, "promote", version)), as_json)


@pack_app.command("rollback")
def pack_rollback(tenant: Tenant, as_json: AsJson = False) -> None:
    """Back to the version that was live before the current one."""
    _show(_call(f"/operator/v1/tenants/{tenant}/pack/rollback", {}, lambda: pack_action(tenant, "rollback")),
          as_json)


def eval_command(
    tenant: Tenant,
    questions: Annotated[Path | None, typer.Option(
        help='JSONL: {"question": ..., "expected_document": ...} per line. With --calibrate: replaces the '
             "tenant's stored eval questions first.")] = None,
    version: Annotated[int | None, typer.Option(help="Pack version (default: the live one).")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Recompute the version's relevance threshold (min_relevance) from the tenant's eval "
                            "questions, and show the one in effect.")] = False,
    unanswerable: Annotated[Path | None, typer.Option(
        help='With --calibrate: JSONL {"question": ...} the pack must not answer; replaces the stored set.')]
    = None,
    as_json: AsJson = False,
) -> None:
    """Retrieval quality of a pack version on a question set: hit@1, hit@5 and MRR; or, with --calibrate, its
    relevance threshold calibrated on the tenant's eval questions."""
    texts: dict[str, str | None] = {}
    for name, path in (("questions", questions), ("unanswerable", unanswerable)):
        if path is not None and not path.is_file():
            raise _fail(f"no such {name} file: {path}")
        texts[name] = path.read_text(encoding="utf-8-sig") if path is not None else None
    if calibrate:
        body = {"version": version, **texts}
        _show_relevance(_call(f"/operator/v1/tenants/{tenant}/calibrate", body,
                              lambda: run_calibrate(container(), tenant, version, texts["questions"],
                                                    texts["unanswerable"])),
                        as_json)
        return
    if unanswerable is not None:
        raise _fail("--unanswerable goes with --calibrate")
    text = texts["questions"]
    if text is None:
        raise _fail("--questions FILE is required (or --calibrate)")
    result = _call(f"/operator/v1/tenants/{tenant}/eval", {"questions": text, "version": version},
                   lambda: run_eval(container(), tenant, text, version))
    scores = {k: result[k] for k in ("n", "hit@1", "hit@5", "mrr")}
    if as_json:
        typer.echo(json.dumps(scores))
        return
    typer.echo(f"pack version {result['pack_version']}: n={scores['n']} hit@1={scores['hit@1']:.3f} "
               f"hit@5={scores['hit@5']:.3f} mrr={scores['mrr']:.3f}")


def _show_relevance(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    found = result.get("recomputed") or {}
    if found.get("threshold") is None:
        typer.echo(f"pack version {result['recomputed_version']}: not calibrated: {found.get('reason')}")
    else:
        typer.echo(f"pack version {result['recomputed_version']}: calibrated min_relevance {found['threshold']} "
                   f"(negatives: {found['negatives_source']})")
        for split in ("tune", "report"):
            for which in ("chosen", "default"):
                f = found[split][which]
                typer.echo(f"  {split:<6} at {f['threshold']:<5} ({which}): answerable {f['right']}/{f['answerable']} "
                           f"answered right, {f['wrong']} wrong; unanswerable {f['negatives_answered']}/"
                           f"{f['negatives']} answered")
    typer.echo(f"in effect: {result['in_effect']} ({result['source']})")


@pack_app.command("quarantine")
def pack_quarantine(
    tenant: Tenant,
    release: Annotated[str | None, typer.Option(help="Release this chunk id (after reading it): it is indexed.")]
    = None,
    version: Annotated[int | None, typer.Option(help="Pack version (default: the live one).")] = None,
    as_json: AsJson = False,
) -> None:
    """Knowledge chunks held at ingestion as suspected prompt injection, with the reason; `--release` one."""
    result = _call(f"/operator/v1/tenants/{tenant}/quarantine", {"release": release, "version": version},
                   lambda: quarantine_action(container(), tenant, release, version))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if release:
        typer.echo(f"released {release}: it is indexed in pack version {result['pack_version']}")
    if not result["chunks"]:
        typer.echo(f"no quarantined chunks in pack version {result['pack_version']}")
    for c in result["chunks"]:
        excerpt = " ".join(c["text"].split())[:100]
        typer.echo(f"{c['chunk_id']}  {c['document']} #{c['ordinal']}  {c['reason']}\n    {excerpt}")
