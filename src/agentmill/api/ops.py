"""Who may read the operators' endpoints: ``/metrics`` and the details of ``/health``.

A client address in ``AGENTMILL_OPS_NETWORKS`` (default: loopback), or the bearer token
``AGENTMILL_OPS_TOKEN``. The queue's figures, worker names and the sandbox's state are an
operator's business, not every caller's. Behind a reverse proxy the address is the one uvicorn
takes from X-Forwarded-For (trusted from loopback proxies only, uvicorn's default).
"""

from __future__ import annotations

import hmac
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from fastapi import Request

from agentmill.config import Settings


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(c, strict=False) for c in cidrs)


def is_operator(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    if settings.ops_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), settings.ops_token.encode()
        ):
            return True
    host = request.client.host if request.client else ""
    try:
        address = ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(settings.ops_networks)))
