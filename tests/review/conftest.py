"""Review fixtures: the admin API's app and two tenants (SQLite, or Postgres with `backend="postgres"`) and people's
logins, shared with tests/auth."""

from tests.auth.conftest import backend, cheap_hashes, client, tenant_a, tenant_b  # noqa: F401  (fixtures)
