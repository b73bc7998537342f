"""Sortable, prefixed identifiers (``run_01m7…``): time-ordered so indexes stay append-mostly."""

from __future__ import annotations

import base64
import os
import time

# base32hex keeps byte order (so ids sort by time); map it onto Crockford's readable alphabet.
_CROCKFORD = bytes.maketrans(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUV", b"0123456789abcdefghjkmnpqrstvwxyz"
)


def new_id(prefix: str) -> str:
    """A new id: 48 bits of milliseconds then 80 random bits, base32, with a prefix."""
    millis = time.time_ns() // 1_000_000
    raw = millis.to_bytes(6, "big") + os.urandom(10)
    encoded = base64.b32hexencode(raw).rstrip(b"=").translate(_CROCKFORD)
    return f"{prefix}_{encoded.decode()}"
