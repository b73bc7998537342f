"""Provider credentials encrypted at rest: AES-GCM under a key derived from the secret key."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agentmill.config import Settings, get_settings
from agentmill.errors import ConfigError
from agentmill.gateway.secrets import HKDF_INFO, HKDF_SALT, decrypt, encrypt

SECRET = "a-long-random-key-Zq7Wm3Xv9Bt1Ny5Kc8Lr2Hd6Jp"
UNREADABLE = re.escape("cannot decrypt provider credentials: AGENTMILL_SECRET_KEY changed?")


def test_a_secret_round_trips_and_its_token_does_not_contain_it() -> None:
    plain = "sk-proj-Zx9QwErTy-unicode-é"

    token = encrypt(plain, SECRET)

    assert token.startswith("v1.")
    assert plain not in token
    assert "sk-proj" not in token
    assert decrypt(token, SECRET) == plain


def test_each_encryption_of_the_same_secret_differs() -> None:
    tokens = {encrypt("sk-same", SECRET) for _ in range(20)}

    assert len(tokens) == 20  # a fresh nonce each time
    assert {decrypt(t, SECRET) for t in tokens} == {"sk-same"}


def test_the_key_is_hkdf_sha256_of_the_secret_with_the_documented_salt_and_info() -> None:
    # Any process (or an operator's script) derives the same key from the same secret.
    token = encrypt("sk-documented", SECRET)
    raw = base64.urlsafe_b64decode(token.removeprefix("v1."))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO).derive(
        SECRET.encode()
    )

    assert AESGCM(key).decrypt(raw[:12], raw[12:], b"") == b"sk-documented"


def test_another_secret_key_cannot_decrypt() -> None:
    token = encrypt("sk-mine", SECRET)

    with pytest.raises(ConfigError, match=f"^{UNREADABLE}$"):
        decrypt(token, "another-secret-key")


@pytest.mark.parametrize(
    "index", [0, 11, 12, 20, -1], ids=["nonce", "nonce end", "ciphertext", "ciphertext end", "tag"]
)
def test_flipping_any_bit_of_the_token_is_detected(index: int) -> None:
    token = encrypt("sk-untouched-and-long-enough", SECRET)
    raw = bytearray(base64.urlsafe_b64decode(token.removeprefix("v1.")))
    raw[index] ^= 0x01
    tampered = "v1." + base64.urlsafe_b64encode(bytes(raw)).decode()

    with pytest.raises(ConfigError, match=f"^{UNREADABLE}$"):
        decrypt(tampered, SECRET)


@pytest.mark.parametrize("broken", ["", "v1.", "v1.!!!", "v1.AAAA", "v2.AAAAAAAA", "plain-key"])
def test_a_token_that_is_not_one_is_refused_clearly(broken: str) -> None:
    with pytest.raises(ConfigError, match=UNREADABLE):
        decrypt(broken, SECRET)


def test_a_token_only_decrypts_in_its_own_context() -> None:
    token = encrypt("sk-ws1", SECRET, context="ws_1/openai")

    assert decrypt(token, SECRET, context="ws_1/openai") == "sk-ws1"
    with pytest.raises(ConfigError, match=UNREADABLE):
        decrypt(token, SECRET, context="ws_2/openai")
    with pytest.raises(ConfigError, match=UNREADABLE):
        decrypt(token, SECRET)


def test_without_a_secret_key_the_process_settings_are_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTMILL_SECRET_KEY", SECRET)
    get_settings.cache_clear()
    try:
        assert get_settings() == Settings(secret_key=SECRET)
        token = encrypt("sk-env")
        assert decrypt(token, SECRET) == "sk-env"
        monkeypatch.setenv("AGENTMILL_SECRET_KEY", "changed-key-Vb4Nq8Zm2Xt6Wr0Yc3Lk7Hj1Pd5F")
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match=UNREADABLE):
            decrypt(token)
    finally:
        get_settings.cache_clear()
