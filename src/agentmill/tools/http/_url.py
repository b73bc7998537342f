"""Strict URL parsing: one reading of a URL, so what we check is what we connect to.

Parsers disagree about odd URLs (``http://2130706433/``, ``http://0x7f.1/``,
``http://allowed.com@127.0.0.1/``, backslashes, zone ids). Rather than guess which reading the
HTTP library will take, anything that is not plainly ``scheme://host[:port]/path?query`` is
refused, and the result is parsed again by httpx and compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import httpx
import idna

from agentmill.tools.http._addresses import IPAddress
from agentmill.tools.http._errors import Refused

MAX_URL_LENGTH = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# The WHATWG URL standard reads a host whose last label is a number (decimal or 0x-hex) as an
# IPv4 address in any of its legacy forms; only the plain dotted-quad form is accepted here.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_DOTTED_QUAD = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")


@dataclass(frozen=True, kw_only=True)
class Target:
    """A parsed, normalised URL: what the policy checks and the transport connects to."""

    url: httpx.URL
    scheme: str
    host: str  # lower case ASCII (IDNA), no brackets, no trailing dot
    ip: IPAddress | None  # set when the host is an IP literal
    port: int

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    def __str__(self) -> str:
        return str(self.url)


def parse_url(text: str) -> Target:
    """Parse ``text`` strictly; ``Refused`` says what is wrong with it."""
    if len(text) > MAX_URL_LENGTH:
        raise Refused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    bad = next((c for c in text if ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\"), None)
    if bad is not None:
        raise Refused(f"the URL contains {bad!r}; percent-encode it")
    match = _SCHEME.match(text)
    if match is None:
        raise Refused(f"{text!r} is not an absolute URL (http:// or https://)")
    scheme = match.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise Refused(f"only http and https URLs are allowed, not {scheme!r}")
    rest = text[match.end() :]
    if not rest.startswith("//"):
        raise Refused(f"{text!r} has no '//' after the scheme")
    rest = rest[2:]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, path_query = rest[:end], rest[end:].partition("#")[0]
    host, ip, explicit_port = _parse_authority(authority)
    default = DEFAULT_PORTS[scheme]
    port = explicit_port or default
    written_host = f"[{ip.compressed}]" if isinstance(ip, IPv6Address) else host
    written_port = "" if port == default else f":{port}"
    if not path_query.startswith("/"):
        path_query = "/" + path_query
    try:
        url = httpx.URL(f"{scheme}://{written_host}{written_port}{path_query}")
    except httpx.InvalidURL as exc:
        raise Refused(f"{text!r} is not a valid URL: {exc}") from None
    # A second opinion: httpx must read the same scheme, host and port, with no user info.
    if (
        url.scheme != scheme
        or not _same_host(url.raw_host.decode("ascii"), host, ip)
        or (url.port or default) != port
        or url.userinfo
    ):
        raise Refused(f"{text!r} is ambiguous (httpx reads host {url.raw_host!r})")
    return Target(url=url, scheme=scheme, host=host, ip=ip, port=port)


def _parse_authority(authority: str) -> tuple[str, IPAddress | None, int]:
    if "@" in authority:
        raise Refused("URLs with user info ('user@host') are refused; send credentials in headers")
    port_text: str | None = None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise Refused(f"unclosed '[' in host {authority!r}")
        literal, after = authority[1:close], authority[close + 1 :]
        if "%" in literal:
            raise Refused(f"IPv6 zone ids are refused ({literal!r})")
        try:
            ip6 = IPv6Address(literal)
        except ValueError:
            raise Refused(f"{literal!r} is not an IPv6 address") from None
        if after:
            if not after.startswith(":"):
                raise Refused(f"unexpected {after!r} after the IPv6 address")
            port_text = after[1:]
        host: str = ip6.compressed
        ip: IPAddress | None = ip6
    else:
        host, colon, port_text_or_empty = authority.partition(":")
        if colon:
            port_text = port_text_or_empty
        host, ip = _parse_host(host)
    return host, ip, _parse_port(port_text)


def _parse_host(raw: str) -> tuple[str, IPAddress | None]:
    if not raw:
        raise Refused("the URL has no host")
    if "%" in raw:
        raise Refused(f"percent-encoded hosts are refused ({raw!r})")
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise Refused(f"{raw!r} is not a valid international host name: {exc}") from None
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        if not _DOTTED_QUAD.fullmatch(host) or any(int(x) > 255 for x in labels):
            raise Refused(
                f"{raw!r} is an IP address in an unusual form (decimal, hex, octal or "
                "shortened); write IPv4 addresses as four decimal numbers like 192.0.2.1"
            )
        return host, IPv4Address(host)
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise Refused(f"{raw!r} is not a valid host name")
    return host, None


def _parse_port(text: str | None) -> int:
    """The port written in the URL, or 0 when there is none."""
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 0 < int(text) < 65536:
        raise Refused(f"{text!r} is not a valid port")
    return int(text)


def _same_host(seen: str, host: str, ip: IPAddress | None) -> bool:
    if ip is None:
        return seen == host
    try:
        return IPv4Address(seen) == ip if ip.version == 4 else IPv6Address(seen) == ip
    except ValueError:
        return False
