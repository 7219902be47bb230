"""Alembic environment: one migration history for SQLite (embedded) and Postgres (scale-out)."""

from alembic import context
from sqlalchemy import text

from app import rls
from app.db import make_engine
from app.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from app.config import get_settings

        url = get_settings().effective_database_url
    return url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # Migrations run as the login that owns the schema, never as DATABASE_APP_ROLE (app/rls.py).
    engine = rls.as_owner(make_engine(_url()))
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            # Replicas starting together must not run the same migration twice: one waits for the other.
            connection.execute(text("SELECT pg_advisory_lock(774411)"))
            connection.commit()
        # render_as_batch: SQLite cannot ALTER most things; batch mode recreates tables there.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            if postgres:
                # FORCE ROW LEVEL SECURITY holds for the tables' owner too (unless a superuser): data migrations
                # see and write every tenant's rows through the named escape hatch, for this transaction only.
                connection.execute(text(f"SELECT set_config('{rls.CROSS_TENANT_GUC}', 'migration', true)"))
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
