"""Who may register: the operator's AGENTMILL_REGISTRATION, or a default from the bind host."""

from __future__ import annotations

import ipaddress
from typing import Literal

from agentmill.config import Settings

Mode = Literal["open", "invite", "closed"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for the
    wildcard (0.0.0.0, ::) and every other address, which others may reach."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def registration_mode(settings: Settings, bind_host: str) -> Mode:
    """The setting when the operator chose one; else open on loopback, by invitation elsewhere
    (a server others can reach does not let anyone make an account)."""
    if settings.registration is not None:
        return settings.registration
    return "open" if is_loopback(bind_host) else "invite"
