"""The ``agentmill`` command."""

from agentmill.cli.app import app, main

__all__ = ["app", "main"]
