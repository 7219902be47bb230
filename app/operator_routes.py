"""Routes the local CLI uses while embedded `serve` holds the vector store (see app/operations.py).

Mounted only by embedded `serve`; authenticated by the operator token in `$SWITCHBOARD_HOME/server.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app import operations
from app.api.services import Services
from app.crypto import secrets_equal


# Module level: FastAPI cannot resolve (postponed) annotations naming classes local to a function.
class TenantIn(BaseModel):
    slug: str
    name: str | None = None
    folder: str | None = None

class IngestIn(BaseModel):
    paths: list[str] = Field(min_length=1)
    promote: bool = True
    replace: bool = False

class ChatIn(BaseModel):
    text: str = Field(min_length=1)
    contact: str | None = None
    timeout_s: float = 60.0


class PlanIn(BaseModel):
    plan: str | None = None
    overrides: dict[str, int | None] = Field(default_factory=dict)
    clear_overrides: bool = False


def operator_router(token: str) -> APIRouter:
    router = APIRouter(prefix="/operator/v1", include_in_schema=False)

    def check(authorization: str | None) -> None:
        if not authorization or not secrets_equal(authorization.removeprefix("Bearer "), token):
            raise HTTPException(401, "operator token required (read from $SWITCHBOARD_HOME/server.json)")

    @router.post("/tenants", status_code=201)
    def create(body: TenantIn, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        check(authorization)
        try:
            return operations.create_tenant(body.slug, body.name, Path(body.folder) if body.folder else None)
        except operations.OperationError as exc:
            raise HTTPException(409 if "exists" in str(exc) else 400, str(exc)) from exc

    @router.post("/tenants/{slug}/ingest")
    def ingest(slug: str, body: IngestIn, services: Services,
               authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        check(authorization)
        try:
            return operations.ingest(services, slug, [Path(p) for p in body.paths], promote=body.promote,
                                     replace=body.replace)
        except operations.OperationError as exc:
            raise HTTPException(404 if "no tenant" in str(exc) else 400, str(exc)) from exc

    @router.put("/tenants/{slug}/plan")
    def plan(slug: str, body: PlanIn, services: Services,
             authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        check(authorization)
        try:
            return operations.set_plan(services, slug, body.plan, body.overrides, clear_overrides=body.clear_overrides)
        except operations.OperationError as exc:
            raise HTTPException(404 if "no tenant" in str(exc) else 400, str(exc)) from exc

    @router.post("/tenants/{slug}/chat")
    async def chat(slug: str, body: ChatIn, services: Services,
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        check(authorization)
        try:
            return await run_in_threadpool(operations.chat, services, slug, body.text, body.contact,
                                           timeout_s=body.timeout_s)
        except operations.OperationError as exc:
            raise HTTPException(404 if "no tenant" in str(exc) else 504, str(exc)) from exc

    return router
