"""A Python client for the AgentMill API (httpx), in sync and async flavours.

    from agentmill.client import Client

    with Client("http://127.0.0.1:8000", api_key="am_…") as am:
        workflow = am.push_workflow(ws, open("flow.yaml").read())
        run = am.start_run(workflow["id"], {"topic": "bees"})
        print(am.wait(run["id"])["outputs"])

Errors from the server raise :class:`ApiError` with its status, code, message and details.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"}  # kept here: no engine import


class ApiError(Exception):
    """The server answered with an error."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, error["code"], error["message"], error.get("details"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "error", response.text[:500]) from None


def _yaml_or_json(source: str | dict[str, Any]) -> tuple[bytes, str]:
    if isinstance(source, dict):
        return json.dumps(source).encode(), "application/json"
    return source.encode(), "application/yaml"


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])


class Client:
    """Synchronous client. ``api_key`` or ``token`` authenticates."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        secret = api_key or token
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return None if response.status_code == 204 else response.json()

    # accounts
    def login(self, email: str, password: str) -> str:
        token = str(
            self._call("POST", "/auth/login", json={"email": email, "password": password})[
                "access_token"
            ]
        )
        self._http.headers["Authorization"] = f"Bearer {token}"
        return token

    def me(self) -> dict[str, Any]:
        return dict(self._call("GET", "/auth/me"))

    # workspaces
    def workspaces(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/workspaces"))

    # workflows
    def push_workflow(self, workspace_id: str, source: str | dict[str, Any]) -> dict[str, Any]:
        """Create the workflow, or add a version if one with its name exists."""
        body, kind = _yaml_or_json(source)
        try:
            return dict(
                self._call(
                    "POST",
                    f"/workspaces/{workspace_id}/workflows",
                    content=body,
                    headers={"Content-Type": kind},
                )
            )
        except ApiError as exc:
            if exc.status != 409:
                raise
        name = _name_of(source)
        existing = next(w for w in self.workflows(workspace_id) if w["name"] == name)
        return dict(
            self._call(
                "PUT", f"/workflows/{existing['id']}", content=body, headers={"Content-Type": kind}
            )
        )

    def workflows(self, workspace_id: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/workspaces/{workspace_id}/workflows"))

    # runs
    def start_run(
        self, workflow_id: str, inputs: dict[str, Any] | None = None, version: int | None = None
    ) -> dict[str, Any]:
        return dict(
            self._call(
                "POST",
                f"/workflows/{workflow_id}/runs",
                json={"inputs": inputs or {}, "version": version},
            )
        )

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/runs/{run_id}"))

    def runs(
        self,
        workspace_id: str,
        *,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        params = {
            k: v
            for k, v in {"status": status, "limit": limit, "cursor": cursor}.items()
            if v is not None
        }
        return dict(self._call("GET", f"/workspaces/{workspace_id}/runs", params=params))

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/runs/{run_id}/steps"))

    def cancel(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/runs/{run_id}/cancel"))

    def decide(
        self, run_id: str, step: str, *, approved: bool, comment: str | None = None
    ) -> dict[str, Any]:
        action = "approve" if approved else "reject"
        return dict(
            self._call("POST", f"/runs/{run_id}/steps/{step}/{action}", json={"comment": comment})
        )

    # dead letters
    def dead_letters(
        self, workspace_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """Steps that failed for good, newest first: ``{"dead_letters": […], "next_cursor"}``."""
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return dict(self._call("GET", f"/workspaces/{workspace_id}/dead-letters", params=params))

    def redrive(self, step_id: str) -> dict[str, Any]:
        """Run a dead letter again; returns its root run, which continues from that step."""
        return dict(self._call("POST", f"/dead-letters/{step_id}/redrive"))

    def events(self, run_id: str, *, after: int | None = None) -> Iterator[dict[str, Any]]:
        """The run's events, replayed then live, until the run ends."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        with self._http.stream(
            "GET", f"/runs/{run_id}/events", headers=headers, timeout=None
        ) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            yield from _events(response.iter_lines())

    def wait(self, run_id: str, *, timeout: float = 600, poll: float = 0.2) -> dict[str, Any]:
        """Poll until the run ends (or waits for a person); returns the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in _FINAL or run["status"] == "WAITING" or time.monotonic() > deadline:
                return run
            time.sleep(poll)


class AsyncClient:
    """Asynchronous client with the same methods as :class:`Client` (awaitable)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        secret = api_key or token
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        _raise_for(response)
        return None if response.status_code == 204 else response.json()

    async def push_workflow(
        self, workspace_id: str, source: str | dict[str, Any]
    ) -> dict[str, Any]:
        body, kind = _yaml_or_json(source)
        try:
            return dict(
                await self._call(
                    "POST",
                    f"/workspaces/{workspace_id}/workflows",
                    content=body,
                    headers={"Content-Type": kind},
                )
            )
        except ApiError as exc:
            if exc.status != 409:
                raise
        name = _name_of(source)
        listed = await self._call("GET", f"/workspaces/{workspace_id}/workflows")
        existing = next(w for w in listed if w["name"] == name)
        return dict(
            await self._call(
                "PUT", f"/workflows/{existing['id']}", content=body, headers={"Content-Type": kind}
            )
        )

    async def start_run(
        self, workflow_id: str, inputs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return dict(
            await self._call(
                "POST", f"/workflows/{workflow_id}/runs", json={"inputs": inputs or {}}
            )
        )

    async def run(self, run_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/runs/{run_id}"))

    async def cancel(self, run_id: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/runs/{run_id}/cancel"))

    async def dead_letters(
        self, workspace_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return dict(
            await self._call("GET", f"/workspaces/{workspace_id}/dead-letters", params=params)
        )

    async def redrive(self, step_id: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/dead-letters/{step_id}/redrive"))

    async def events(
        self, run_id: str, *, after: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        headers = {"Last-Event-ID": str(after)} if after else {}
        async with self._http.stream(
            "GET", f"/runs/{run_id}/events", headers=headers, timeout=None
        ) as response:
            if not response.is_success:
                await response.aread()
                _raise_for(response)
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[len("data: ") :])


def _name_of(source: str | dict[str, Any]) -> str:
    if isinstance(source, dict):
        return str(source["name"])
    from agentmill.domain.validation import load_workflow_text

    return load_workflow_text(source).name
