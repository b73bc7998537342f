"""The ``http_request`` tool and the egress policy it enforces (DESIGN.md decision 12)."""

from agentmill.tools.http._errors import Refused, RequestFailed
from agentmill.tools.http._policy import EgressPolicy
from agentmill.tools.http.tool import HttpRequestTool, Resolver, system_resolver

__all__ = [
    "EgressPolicy",
    "HttpRequestTool",
    "Refused",
    "RequestFailed",
    "Resolver",
    "system_resolver",
]
