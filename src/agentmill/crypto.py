"""Provider credentials encrypted at rest, under a key derived from ``AGENTMILL_SECRET_KEY``.

The key is ``HKDF-SHA256(secret_key, salt=HKDF_SALT, info=HKDF_INFO, length=32)``: fixed,
documented constants, so every API and worker process derives the same key, and a key separate
from the one that signs access tokens (a different ``info`` gives an unrelated key). Secrets are
sealed with AES-256-GCM under a random 96-bit nonce; a token reads
``v1.<urlsafe base64 of nonce + ciphertext + tag>``, where the version names this scheme so a
later one (key rotation) can tell its own tokens apart.

An optional ``context`` is bound to the token as GCM associated data: the store passes the
owning workspace and provider name, so a ciphertext copied into another row does not decrypt.

Changing ``AGENTMILL_SECRET_KEY`` makes every stored credential unreadable; decrypting one then
raises :class:`ConfigError` saying so, and each credential must be entered again. With the
built-in development secret the encryption protects nothing (that key is public); ``agentmill
up`` refuses it beyond loopback.
"""

from __future__ import annotations

import base64
import binascii
import os
from functools import lru_cache
from typing import TYPE_CHECKING

from agentmill.config import get_settings
from agentmill.errors import ConfigError

if TYPE_CHECKING:  # cryptography loads with the first provider secret, not at every start
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HKDF_SALT = b"agentmill/secrets/v1"
HKDF_INFO = b"agentmill provider credentials"
_VERSION = "v1"
_NONCE_BYTES = 12
_UNREADABLE = "cannot decrypt provider credentials: AGENTMILL_SECRET_KEY changed?"


@lru_cache(maxsize=8)
def _cipher(secret_key: str) -> AESGCM:
    # Cached: HKDF is cheap, but the gateway reads a workspace's providers on many calls.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(
        secret_key.encode()
    )
    return AESGCM(key)


def _secret(secret_key: str | None) -> str:
    return get_settings().secret() if secret_key is None else secret_key


def encrypt(plain: str, secret_key: str | None = None, *, context: str = "") -> str:
    """Seal ``plain``; each call gives a different token. ``secret_key`` defaults to the
    process's ``AGENTMILL_SECRET_KEY``; ``context`` must be given again to decrypt."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _cipher(_secret(secret_key)).encrypt(nonce, plain.encode(), context.encode())
    return f"{_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt(token: str, secret_key: str | None = None, *, context: str = "") -> str:
    """The plain text sealed in ``token``. Raises :class:`ConfigError` if it was sealed under
    another secret key or context, or was altered."""
    version, _, body = token.partition(".")
    if version != _VERSION:
        raise ConfigError(f"{_UNREADABLE} (unknown token format {version[:8]!r})")
    try:
        raw = base64.urlsafe_b64decode(body.encode())
    except (binascii.Error, ValueError):
        raise ConfigError(f"{_UNREADABLE} (token is not valid base64)") from None
    if len(raw) < _NONCE_BYTES + 16:
        raise ConfigError(f"{_UNREADABLE} (token is truncated)")
    nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
    from cryptography.exceptions import InvalidTag

    try:
        plain = _cipher(_secret(secret_key)).decrypt(nonce, sealed, context.encode())
    except InvalidTag:
        # Wrong key, wrong context and tampering look the same to GCM, by design.
        raise ConfigError(_UNREADABLE) from None
    return plain.decode()
