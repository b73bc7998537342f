"""The ``http_request`` tool and the egress policy it enforces (DESIGN.md decision 12)."""

from agentmill.tools.http._destination import check_public_url
from agentmill.tools.http._errors import Refused, RequestFailed
from agentmill.tools.http._operator import WORKSPACE_EGRESS, OperatorEgress
from agentmill.tools.http._policy import EgressPolicy, entry_errors
from agentmill.tools.http.tool import HttpRequestTool, Resolver, system_resolver

__all__ = [
    "WORKSPACE_EGRESS",
    "EgressPolicy",
    "HttpRequestTool",
    "OperatorEgress",
    "Refused",
    "RequestFailed",
    "Resolver",
    "check_public_url",
    "entry_errors",
    "system_resolver",
]
