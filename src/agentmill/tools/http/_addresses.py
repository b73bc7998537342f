"""Which IP addresses are public unicast, and what the others are (for a precise refusal)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address

# Checked in order; the first match names the address. The metadata address comes before the
# link-local range that holds it because "the cloud metadata address" is the more useful answer.
_V4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(cidr), what)
    for cidr, what in (
        ("169.254.169.254/32", "the cloud metadata address"),
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol assignment"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)

_V6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(cidr), what)
    for cidr, what in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        # A real AAAA record never holds a mapped address; refusing them all is simpler than
        # reasoning about which socket call would treat it as IPv4.
        ("::ffff:0:0/96", "an IPv4-mapped address"),
        ("::/96", "an IPv4-compatible address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo address"),
        ("2001:db8::/32", "a documentation address"),
        ("fc00::/7", "a unique local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

# Prefixes that embed an IPv4 address the traffic ends up at: judge the embedded one.
_NAT64 = IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")


def parse_address(text: str) -> IPAddress:
    """An address from ``getaddrinfo`` or a URL; ValueError when it is not one."""
    return ip_address(text)


def why_not_public(address: IPAddress) -> str | None:
    """None for a public unicast address, else what it is ("a private address")."""
    if isinstance(address, IPv4Address):
        return _why_not_public_v4(address)
    if address.scope_id:
        return "an address with a zone id"
    if address.ipv4_mapped is not None:
        return f"an IPv4-mapped address (of {address.ipv4_mapped})"
    for network, what in _V6:
        if address in network:
            return what
    embedded = _embedded_v4(address)
    if embedded is not None:
        inner = _why_not_public_v4(embedded)
        return None if inner is None else f"an address that embeds {embedded}, {inner}"
    if address not in _GLOBAL_UNICAST_V6 or not address.is_global:
        return "a reserved address"
    return None


def _why_not_public_v4(address: IPv4Address) -> str | None:
    for network, what in _V4:
        if address in network:
            return what
    # The table above covers the IANA special-purpose registry; this catches what it may miss.
    if not address.is_global:
        return "not a public address"
    return None


def _embedded_v4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address inside a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address."""
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour
