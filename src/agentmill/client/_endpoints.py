"""Every endpoint of the HTTP API, once; the clients execute them (see ``_calls``).

The names and signatures here are the clients' methods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from agentmill.client._calls import (
    API,
    ApiError,
    Call,
    Emit,
    Feed,
    Flow,
    Sleep,
    Stream,
    UseToken,
    sse_data,
)

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"})  # no engine import

Source = str | dict[str, Any]
Time = datetime | str


def _obj(answer: Any) -> dict[str, Any]:
    return dict(answer)


def _objs(answer: Any) -> list[dict[str, Any]]:
    return [dict(item) for item in answer]


def _nothing(answer: Any) -> None:
    return None


def _p(value: str) -> str:
    """An id as one path segment."""
    return quote(value, safe="")


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters, leaving out the unset ones; times as ISO 8601."""
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in values.items()
        if value is not None
    }


def _body(source: Source) -> tuple[bytes, dict[str, str]]:
    if isinstance(source, dict):
        return json.dumps(source).encode(), {"Content-Type": "application/json"}
    return source.encode(), {"Content-Type": "application/yaml"}


def _name_of(source: Source) -> str:
    if isinstance(source, dict) and set(source) != {"source"}:
        return str(source["name"])
    from agentmill.domain.validation import load_workflow_text

    return load_workflow_text(source["source"] if isinstance(source, dict) else source).name


def _list(values: str | Sequence[str] | None) -> list[str] | None:
    return [values] if isinstance(values, str) else None if values is None else list(values)


# health


def health() -> Call[dict[str, Any]]:
    """The server's health report (the database, the step queue, the embedded worker); also
    when it answers 503 because one of them is down."""
    return Call(method="GET", path="/health", shape=_obj, accept=frozenset({503}))


# accounts


def register(email: str, name: str, password: str) -> Call[dict[str, Any]]:
    """Create an account. The answer (``{"message": …}``) is the same whether the address had
    an account already, so it tells no one who has one; log in next (``me()`` is the user)."""
    body = {"email": email, "name": name, "password": password}
    return Call(method="POST", path=f"{API}/auth/register", json=body, shape=_obj)


def login(email: str, password: str) -> Flow[str]:
    """Log in; the client sends the returned access token from now on."""
    answer = yield Call(
        method="POST",
        path=f"{API}/auth/login",
        json={"email": email, "password": password},
        shape=_obj,
    )
    token = str(answer["access_token"])
    yield UseToken(token)
    return token


def logout() -> Call[None]:
    """End the login token this client sends; it stops working at once."""
    return Call(method="POST", path=f"{API}/auth/logout", shape=_nothing)


def me() -> Call[dict[str, Any]]:
    """The signed-in account."""
    return Call(method="GET", path=f"{API}/auth/me", shape=_obj)


# workspaces and members


def create_workspace(name: str) -> Call[dict[str, Any]]:
    """Create a workspace; you become its owner."""
    return Call(method="POST", path=f"{API}/workspaces", json={"name": name}, shape=_obj)


def workspaces() -> Call[list[dict[str, Any]]]:
    """Workspaces you are a member of (for an API key: its own)."""
    return Call(method="GET", path=f"{API}/workspaces", shape=_objs)


def workspace(workspace_id: str) -> Call[dict[str, Any]]:
    """One workspace, with your role in it."""
    return Call(method="GET", path=f"{API}/workspaces/{_p(workspace_id)}", shape=_obj)


def rename_workspace(workspace_id: str, name: str) -> Call[dict[str, Any]]:
    """Rename a workspace (owners)."""
    path = f"{API}/workspaces/{_p(workspace_id)}"
    return Call(method="PATCH", path=path, json={"name": name}, shape=_obj)


def delete_workspace(workspace_id: str) -> Call[None]:
    """Delete a workspace and everything in it (owners)."""
    return Call(method="DELETE", path=f"{API}/workspaces/{_p(workspace_id)}", shape=_nothing)


def members(workspace_id: str) -> Call[list[dict[str, Any]]]:
    """Members of a workspace and their roles."""
    return Call(method="GET", path=f"{API}/workspaces/{_p(workspace_id)}/members", shape=_objs)


def add_member(workspace_id: str, email: str, role: str = "member") -> Call[dict[str, Any]]:
    """Add a registered user with a role (owner, admin, member or viewer)."""
    return Call(
        method="POST",
        path=f"{API}/workspaces/{_p(workspace_id)}/members",
        json={"email": email, "role": role},
        shape=_obj,
    )


def change_member_role(workspace_id: str, user_id: str, role: str) -> Call[None]:
    """Change a member's role; the last owner cannot be demoted."""
    return Call(
        method="PATCH",
        path=f"{API}/workspaces/{_p(workspace_id)}/members/{_p(user_id)}",
        json={"role": role},
        shape=_nothing,
    )


def remove_member(workspace_id: str, user_id: str) -> Call[None]:
    """Remove a member; the last owner cannot be removed."""
    return Call(
        method="DELETE",
        path=f"{API}/workspaces/{_p(workspace_id)}/members/{_p(user_id)}",
        shape=_nothing,
    )


# API keys


def create_api_key(workspace_id: str, name: str, role: str = "member") -> Call[dict[str, Any]]:
    """Create a key for a workspace. Its secret, ``key``, is in this answer only."""
    body = {"workspace_id": workspace_id, "name": name, "role": role}
    return Call(method="POST", path=f"{API}/api-keys", json=body, shape=_obj)


def api_keys(workspace_id: str) -> Call[list[dict[str, Any]]]:
    """A workspace's keys (never their secrets)."""
    params = {"workspace_id": workspace_id}
    return Call(method="GET", path=f"{API}/api-keys", params=params, shape=_objs)


def revoke_api_key(workspace_id: str, key_id: str) -> Call[None]:
    """Revoke a key; it stops working at once."""
    return Call(
        method="DELETE",
        path=f"{API}/api-keys/{_p(key_id)}",
        params={"workspace_id": workspace_id},
        shape=_nothing,
    )


# a workspace's own model providers


def create_provider(
    workspace_id: str,
    name: str,
    kind: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    headers: dict[str, str] | None = None,
) -> Call[dict[str, Any]]:
    """Add a provider to a workspace (kind openai, openai_compatible, anthropic, gemini or
    ollama); its models are then ``name/model`` there. The key is stored encrypted and never
    answered: the provider shows ``has_api_key``."""
    optional = {"base_url": base_url, "api_key": api_key, "timeout": timeout, "headers": headers}
    body = {"name": name, "kind": kind, **{k: v for k, v in optional.items() if v is not None}}
    path = f"{API}/workspaces/{_p(workspace_id)}/providers"
    return Call(method="POST", path=path, json=body, shape=_obj)


def providers(workspace_id: str) -> Call[list[dict[str, Any]]]:
    """A workspace's own providers by name (never their keys)."""
    path = f"{API}/workspaces/{_p(workspace_id)}/providers"
    return Call(method="GET", path=path, shape=_objs)


def provider(workspace_id: str, name: str) -> Call[dict[str, Any]]:
    """One of a workspace's providers (never its key)."""
    path = f"{API}/workspaces/{_p(workspace_id)}/providers/{_p(name)}"
    return Call(method="GET", path=path, shape=_obj)


def update_provider(workspace_id: str, name: str, **changes: Any) -> Call[dict[str, Any]]:
    """Change some of ``kind``, ``base_url``, ``api_key``, ``timeout`` and ``headers``; only
    those given change, and ``api_key=None`` removes the key."""
    path = f"{API}/workspaces/{_p(workspace_id)}/providers/{_p(name)}"
    return Call(method="PATCH", path=path, json=changes, shape=_obj)


def delete_provider(workspace_id: str, name: str) -> Call[None]:
    """Remove a provider and its key."""
    path = f"{API}/workspaces/{_p(workspace_id)}/providers/{_p(name)}"
    return Call(method="DELETE", path=path, shape=_nothing)


# workflows


def create_workflow(workspace_id: str, source: Source) -> Call[dict[str, Any]]:
    """Create a workflow from YAML text or a JSON-like dict (409 if its name exists)."""
    content, headers = _body(source)
    return Call(
        method="POST",
        path=f"{API}/workspaces/{_p(workspace_id)}/workflows",
        content=content,
        headers=headers,
        shape=_obj,
    )


def push_workflow(workspace_id: str, source: Source) -> Flow[dict[str, Any]]:
    """Create the workflow, or add a version if one with its name exists."""
    try:
        created: dict[str, Any] = yield create_workflow(workspace_id, source)
        return created
    except ApiError as exc:
        if exc.status != 409:
            raise
        conflict = exc
    name = _name_of(source)
    listed: list[dict[str, Any]] = yield workflows(workspace_id)
    existing = next((w for w in listed if w["name"] == name), None)
    if existing is None:  # deleted in between
        raise conflict
    updated: dict[str, Any] = yield update_workflow(existing["id"], source)
    return updated


def workflows(workspace_id: str) -> Call[list[dict[str, Any]]]:
    """Workflows in a workspace."""
    path = f"{API}/workspaces/{_p(workspace_id)}/workflows"
    return Call(method="GET", path=path, shape=_objs)


def workflow(workflow_id: str) -> Call[dict[str, Any]]:
    """A workflow with its latest spec."""
    return Call(method="GET", path=f"{API}/workflows/{_p(workflow_id)}", shape=_obj)


def update_workflow(workflow_id: str, source: Source) -> Call[dict[str, Any]]:
    """Save a new version (the name must stay); an identical spec keeps the latest version."""
    content, headers = _body(source)
    return Call(
        method="PUT",
        path=f"{API}/workflows/{_p(workflow_id)}",
        content=content,
        headers=headers,
        shape=_obj,
    )


def delete_workflow(workflow_id: str) -> Call[None]:
    """Delete a workflow and its finished runs."""
    return Call(method="DELETE", path=f"{API}/workflows/{_p(workflow_id)}", shape=_nothing)


def versions(workflow_id: str) -> Call[list[dict[str, Any]]]:
    """Every version of a workflow, oldest first."""
    return Call(method="GET", path=f"{API}/workflows/{_p(workflow_id)}/versions", shape=_objs)


# runs


def start_run(
    workflow_id: str, inputs: dict[str, Any] | None = None, version: int | None = None
) -> Call[dict[str, Any]]:
    """Start a run (of the latest version unless ``version`` is given); returns it."""
    return Call(
        method="POST",
        path=f"{API}/workflows/{_p(workflow_id)}/runs",
        json={"inputs": inputs or {}, "version": version},
        shape=_obj,
    )


def run(run_id: str) -> Call[dict[str, Any]]:
    """A run: status, inputs, outputs, error, usage."""
    return Call(method="GET", path=f"{API}/runs/{_p(run_id)}", shape=_obj)


def runs(
    workspace_id: str,
    *,
    status: str | None = None,
    workflow_id: str | None = None,
    created_after: Time | None = None,
    created_before: Time | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Call[dict[str, Any]]:
    """One page of a workspace's runs, newest first: ``{"runs": [...], "next_cursor": ...}``;
    pass ``next_cursor`` back as ``cursor`` for the next page."""
    params = _params(
        status=status,
        workflow_id=workflow_id,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )
    path = f"{API}/workspaces/{_p(workspace_id)}/runs"
    return Call(method="GET", path=path, params=params, shape=_obj)


def iter_runs(
    workspace_id: str,
    *,
    status: str | None = None,
    workflow_id: str | None = None,
    created_after: Time | None = None,
    created_before: Time | None = None,
    page_size: int = 50,
) -> Feed[dict[str, Any]]:
    """Every matching run, newest first, fetching ``page_size`` at a time."""
    cursor = None
    while True:
        page = yield runs(
            workspace_id,
            status=status,
            workflow_id=workflow_id,
            created_after=created_after,
            created_before=created_before,
            limit=page_size,
            cursor=cursor,
        )
        for item in page["runs"]:
            yield Emit(item)
        cursor = page["next_cursor"]
        if not cursor:
            return


def steps(run_id: str) -> Call[list[dict[str, Any]]]:
    """A run's steps in the order they became ready."""
    return Call(method="GET", path=f"{API}/runs/{_p(run_id)}/steps", shape=_objs)


def metrics(run_id: str) -> Call[dict[str, Any]]:
    """Tokens, cost and durations of a run, per step and in total."""
    return Call(method="GET", path=f"{API}/runs/{_p(run_id)}/metrics", shape=_obj)


def cancel(run_id: str) -> Call[dict[str, Any]]:
    """Cancel a run and everything under it; returns the run."""
    return Call(method="POST", path=f"{API}/runs/{_p(run_id)}/cancel", shape=_obj)


def decide(
    run_id: str,
    step: str,
    *,
    approved: bool,
    comment: str | None = None,
    payload: dict[str, Any] | None = None,
) -> Call[dict[str, Any]]:
    """Approve or reject a waiting human step; ``payload`` is merged into its output. Returns
    the run."""
    action = "approve" if approved else "reject"
    return Call(
        method="POST",
        path=f"{API}/runs/{_p(run_id)}/steps/{_p(step)}/{action}",
        json={"comment": comment, "payload": payload or {}},
        shape=_obj,
    )


def approve(
    run_id: str, step: str, *, comment: str | None = None, payload: dict[str, Any] | None = None
) -> Call[dict[str, Any]]:
    """Approve a waiting human step; the run continues from it."""
    return decide(run_id, step, approved=True, comment=comment, payload=payload)


def reject(
    run_id: str, step: str, *, comment: str | None = None, payload: dict[str, Any] | None = None
) -> Call[dict[str, Any]]:
    """Reject a waiting human step."""
    return decide(run_id, step, approved=False, comment=comment, payload=payload)


def respond(
    run_id: str, step: str, answer: dict[str, Any], *, comment: str | None = None
) -> Call[dict[str, Any]]:
    """Answer a waiting human step's form; the answer becomes its output. Returns the run.
    An answer that does not match the form raises ApiError 422 (``details.path`` says where)."""
    return Call(
        method="POST",
        path=f"{API}/runs/{_p(run_id)}/steps/{_p(step)}/respond",
        json={"answer": answer, "comment": comment},
        shape=_obj,
    )


def events(
    run_id: str,
    *,
    after: int | None = None,
    level: str | Sequence[str] | None = None,
    source: str | Sequence[str] | None = None,
    live: bool = True,
) -> Feed[dict[str, Any]]:
    """The run's events (and its sub-runs'), replayed then live, until the run ends.

    ``after`` resumes after that event id (``Last-Event-ID``); ``level`` (info, warning, error)
    and ``source`` (engine, llm, step) keep only those events. While the run goes on, live
    events that are not stored come too: ``step.delta`` (a model writing) and ``step.tool``
    (a tool call starting or ending), with ``"ephemeral": True`` and no ``id``; ``live=False``
    leaves them out.
    """
    headers = {"Last-Event-ID": str(after)} if after is not None else None
    params = _params(level=_list(level), source=_list(source), live=None if live else "false")
    path = f"{API}/runs/{_p(run_id)}/events"
    yield Stream(
        Call(method="GET", path=path, params=params, headers=headers, shape=_nothing), sse_data
    )


def wait(run_id: str, *, timeout: float = 600, poll: float = 0.2) -> Flow[dict[str, Any]]:
    """Poll until the run ends or waits for a person (or ``timeout`` passes); returns the run."""
    deadline = time.monotonic() + timeout
    while True:
        current: dict[str, Any] = yield run(run_id)
        if (
            current["status"] in FINAL
            or current["status"] == "WAITING"
            or time.monotonic() > deadline
        ):
            return current
        yield Sleep(poll)


# usage


def usage(
    workspace_id: str, *, since: Time | None = None, until: Time | None = None
) -> Call[dict[str, Any]]:
    """Model calls, tokens and cost in ``[since, until)`` (default: the last 30 days), in total,
    per model and per workflow."""
    path = f"{API}/workspaces/{_p(workspace_id)}/usage"
    return Call(method="GET", path=path, params=_params(since=since, until=until), shape=_obj)


# spending controls


def budgets(workspace_id: str) -> Call[list[dict[str, Any]]]:
    """Budgets, with what each has spent this period."""
    return Call(method="GET", path=f"{API}/workspaces/{_p(workspace_id)}/budgets", shape=_objs)


def create_budget(
    workspace_id: str,
    limit_usd: str | float,
    *,
    scope: str = "workspace",
    subject_id: str | None = None,
    period: str = "monthly",
    soft_ratio: str | float = "0.8",
) -> Call[dict[str, Any]]:
    """Add a budget; calls that would pass it are refused (scope: workspace, api_key, user or
    run; without ``subject_id`` a key, user or run budget applies to each one)."""
    body = {
        "scope": scope,
        "subject_id": subject_id,
        "period": period,
        "limit_usd": str(limit_usd),
        "soft_ratio": str(soft_ratio),
    }
    path = f"{API}/workspaces/{_p(workspace_id)}/budgets"
    return Call(method="POST", path=path, json=body, shape=_obj)


def delete_budget(workspace_id: str, budget_id: str) -> Call[None]:
    """Remove a budget."""
    path = f"{API}/workspaces/{_p(workspace_id)}/budgets/{_p(budget_id)}"
    return Call(method="DELETE", path=path, shape=_nothing)


def rate_limits(workspace_id: str) -> Call[list[dict[str, Any]]]:
    """Rate limits on model calls."""
    path = f"{API}/workspaces/{_p(workspace_id)}/rate-limits"
    return Call(method="GET", path=path, shape=_objs)


def create_rate_limit(
    workspace_id: str,
    *,
    scope: str = "workspace",
    subject_id: str | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> Call[dict[str, Any]]:
    """Limit model calls' requests and/or tokens per minute."""
    body = {
        "scope": scope,
        "subject_id": subject_id,
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
    }
    path = f"{API}/workspaces/{_p(workspace_id)}/rate-limits"
    return Call(method="POST", path=path, json=body, shape=_obj)


def delete_rate_limit(workspace_id: str, limit_id: str) -> Call[None]:
    """Remove a rate limit."""
    path = f"{API}/workspaces/{_p(workspace_id)}/rate-limits/{_p(limit_id)}"
    return Call(method="DELETE", path=path, shape=_nothing)


def markup(workspace_id: str) -> Call[dict[str, Any]]:
    """The workspace's markup: price = cost × (1 + markup)."""
    return Call(method="GET", path=f"{API}/workspaces/{_p(workspace_id)}/markup", shape=_obj)


def set_markup(workspace_id: str, markup: str | float) -> Call[dict[str, Any]]:
    """Set the markup charged over providers' cost (owners)."""
    path = f"{API}/workspaces/{_p(workspace_id)}/markup"
    return Call(method="PUT", path=path, json={"markup": str(markup)}, shape=_obj)


def egress(workspace_id: str) -> Call[dict[str, Any]]:
    """The egress allowlist in effect for the workspace's http_request calls."""
    return Call(method="GET", path=f"{API}/workspaces/{_p(workspace_id)}/egress", shape=_obj)


def set_egress(
    workspace_id: str,
    *,
    hosts: Sequence[str] = (),
    networks: Sequence[str] = (),
    ports: Sequence[int] = (80, 443),
) -> Call[dict[str, Any]]:
    """Set the workspace's own allowlist, replacing the server's default (admins, owners)."""
    path = f"{API}/workspaces/{_p(workspace_id)}/egress"
    body = {"hosts": list(hosts), "networks": list(networks), "ports": list(ports)}
    return Call(method="PUT", path=path, json=body, shape=_obj)


def clear_egress(workspace_id: str) -> Call[None]:
    """Drop the workspace's own allowlist: the server's default applies again."""
    path = f"{API}/workspaces/{_p(workspace_id)}/egress"
    return Call(method="DELETE", path=path, shape=_nothing)


def providers_health(workspace_id: str | None = None) -> Call[dict[str, Any]]:
    """Each model's circuit breaker, error rate and latency percentiles."""
    params = _params(workspace=workspace_id)
    return Call(method="GET", path=f"{API}/providers/health", params=params, shape=_obj)


# memory


def store_memory(
    workspace_id: str, text: str, *, metadata: dict[str, Any] | None = None
) -> Call[dict[str, Any]]:
    """Remember a text in the workspace (what agents find with ``memory_search``)."""
    path = f"{API}/workspaces/{_p(workspace_id)}/memory"
    return Call(
        method="POST", path=path, json={"text": text, "metadata": metadata or {}}, shape=_obj
    )


def search_memory(
    workspace_id: str, query: str | None = None, *, limit: int = 20
) -> Call[list[dict[str, Any]]]:
    """The workspace's memories closest to ``query`` (with a score), or newest first without."""
    path = f"{API}/workspaces/{_p(workspace_id)}/memory"
    return Call(method="GET", path=path, params=_params(q=query, limit=limit), shape=_objs)


def delete_memory(workspace_id: str, memory_id: str) -> Call[None]:
    """Forget one memory."""
    path = f"{API}/workspaces/{_p(workspace_id)}/memory/{_p(memory_id)}"
    return Call(method="DELETE", path=path, shape=_nothing)


# artifacts


def artifacts(run_id: str) -> Call[list[dict[str, Any]]]:
    """The files a run's steps wrote (name, size, media type, sha256, step, url)."""
    return Call(method="GET", path=f"{API}/runs/{_p(run_id)}/artifacts", shape=_objs)


def download_artifact(run_id: str, name: str) -> Call[bytes]:
    """The bytes of one of a run's artifacts."""
    path = f"{API}/runs/{_p(run_id)}/artifacts/{quote(name, safe='/')}"
    return Call(method="GET", path=path, shape=bytes, raw=True)


# dead letters


def dead_letters(
    workspace_id: str, *, limit: int = 50, cursor: str | None = None
) -> Call[dict[str, Any]]:
    """Steps that failed for good, newest first: ``{"dead_letters": […], "next_cursor"}``."""
    path = f"{API}/workspaces/{_p(workspace_id)}/dead-letters"
    return Call(method="GET", path=path, params=_params(limit=limit, cursor=cursor), shape=_obj)


def redrive(step_id: str) -> Call[dict[str, Any]]:
    """Run a dead letter again; returns its root run, which continues from that step."""
    return Call(method="POST", path=f"{API}/dead-letters/{_p(step_id)}/redrive", shape=_obj)
