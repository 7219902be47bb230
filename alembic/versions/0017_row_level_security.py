"""Postgres row-level security: the app role, its grants, and a tenant policy on every table (app/rls.py)

Every table with a `tenant_id` column, and `tenants` by its `id`, gets ENABLE + FORCE ROW LEVEL SECURITY and one
policy for every command: the row's tenant is `switchboard.tenant_id`, or `switchboard.cross_tenant` is non-empty.
The two user-level tables have no tenant of their own and follow their tenant rows: a `users` row is visible when
one of its memberships is (any session may insert one: a person exists before their first membership), a
`refresh_tokens` row when its login session is. Login and refresh, which find the person before knowing the
tenant, run cross-tenant.

The role `switchboard_app` (NOLOGIN, no BYPASSRLS) is created if missing; it is cluster-wide, so databases
migrating at the same time may race to create it, and the loser carries on. Grants: rows of every table (the
migration history only read), sequences, and the same for tables later migrations create (default privileges).

SQLite: nothing (the application-level scope stays). Downgrade drops the policies and disables RLS; the role
stays, since other databases of the cluster may use it (and a role that holds grants cannot be dropped anyway).

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "switchboard_app"
POLICY = "tenant_isolation"
CROSS = "coalesce(current_setting('switchboard.cross_tenant', true), '') <> ''"
TENANT = "current_setting('switchboard.tenant_id', true)"
# Tables without a tenant_id column, and the rule that ties each of their rows to a tenant.
OTHER_TABLES = {
    "tenants": f"id = {TENANT}",
    "users": "EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.id)",
    "refresh_tokens": "EXISTS (SELECT 1 FROM login_sessions s WHERE s.id = refresh_tokens.session_id)",
}

ENSURE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        CREATE ROLE {ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database's migration created it meanwhile
END $$;
DO $$
BEGIN
    IF NOT pg_has_role(current_user, '{ROLE}', 'MEMBER') THEN
        EXECUTE format('GRANT {ROLE} TO %I', current_user);
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- granted by a concurrent migration
END $$;
"""


def schema_name() -> str:
    """Where the tables are: the first schema of the search path (`public` unless the operator chose another)."""
    return str(op.get_bind().scalar(sa.text("SELECT quote_ident(current_schema())")))


def tenant_tables() -> list[str]:
    return list(op.get_bind().scalars(sa.text(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND column_name = 'tenant_id' ORDER BY table_name"
    )))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(ENSURE_ROLE)
    schema = schema_name()
    op.execute(f"GRANT USAGE ON SCHEMA {schema} TO {ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {ROLE}")
    op.execute(f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {ROLE}")
    rules = {table: f"tenant_id = {TENANT}" for table in tenant_tables()} | OTHER_TABLES
    for table, rule in rules.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {POLICY} ON {table} USING ({rule} OR {CROSS}) WITH CHECK ({rule} OR {CROSS})")
    # A person is created before their first membership, so the policy above could never let them in.
    op.execute("CREATE POLICY users_insert ON users FOR INSERT WITH CHECK (true)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP POLICY IF EXISTS users_insert ON users")
    for table in [*tenant_tables(), *OTHER_TABLES]:
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    schema = schema_name()
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE USAGE, SELECT ON SEQUENCES FROM {ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA {schema} FROM {ROLE}")
