"""The API app fixtures (a real app per test, on SQLite and on the real PostgreSQL)."""

from tests.api.conftest import app, client

__all__ = ["app", "client"]
