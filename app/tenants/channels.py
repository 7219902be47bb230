"""Creating and updating channel accounts, for every channel type, through one path: the admin API and
`switchboard channel` both call these, and both validate against the channel's own models (`ChannelSpec`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import record
from app.channels import ChannelRegistry, ChannelSpec
from app.config import get_settings
from app.crypto import decrypt_json, encrypt_json
from app.models import ChannelAccount


class ChannelAccountError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


ExternalId = Annotated[str, Field(min_length=1, max_length=200)]


def create_request(spec: ChannelSpec) -> type[BaseModel]:
    """The create request of one channel type: `channel` names it, `credentials` and `config` are its own models."""
    def optional(model: type[BaseModel]) -> Any:
        try:
            model()
        except ValidationError:
            return ...  # something in it is required
        return Field(default_factory=model)

    return create_model(
        f"{spec.name.capitalize()}ChannelIn",
        __config__=ConfigDict(extra="forbid", title=f"{spec.title} account",
                              json_schema_extra={"examples": [spec.example]}),
        channel=(Literal[spec.name], ...),  # type: ignore[arg-type]
        external_id=(ExternalId | None, Field(default=None, description=spec.external_id_help)),
        name=(str, Field(default="", max_length=200)),
        enabled=(bool, True),
        credentials=(spec.credentials, optional(spec.credentials)),
        config=(spec.config, optional(spec.config)),
    )


def plain(model: BaseModel) -> dict[str, Any]:
    """A validated model as stored: secrets revealed (they are encrypted at rest), unset optionals left out."""
    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, BaseModel):
            return plain(value)
        return value
    return {k: reveal(getattr(model, k)) for k in type(model).model_fields if getattr(model, k) is not None}


def _validate(model: type[BaseModel], data: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        return plain(model.model_validate(data))
    except ValidationError as exc:
        problems = "; ".join(f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ChannelAccountError(422, problems) from None


def webhook_url(registry: ChannelRegistry, account: ChannelAccount, credentials: dict[str, Any] | None = None) -> str:
    spec = registry.find(account.channel)
    base = get_settings().public_base_url.rstrip("/")
    if spec is None:
        return ""
    return spec.webhook_url(base, account.external_id, credentials)


def create_account(session: Session, registry: ChannelRegistry, tenant_id: str, actor: str,
                   request: dict[str, Any]) -> tuple[ChannelAccount, dict[str, str]]:
    """Validate `request` (a create request as JSON) against its channel's models and store the account.
    Returns the account and the generated secrets the provider must be given (shown once)."""
    channel = str(request.get("channel") or "")
    spec = registry.find(channel)
    if spec is None:
        raise ChannelAccountError(422, f"unknown channel type {channel!r}; choose one of {', '.join(registry.names())}")
    body = _validate(create_request(spec), request, "body")
    credentials, config = body.get("credentials") or {}, body.get("config") or {}
    external_id = body.get("external_id")
    if spec.prepare is not None:
        try:
            external_id = spec.prepare(credentials, external_id)
        except ValueError as exc:
            raise ChannelAccountError(422, str(exc)) from None
    if not external_id:
        raise ChannelAccountError(422, f"external_id is required for {channel}: {spec.external_id_help}")
    account = ChannelAccount(
        tenant_id=tenant_id, channel=channel, external_id=external_id, name=body.get("name") or f"{channel} "
        f"{external_id}", config=config, credentials_encrypted=encrypt_json(credentials) if credentials else None,
        enabled=body.get("enabled", True),
    )
    try:
        with session.begin_nested():
            session.add(account)
    except IntegrityError:
        # Deliberately the same message whichever tenant holds it: the id is the provider's, not a secret.
        raise ChannelAccountError(409, f"a {channel} account with external_id {external_id!r} is already "
                                       "registered; each provider account can belong to one tenant only") from None
    record(session, tenant_id, actor, "channel.created", "channel_account", account.id,
           {"channel": channel, "external_id": external_id, "credentials": sorted(credentials)})
    generated = {name: str(credentials[name]) for name, f in spec.credentials.model_fields.items()
                 if f.default_factory is not None and name in credentials and name not in (request.get("credentials")
                                                                                            or {})}
    return account, generated


def update_account(session: Session, registry: ChannelRegistry, account: ChannelAccount, actor: str,
                   changes: dict[str, Any]) -> ChannelAccount:
    """Apply `changes` (`name`, `enabled`, `config`, `credentials`: each replaces what is stored), validated
    against the account's channel models as a whole."""
    spec = registry.get(account.channel)
    audit: dict[str, Any] = {}
    for field in ("name", "enabled"):
        if changes.get(field) is not None:
            setattr(account, field, changes[field])
            audit[field] = changes[field]
    if changes.get("config") is not None:
        account.config = _validate(spec.config, changes["config"], "config")
        audit["config"] = account.config
    if changes.get("credentials") is not None:
        given = {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in changes["credentials"].items()}
        # Generated secrets (a verify token...) are kept unless replaced: the provider already has them.
        current = decrypt_json(account.credentials_encrypted) if account.credentials_encrypted else {}
        kept = {k: v for k, v in current.items() if k not in given and spec.credentials.model_fields.get(k)
                and spec.credentials.model_fields[k].default_factory is not None}
        credentials = _validate(spec.credentials, {**kept, **given}, "credentials")
        if spec.prepare is not None:
            try:
                spec.prepare(credentials, account.external_id)
            except ValueError as exc:
                raise ChannelAccountError(422, str(exc)) from None
        account.credentials_encrypted = encrypt_json(credentials) if credentials else None
        audit["credentials"] = sorted(credentials)  # the names, never the values
    if audit:
        record(session, account.tenant_id, actor, "channel.updated", "channel_account", account.id, audit)
    session.flush()
    return account


def find_account(session: Session, tenant_id: str, account_id: str) -> ChannelAccount:
    account = session.scalars(select(ChannelAccount).where(ChannelAccount.id == account_id,
                                                           ChannelAccount.tenant_id == tenant_id)).first()
    if account is None:
        raise ChannelAccountError(404, f"no channel account {account_id!r} in this tenant")
    return account
