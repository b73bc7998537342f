"""Passwords (Argon2 via pwdlib), access tokens (JWT) and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from pwdlib import PasswordHash

from agentmill.ids import new_id

_passwords = PasswordHash.recommended()
API_KEY_PREFIX = "am_"
_ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    return _passwords.verify(password, password_hash)


@dataclass(frozen=True, kw_only=True)
class AccessToken:
    token: str
    jti: str
    user_id: str
    expires_at: datetime


def _signing_key(secret: str) -> bytes:
    """A 32-byte key for tokens only, derived from AGENTMILL_SECRET_KEY (other uses of the
    secret derive their own keys, so one never doubles as another)."""
    return hashlib.sha256(b"agentmill/access-token/v1\x00" + secret.encode()).digest()


def issue_token(user_id: str, secret: str, minutes: int) -> AccessToken:
    expires = datetime.now(UTC) + timedelta(minutes=minutes)
    jti = new_id("tok")
    claims = {"sub": user_id, "jti": jti, "exp": expires}
    token = jwt.encode(claims, _signing_key(secret), algorithm=_ALGORITHM)
    return AccessToken(token=token, jti=jti, user_id=user_id, expires_at=expires)


def read_token(token: str, secret: str) -> AccessToken | None:
    """The token's claims, or None if it is malformed, forged or expired."""
    try:
        claims = jwt.decode(
            token,
            _signing_key(secret),
            algorithms=[_ALGORITHM],
            options={"require": ["exp", "sub", "jti"]},
        )
    except jwt.PyJWTError:
        return None
    return AccessToken(
        token=token,
        jti=str(claims["jti"]),
        user_id=str(claims["sub"]),
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
    )


@dataclass(frozen=True, kw_only=True)
class NewApiKey:
    key: str  # shown once
    prefix: str
    key_hash: str


def new_api_key() -> NewApiKey:
    prefix = secrets.token_hex(4)
    key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(key=key, prefix=prefix, key_hash=hash_api_key(key))


def hash_api_key(key: str) -> str:
    # Keys carry 256 random bits: a fast hash is enough, and lookups stay cheap.
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str | None:
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix, _, rest = key[len(API_KEY_PREFIX) :].partition("_")
    return prefix if rest and len(prefix) == 8 else None


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
