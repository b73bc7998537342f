"""How the operator's egress settings and a workspace's own policy combine.

The operator's ``agentmill.yaml``::

    tools:
      http_request:
        egress: {hosts: [api.github.com]}           # the default, for workspaces without their own
        allow_workspace_networks: [10.20.0.0/16]    # false (default) | true | CIDR blocks

A workspace's own policy (``PUT /workspaces/{ws}/egress``) replaces the default as a whole:
its hosts and ports are its own choice, since every address a host resolves to must still be
public unicast. Its ``networks`` (the non-public ranges it opts into) must each lie inside what
``allow_workspace_networks`` permits: nothing when false, anything when true, else inside one
of the blocks listed. The ceiling is applied again when the policy is used, so an operator who
narrows it takes a stored network away at once (it is dropped, not an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from agentmill.errors import ConfigError
from agentmill.tools.http._policy import EgressPolicy

Network = IPv4Network | IPv6Network

WORKSPACE_EGRESS = "workspace_egress"
"""The key of ``ToolContext.settings`` that holds the workspace's own policy, when it has one."""

_KEYS = {"egress", "allow_workspace_networks"}
_EVERYWHERE = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))


@dataclass(frozen=True, kw_only=True)
class OperatorEgress:
    """The operator's ``tools: http_request:`` section, parsed."""

    default: EgressPolicy = field(default_factory=EgressPolicy)
    # The ranges a workspace's own ``networks`` must lie in; () lets it open none.
    workspace_networks: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, section: Mapping[str, Any]) -> OperatorEgress:
        """ConfigError when the section is malformed (checked when the server starts)."""
        unknown = set(section) - _KEYS
        if unknown:
            raise ConfigError(
                f"unknown tools.http_request keys {sorted(unknown)} (known: {sorted(_KEYS)})"
            )
        default = EgressPolicy.from_settings(section.get("egress"))
        allowed = section.get("allow_workspace_networks", False)
        if allowed is True:
            return cls(default=default, workspace_networks=_EVERYWHERE)
        if allowed is False or allowed is None:
            return cls(default=default)
        if not isinstance(allowed, list | tuple):
            raise ConfigError(
                "tools.http_request.allow_workspace_networks must be true, false or a list of "
                f"CIDR blocks, not {allowed!r}"
            )
        blocks = EgressPolicy.from_settings({"networks": list(allowed)}).networks
        return cls(default=default, workspace_networks=blocks)

    def refusal(self, network: Network) -> str | None:
        """Why a workspace may not open ``network`` (None when it may)."""
        if _within(network, self.workspace_networks):
            return None
        if not self.workspace_networks:
            return (
                "this server does not let workspaces open non-public networks (the operator's "
                "tools.http_request.allow_workspace_networks is off); list host names instead"
            )
        permitted = ", ".join(str(n) for n in self.workspace_networks)
        return f"{network} is outside the networks workspaces may open here ({permitted})"

    def effective(self, workspace: EgressPolicy | None) -> EgressPolicy:
        """The policy a call runs under: the workspace's own, within the ceiling, or the default."""
        if workspace is None:
            return self.default
        networks = tuple(n for n in workspace.networks if self.refusal(n) is None)
        return EgressPolicy(hosts=workspace.hosts, networks=networks, ports=workspace.ports)


def call_policy(settings: Mapping[str, Any]) -> EgressPolicy:
    """The policy one call runs under, from its ``ToolContext.settings``: the operator's
    section plus, under ``WORKSPACE_EGRESS``, the workspace's own policy if it has one."""
    operator = {key: value for key, value in settings.items() if key != WORKSPACE_EGRESS}
    own = settings.get(WORKSPACE_EGRESS)
    return OperatorEgress.from_settings(operator).effective(
        None if own is None else EgressPolicy.from_settings(own)
    )


def _within(network: Network, blocks: tuple[Network, ...]) -> bool:
    return any(
        network.version == block.version and network.subnet_of(block)  # type: ignore[arg-type]
        for block in blocks
    )
