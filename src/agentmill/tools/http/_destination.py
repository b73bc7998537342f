"""Is a URL somewhere the server may send requests on someone's behalf? (Provider base URLs.)

The same rules as ``http_request`` without an allowlist: a strict parse of the URL (no odd IP
encodings), then every address its host resolves to must be public unicast. This is a check at
the time of asking; the connection made later resolves again (see the README's note on DNS
rebinding for provider URLs).
"""

from __future__ import annotations

from agentmill.tools.http._addresses import parse_address, why_not_public
from agentmill.tools.http._errors import Refused
from agentmill.tools.http._url import parse_url
from agentmill.tools.http.tool import Resolver, system_resolver


async def check_public_url(url: str, *, resolver: Resolver | None = None) -> None:
    """Refused (saying why) unless ``url`` is http(s) to a host with only public addresses."""
    target = parse_url(url)
    if target.ip is not None:
        what = why_not_public(target.ip)
        if what is not None:
            raise Refused(f"{target.ip} is {what}")
        return
    try:
        found = await (resolver or system_resolver)(target.host, target.port)
    except OSError as exc:
        raise Refused(f"could not resolve {target.host!r}: {exc.strerror or exc}") from None
    if not found:
        raise Refused(f"{target.host!r} resolves to no address")
    for text in found:
        try:
            address = parse_address(text)
        except ValueError:
            raise Refused(f"resolving {target.host!r} gave {text!r}, not an address") from None
        what = why_not_public(address)
        if what is not None:
            raise Refused(f"{target.host} resolves to {address}, {what}")
