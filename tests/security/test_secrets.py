"""AGENTMILL_SECRET_KEY: no built-in key; weak and example keys refused everywhere; an embedded
server generates its own on the first start and keeps it."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from agentmill.config import Settings, get_settings
from agentmill.errors import ConfigError
from agentmill.secret_key import LEGACY_DEFAULT_SECRET, local_secret_key, with_secret
from agentmill.store.db import Database, Tx
from agentmill.store.migrate import upgrade
from agentmill.store.repositories import accounts, providers, workspaces
from tests.cli.test_run import CLI
from tests.cli.test_up import free_port, start_up, stop
from tests.conftest import started

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REFUSED = "AGENTMILL_SECRET_KEY is refused"
HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def forged_token(user_id: str, secret: str) -> str:
    """An access token as anyone who knows ``secret`` can make one."""
    key = hashlib.sha256(b"agentmill/access-token/v1\x00" + secret.encode()).digest()
    claims = {"sub": user_id, "jti": "tok_forged", "exp": datetime.now(UTC) + timedelta(hours=1)}
    return jwt.encode(claims, key, algorithm="HS256")


def without_secret() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("AGENTMILL_SECRET_KEY", None)
    env.pop("AGENTMILL_DATABASE_URL", None)
    return env


def test_a_token_signed_with_the_old_development_key_is_refused_on_loopback(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTMILL_SECRET_KEY")  # start_up passes our environment on
    port = free_port()
    proc, first = start_up(workdir, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            login = http.post(
                "/api/v1/auth/login", json={"email": first["email"], "password": first["password"]}
            )
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            me = http.get("/api/v1/auth/me", headers=headers).json()
            forged = {"Authorization": f"Bearer {forged_token(me['id'], LEGACY_DEFAULT_SECRET)}"}
            refused = http.get("/api/v1/auth/me", headers=forged)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "not_authenticated"
    finally:
        stop(proc)
    key_file = workdir / ".agentmill" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    generated = key_file.read_text().strip()
    assert len(generated) >= 43

    # the next start reuses the key: the token of the first start still works
    proc, second = start_up(workdir, port)
    try:
        assert second == {}
        assert key_file.read_text().strip() == generated
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("/api/v1/auth/me", headers=headers).status_code == 200
    finally:
        stop(proc)


@pytest.mark.parametrize(
    "value",
    [
        LEGACY_DEFAULT_SECRET,
        "CHANGE-ME-to-a-long-random-value",
        "please-changeme-before-production-use",
        "secret",
        "example",
        "short-but-random-9f2K",
        "a" * 64,
        "ab" * 32,
        "0123012301230123012301230123012301230123",
    ],
)
def test_weak_and_example_keys_are_refused_with_how_to_make_one(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(secret_key=value)
    message = str(caught.value)
    assert message.startswith(REFUSED)
    assert HINT in message
    assert repr(value) not in message  # a real key, even a weak one, is not echoed to logs


def test_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMILL_SECRET_KEY", LEGACY_DEFAULT_SECRET)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match=REFUSED):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_random_keys_are_accepted() -> None:
    import secrets

    for value in (secrets.token_urlsafe(32), secrets.token_hex(32), secrets.token_hex(16)):
        assert Settings(secret_key=value).secret() == value


def test_without_a_key_there_is_none_to_fall_back_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMILL_SECRET_KEY")
    settings = Settings()
    assert settings.secret_key is None
    with pytest.raises(ConfigError, match=r"^AGENTMILL_SECRET_KEY is not set: .*token_urlsafe"):
        settings.secret()
    with pytest.raises(ConfigError, match="every API and worker process must be given the same"):
        with_secret(settings, embedded=False)


def test_the_generated_key_is_private_kept_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = local_secret_key(home)
    path = home / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(secret_key=first).secret() == first  # strong enough for its own check
    assert local_secret_key(home) == first
    assert sorted(p.name for p in home.iterdir()) == ["secret_key"]  # nothing left aside
    settings = with_secret(Settings(home=home, secret_key=None), embedded=True)
    assert settings.secret() == first


def test_a_weak_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("changeme\n")
    with pytest.raises(ConfigError, match="holds a key that is refused"):
        local_secret_key(tmp_path)


def test_up_refuses_the_old_development_key_even_on_loopback(workdir: Path) -> None:
    env = {**without_secret(), "AGENTMILL_SECRET_KEY": LEGACY_DEFAULT_SECRET}
    result = subprocess.run(
        [*CLI, "up", "--port", str(free_port())],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert REFUSED in result.stderr
    assert "Traceback" not in result.stderr


def test_api_and_worker_refuse_to_start_without_a_key(workdir: Path) -> None:
    for command in (["api", "--port", str(free_port())], ["worker"]):
        result = subprocess.run(
            [*CLI, *command],
            cwd=workdir,
            env=without_secret(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert "AGENTMILL_SECRET_KEY is not set" in result.stderr
        assert not (workdir / ".agentmill" / "secret_key").exists()


def test_the_kubernetes_example_secret_is_refused() -> None:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "secret.example.yaml").read_text())
    (secret,) = [d for d in docs if d and d["kind"] == "Secret"]
    with pytest.raises(ConfigError, match=REFUSED):
        Settings(secret_key=secret["stringData"]["AGENTMILL_SECRET_KEY"])


async def test_up_moves_provider_keys_stored_under_the_old_built_in_key(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedded install upgraded from a release that ran on the built-in key keeps its
    workspaces' provider keys: the first start re-encrypts them under the generated key."""
    home = workdir / ".agentmill"
    home.mkdir()
    url = f"sqlite:///{home / 'agentmill.db'}"
    await upgrade(Database(url))
    async with started(url) as db:

        def arrange(tx: Tx) -> str:
            user = accounts.create_user(tx, email="old@example.com", name="O", password_hash="x")
            ws = workspaces.create_workspace(tx, name="Old", owner_id=user.id).id
            providers.create_provider(
                tx,
                ws,
                name="mine",
                kind="openai",
                api_key="sk-old",
                secret_key=LEGACY_DEFAULT_SECRET,
            )
            providers.create_provider(
                tx, ws, name="other", kind="openai", api_key="sk-x", secret_key="some-other-key"
            )
            return ws

        ws = await db.write(arrange)
    monkeypatch.delenv("AGENTMILL_SECRET_KEY")
    proc, _ = start_up(workdir, free_port())
    assert "Traceback" not in stop(proc)
    generated = (home / "secret_key").read_text().strip()
    async with started(url) as db:
        configs = await providers.workspace_provider_configs(db, ws, secret_key=generated)
        assert configs["mine"].api_key == "sk-old"
        with pytest.raises(ConfigError, match="cannot decrypt"):
            configs["other"]  # under some other key: left alone
