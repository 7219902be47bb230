"""Analytics fixtures: the admin API's app and two tenants (SQLite, or Postgres with `backend="postgres"`), shared
with tests/auth and tests/review."""

from tests.auth.conftest import backend, cheap_hashes, client, tenant_a, tenant_b  # noqa: F401  (fixtures)
