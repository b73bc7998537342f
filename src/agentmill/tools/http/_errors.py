"""Why a request was not sent; the tool turns these into error results for the model."""

from __future__ import annotations

from agentmill.errors import AgentMillError


class Refused(AgentMillError):
    """The egress policy or the URL rules forbid this request; the message says which rule."""


class RequestFailed(AgentMillError):
    """The request was allowed but could not be completed (DNS, connection, timeout, TLS)."""
