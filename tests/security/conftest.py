"""The API app and client of tests/api, for the security tests."""

from tests.api.conftest import app, client

__all__ = ["app", "client"]
