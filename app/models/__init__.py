"""SQLAlchemy tables. Every tenant-owned row carries `tenant_id` (and the `TenantOwned` marker): a tenant session
filters every query of it (app/tenant_scope.py)."""

from app.models.accounts import ROLES, Invitation, LoginSession, Membership, RefreshToken, User
from app.models.base import Base, new_id, utcnow
from app.models.conversations import Contact, Conversation, Message
from app.models.knowledge import Chunk, Document, IngestionJob, KnowledgeSource, PackVersion, PassageVectors
from app.models.llm import LLMCall
from app.models.outbox import OutboxEntry
from app.models.review import AuditEvent, Escalation, Handoff, TenantWebhook
from app.models.tenancy import ApiKey, ChannelAccount, Tenant

__all__ = [
    "ROLES",
    "ApiKey",
    "AuditEvent",
    "Base",
    "ChannelAccount",
    "Chunk",
    "Contact",
    "Conversation",
    "Document",
    "Escalation",
    "Handoff",
    "IngestionJob",
    "Invitation",
    "KnowledgeSource",
    "LLMCall",
    "LoginSession",
    "Membership",
    "Message",
    "OutboxEntry",
    "PackVersion",
    "PassageVectors",
    "RefreshToken",
    "Tenant",
    "TenantWebhook",
    "User",
    "new_id",
    "utcnow",
]
