"""Provider credentials encryption; it lives in :mod:`agentmill.crypto` so the store and the
gateway can both use it without importing each other. Re-exported here for older imports."""

from __future__ import annotations

from agentmill.crypto import HKDF_INFO as HKDF_INFO
from agentmill.crypto import HKDF_SALT as HKDF_SALT
from agentmill.crypto import decrypt as decrypt
from agentmill.crypto import encrypt as encrypt
