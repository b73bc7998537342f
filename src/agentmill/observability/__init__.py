"""Logs (structlog), metrics and traces."""
