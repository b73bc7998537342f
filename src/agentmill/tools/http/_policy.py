"""A workspace's egress allowlist: which hosts, which non-public networks, which ports."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from agentmill.errors import ConfigError
from agentmill.tools.http._addresses import IPAddress, why_not_public
from agentmill.tools.http._errors import Refused
from agentmill.tools.http._url import Target, parse_url

DEFAULT_PORTS = frozenset({80, 443})
_KEYS = {"hosts", "networks", "ports"}


@dataclass(frozen=True, kw_only=True)
class EgressPolicy:
    """Where ``http_request`` may go for one workspace. The default allows nothing.

    The operator's default is ``ToolContext.settings["egress"]``; a workspace's own policy (set
    over the API) replaces it (see ``_operator.OperatorEgress``). Both have this shape::

        {"hosts": ["api.example.com", "*.example.org"],   # "*" allows any host name
         "networks": ["10.20.0.0/16"],                    # non-public ranges opted into
         "ports": [443, 8443]}                            # default: 80 and 443

    A request must name an allowed host (or an IP literal inside an allowed network), use an
    allowed port, and every address its host resolves to must be public unicast or inside an
    allowed network.
    """

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPv4Network | IPv6Network, ...] = ()
    ports: frozenset[int] = DEFAULT_PORTS

    @classmethod
    def from_settings(cls, value: Any) -> EgressPolicy:
        """The policy in a workspace's ``egress`` setting; ConfigError when it is malformed."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError(f"egress must be a mapping with {sorted(_KEYS)}, not {value!r}")
        unknown = set(value) - _KEYS
        if unknown:
            raise ConfigError(f"unknown egress keys {sorted(unknown)} (known: {sorted(_KEYS)})")
        hosts = frozenset(_host_pattern(p) for p in _strings(value.get("hosts", ()), "hosts"))
        networks = tuple(_network(n) for n in _strings(value.get("networks", ()), "networks"))
        ports = value.get("ports")
        if ports is None:
            return cls(hosts=hosts, networks=networks)
        if not isinstance(ports, list | tuple) or not all(_is_port(p) for p in ports):
            raise ConfigError(f"egress ports must be a list of ports (1-65535), not {ports!r}")
        return cls(hosts=hosts, networks=networks, ports=frozenset(ports))

    def check_target(self, target: Target) -> None:
        """Refuse a URL whose host or port is not allowed, before anything is resolved."""
        if target.port not in self.ports:
            allowed = ", ".join(str(p) for p in sorted(self.ports)) or "none"
            raise Refused(f"port {target.port} is not allowed (allowed ports: {allowed})")
        if target.ip is not None and self._in_networks(target.ip):
            return
        if not self._host_allowed(target.host):
            raise Refused(f"{target.host!r} is not in this workspace's egress allowlist")

    def check_address(self, target: Target, address: IPAddress) -> None:
        """Refuse an address that is not public unicast, unless an allowed network holds it."""
        if self._in_networks(address):
            return
        what = why_not_public(address)
        if what is None:
            return
        if target.ip is not None:
            raise Refused(f"{address} is {what}")
        raise Refused(f"{target.host} resolves to {address}, {what}")

    def _in_networks(self, address: IPAddress) -> bool:
        # A zone id ties an address to one interface; no allowlist entry speaks for that.
        if isinstance(address, IPv6Address) and address.scope_id:
            return False
        return any(address in network for network in self.networks)

    def _host_allowed(self, host: str) -> bool:
        if "*" in self.hosts or host in self.hosts:
            return True
        labels = host.split(".")
        # "*.example.org" allows any name below example.org, not example.org itself.
        return any(f"*.{'.'.join(labels[i:])}" in self.hosts for i in range(1, len(labels)))


def entry_errors(value: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """Every bad entry of an egress mapping's ``hosts``, ``networks`` and ``ports`` lists, as
    ``(key, index, reason)``: the same rules as :meth:`EgressPolicy.from_settings`, for an API
    that names each entry it refuses."""
    errors: list[tuple[str, int, str]] = []
    checks: dict[str, Callable[[Any], object]] = {
        "hosts": _host_pattern,
        "networks": _network,
        "ports": _port,
    }
    for key, check in checks.items():
        for index, entry in enumerate(value.get(key) or ()):
            try:
                check(entry)
            except ConfigError as exc:
                errors.append((key, index, str(exc)))
    return errors


def _port(value: Any) -> int:
    if not _is_port(value):
        raise ConfigError(f"egress port {value!r} is not a port (1-65535)")
    return int(value)


def _strings(value: Any, key: str) -> Iterable[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"egress {key} must be a list of strings, not {value!r}")
    return value


def _host_pattern(pattern: str) -> str:
    """Normalise a host pattern the way URLs are normalised, so the two compare equal."""
    if not isinstance(pattern, str):
        raise ConfigError(f"egress host {pattern!r} is not a host name or IP address")
    if pattern == "*":
        return pattern
    wildcard = pattern.startswith("*.")
    name = pattern[2:] if wildcard else pattern
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        target = parse_url(f"http://{'[' + name + ']' if ':' in name else name}/")
    except Refused as exc:
        raise ConfigError(
            f"egress host {pattern!r} is not a host name or IP address: {exc}"
        ) from None
    if wildcard and target.ip is not None:
        raise ConfigError(f"egress host {pattern!r}: a wildcard needs a domain name")
    return f"*.{target.host}" if wildcard else target.host


def _network(text: str) -> IPv4Network | IPv6Network:
    if not isinstance(text, str):
        raise ConfigError(f"egress network {text!r} is not a CIDR block")
    try:
        return ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"egress network {text!r} is not a CIDR block: {exc}") from None


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
