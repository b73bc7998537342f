"""Which passwords an account may have, and hashing them without starving the server.

Argon2 costs tens of milliseconds of CPU and memory on purpose; many at once (a crowd of
guessers) would queue every other request behind them. Hashes run in threads, so the event loop
stays free, and at most ``password_hash_concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
from functools import cache
from importlib import resources

from agentmill.api.security import hash_password, verify_password

MIN_LENGTH = 12


@cache
def _common() -> frozenset[str]:
    text = resources.files("agentmill.api").joinpath("common_passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line and not line.startswith("#")
    )


def password_weakness(password: str, *, email: str) -> str | None:
    """Why ``password`` is too easy to guess, or None when it will do."""
    if len(password) < MIN_LENGTH:
        return f"the password must be at least {MIN_LENGTH} characters long"
    folded = password.lower()
    if folded in _common() or len(set(folded)) < 4:
        return "this password is one of the most commonly used: choose another"
    local = email.lower().partition("@")[0]
    if len(local) >= 4 and local in folded:
        return "the password must not contain the email address: choose another"
    return None


class PasswordHasher:
    """Argon2 hashing and verifying in threads, a bounded number at once."""

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password, password)

    async def verify(self, password: str, password_hash: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(verify_password, password, password_hash)
