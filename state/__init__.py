"""Typed graph state, routes, the AP world format, and persistence (Postgres, migrations)."""
