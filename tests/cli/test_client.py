"""`agentmill.client`: both clients, every method, against a real server on a loopback port.

The scenario is written once, in plain calls; it drives :class:`Client` directly and
:class:`AsyncClient` through :class:`Blocking`, which awaits each call on one event loop. The
server records the requests it serves, so the scenario also proves it reached every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from agentmill.api.app import create_app
from agentmill.api.routes.auth import REGISTERED
from agentmill.client import ApiError, AsyncClient, Client
from agentmill.client import _endpoints as endpoints
from agentmill.config import Settings
from tests.servers import serving

PASSWORD = "correct horse battery"

GREET = """
name: greet
description: {description}
inputs:
  who: {{type: string}}
agents:
  writer:
    model: scripted/writer
    options: {{reply: buzz, price: {{input: 1, output: 2}}}}
steps:
  - id: greet
    agent: writer
    prompt: "Say hello to {{{{ inputs.who }}}}."
outputs:
  who: "{{{{ inputs.who }}}}"
  said: "{{{{ steps.greet.output }}}}"
"""

APPROVAL = {
    "name": "approval",
    "steps": [
        {"id": "review", "type": "human", "message": "Ship it?", "on_reject": "fail"},
        {"id": "after", "needs": ["review"], "value": "{{ steps.review.output }}"},
    ],
    "outputs": {"review": "{{ steps.after.output }}"},
}

FORM = {
    "name": "form",
    "steps": [
        {
            "id": "ask",
            "type": "human",
            "form": {"type": "object", "properties": {"n": {"type": "integer"}}},
        }
    ],
    "outputs": {"n": "{{ steps.ask.output.n }}", "comment": "{{ steps.ask.output.comment }}"},
}

WRITES = """
name: writes
agents:
  m:
    model: scripted/m
    tools: [artifact_write]
    options:
      replies:
        - tool_calls: [{name: artifact_write, arguments: {name: notes/today.txt, content: hello}}]
        - done
steps:
  - id: make
    agent: m
    prompt: x
"""
BROKEN = "name: broken\nsteps:\n  - id: a\n    value: 1\n  - id: a\n    value: [\n"


@dataclass
class Recorder:
    """The app, noting each HTTP request it serves."""

    app: FastAPI
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)

    def missed_routes(self) -> list[str]:
        """HTTP routes of the API that no request reached."""
        return [
            f"{method} {route.path}"
            for route in self.app.routes
            if isinstance(route, APIRoute) and route.include_in_schema
            for method in sorted(route.methods)
            if not any(m == method and route.path_regex.match(p) for m, p in self.seen)
        ]


@dataclass
class Server:
    url: str
    recorder: Recorder


@contextlib.contextmanager
def serve(database_url: str) -> Iterator[Server]:
    """A real server (uvicorn, embedded worker) in a thread, on a free loopback port."""
    # The workspace provider registered below points at loopback, which takes the operator's
    # permission (tests/api/test_egress.py covers the refusal).
    with tempfile.TemporaryDirectory(prefix="agentmill-artifacts-") as artifacts:
        settings = Settings(
            poll_interval=0.05,
            artifacts_dir=Path(artifacts),
            allow_private_provider_urls=True,
        )
        app = create_app(settings, database_url=database_url)
        recorder = Recorder(app)
        with serving(recorder) as url:
            yield Server(url, recorder)


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    """On SQLite and on PostgreSQL."""
    with serve(database_url) as running:
        yield running


@pytest.fixture
def sqlite_server(sqlite_url: str) -> Iterator[Server]:
    with serve(sqlite_url) as running:
        yield running


class Blocking:
    """An :class:`AsyncClient` called like a :class:`Client`: each call is awaited on one event
    loop, and an async iterator (``events``, ``iter_runs``) is read to the end into a list."""

    def __init__(self, client: AsyncClient, runner: asyncio.Runner) -> None:
        self._client = client
        self._runner = runner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.iscoroutine(result):
                return self._runner.run(result)
            assert isinstance(result, AsyncIterator), name
            return self._runner.run(_collect(result))

        return call


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


Connect = Callable[..., Any]  # (url, api_key=..., token=...) -> a client


@pytest.fixture(params=["Client", "AsyncClient"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """Opens clients of one flavour (closing them at the end of the test)."""
    opened: list[Any] = []
    if request.param == "Client":

        def make_sync(url: str, **credential: str) -> Client:
            opened.append(Client(url, **credential))
            return opened[-1]

        yield make_sync
        for client in opened:
            client.close()
        return
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:

        def make_async(url: str, **credential: str) -> Blocking:
            opened.append(AsyncClient(url, **credential))
            return Blocking(opened[-1], runner)

        yield make_async
        for client in opened:
            runner.run(client.aclose())


def _raises(status: int, code: str, call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    assert (caught.value.status, caught.value.code) == (status, code), caught.value
    return caught.value


def test_every_method_against_a_real_server(server: Server, connect: Connect) -> None:
    am = connect(server.url)
    health = am.health()
    assert (health["status"], health["database"], health["worker"]) == ("ok", "ok", "running")

    # accounts: register, log in (the client keeps the token), who am I
    email = f"ana-{uuid.uuid4().hex[:10]}@example.com"
    # the same answer whether the address had an account or not: who has one is not told
    assert am.register(email, "Ana", PASSWORD) == {"message": REGISTERED}
    _raises(401, "not_authenticated", am.me)
    _raises(401, "not_authenticated", lambda: am.login(email, "wrong password"))
    token = am.login(email, PASSWORD)
    ana = am.me()
    assert (ana["email"], ana["name"]) == (email, "Ana")

    # workspaces
    ws = am.create_workspace("Acme")
    assert ws["role"] == "owner"
    wsid = ws["id"]
    assert [w["id"] for w in am.workspaces()] == [wsid]
    assert am.rename_workspace(wsid, "Acme Labs")["name"] == "Acme Labs"
    assert am.workspace(wsid)["name"] == "Acme Labs"
    spare = am.create_workspace("Spare")
    assert am.delete_workspace(spare["id"]) is None
    _raises(404, "not_found", lambda: am.workspace(spare["id"]))

    # members
    bob_email = f"bob-{uuid.uuid4().hex[:10]}@example.com"
    assert am.register(bob_email, "Bob", PASSWORD) == {"message": REGISTERED}
    added = am.add_member(wsid, bob_email, "viewer")
    bob = {"id": added["user_id"]}
    assert added["role"] == "viewer"
    assert am.change_member_role(wsid, bob["id"], "admin") is None
    roles = {m["user_id"]: m["role"] for m in am.members(wsid)}
    assert roles == {ana["id"]: "owner", bob["id"]: "admin"}
    assert am.remove_member(wsid, bob["id"]) is None
    assert [m["user_id"] for m in am.members(wsid)] == [ana["id"]]
    _raises(409, "conflict", lambda: am.remove_member(wsid, ana["id"]))  # the last owner

    # API keys: the secret works until it is revoked
    key = am.create_api_key(wsid, "ci", "member")
    assert key["role"] == "member"
    assert key["key"].startswith("am_")
    keyed = connect(server.url, api_key=key["key"])
    assert [w["id"] for w in keyed.workspaces()] == [wsid]
    listed_keys = am.api_keys(wsid)
    assert [k["id"] for k in listed_keys] == [key["id"]]
    assert "key" not in listed_keys[0]
    assert am.revoke_api_key(wsid, key["id"]) is None
    assert am.api_keys(wsid)[0]["revoked_at"] is not None
    _raises(401, "not_authenticated", keyed.workspaces)

    # the workspace's own providers: the key is write-only
    secret = f"sk-client-{uuid.uuid4().hex}"
    made = am.create_provider(
        wsid, "mine", "openai_compatible", base_url="http://127.0.0.1:9/v1", api_key=secret
    )
    assert (made["name"], made["kind"], made["has_api_key"], made["timeout"]) == (
        "mine",
        "openai_compatible",
        True,
        60.0,
    )
    other = am.create_provider(
        wsid, "box", "ollama", base_url="http://127.0.0.1:11434", timeout=5, headers={"X-A": "1"}
    )
    assert (other["has_api_key"], other["timeout"], other["headers"]) == (False, 5.0, {"X-A": "1"})
    assert [p["name"] for p in am.providers(wsid)] == ["box", "mine"]
    assert am.provider(wsid, "mine") == made
    changed = am.update_provider(wsid, "box", api_key="sk-box", timeout=7)
    assert (changed["has_api_key"], changed["timeout"]) == (True, 7.0)
    assert am.update_provider(wsid, "box", api_key=None)["has_api_key"] is False
    invalid_provider = _raises(
        422, "validation_error", lambda: am.update_provider(wsid, "mine", api_key=None)
    )
    assert invalid_provider.details[0]["field"] == "api_key"
    assert am.delete_provider(wsid, "box") is None
    _raises(404, "not_found", lambda: am.provider(wsid, "box"))
    assert secret not in str(am.providers(wsid))

    # workflows: push creates, pushing again adds a version, an identical one does not
    first = am.push_workflow(wsid, GREET.format(description="first"))
    assert (first["name"], first["latest_version"]) == ("greet", 1)
    second = am.push_workflow(wsid, GREET.format(description="second"))
    assert (second["id"], second["latest_version"]) == (first["id"], 2)
    wfid = first["id"]
    same = am.update_workflow(wfid, GREET.format(description="second"))
    assert same["latest_version"] == 2
    versions = am.versions(wfid)
    assert [(v["version"], v["spec"]["description"]) for v in versions] == [
        (1, "first"),
        (2, "second"),
    ]
    assert am.workflow(wfid)["spec"]["description"] == "second"
    _raises(409, "conflict", lambda: am.create_workflow(wsid, GREET.format(description="x")))
    approval = am.create_workflow(wsid, APPROVAL)  # a dict goes as JSON
    assert approval["name"] == "approval"
    assert sorted(w["name"] for w in am.workflows(wsid)) == ["approval", "greet"]
    doomed = am.create_workflow(wsid, {"name": "doomed", "steps": [{"id": "a", "value": 1}]})
    assert am.delete_workflow(doomed["id"]) is None
    _raises(404, "not_found", lambda: am.workflow(doomed["id"]))
    invalid = _raises(422, "invalid_workflow", lambda: am.push_workflow(wsid, BROKEN))
    assert invalid.details
    assert all(isinstance(problem["line"], int) for problem in invalid.details)

    # a run of version 1 with inputs: wait, steps, metrics, events
    started = am.start_run(wfid, {"who": "bees"}, version=1)
    assert started["version_id"] == versions[0]["id"]
    done = am.wait(started["id"], timeout=20)
    assert done["status"] == "COMPLETED"
    assert done["outputs"] == {"who": "bees", "said": "buzz"}
    assert [(s["key"], s["status"]) for s in am.steps(started["id"])] == [("greet", "SUCCEEDED")]
    metrics = am.metrics(started["id"])
    assert [s["key"] for s in metrics["steps"]] == ["greet"]
    assert Decimal(metrics["cost"]) == Decimal(done["cost"]) > 0
    events = list(am.events(started["id"]))
    assert events[0]["type"] == "run.created"
    assert events[-1]["type"] == "run.completed"
    resumed = list(am.events(started["id"], after=events[1]["id"]))
    assert [e["id"] for e in resumed] == [e["id"] for e in events[2:]]
    llm = list(am.events(started["id"], source="llm"))
    assert [(e["type"], e["data"]["model"]) for e in llm] == [("llm.call", "scripted/writer")]
    latest = am.start_run(wfid, {"who": "ants"})
    assert latest["version_id"] == versions[1]["id"]
    assert am.wait(latest["id"], timeout=20)["outputs"]["who"] == "ants"
    _raises(422, "invalid_inputs", lambda: am.start_run(wfid, {}))

    # human steps: approve (with a payload), reject, decide; cancel a waiting run
    decided = {}
    for how in ("approve", "reject", "decide"):
        run = am.start_run(approval["id"])
        assert am.wait(run["id"], timeout=20)["status"] == "WAITING"
        assert {s["key"]: s["status"] for s in am.steps(run["id"])}["review"] == "WAITING"
        if how == "approve":
            am.approve(run["id"], "review", comment="ship it", payload={"channel": "blog"})
        elif how == "reject":
            am.reject(run["id"], "review", comment="not yet")
        else:
            am.decide(run["id"], "review", approved=True)
        decided[how] = am.wait(run["id"], timeout=20)
    review = decided["approve"]["outputs"]["review"]
    assert (review["approved"], review["comment"], review["channel"]) == (True, "ship it", "blog")
    assert review["by"] == email
    assert decided["decide"]["outputs"]["review"]["approved"] is True
    rejected = decided["reject"]
    assert (rejected["status"], rejected["error"]) == (
        "FAILED",
        f"step 'review' was rejected by {email}: not yet",
    )
    problems = list(am.events(rejected["id"], level=["warning", "error"]))
    assert "step.failed" in [e["type"] for e in problems]
    assert {e["level"] for e in problems} <= {"warning", "error"}
    waiting = am.start_run(approval["id"])
    assert am.wait(waiting["id"], timeout=20)["status"] == "WAITING"
    assert am.cancel(waiting["id"])["status"] == "CANCELLED"
    assert [e["type"] for e in am.events(waiting["id"])][-1] == "run.cancelled"
    _raises(409, "conflict", lambda: am.approve(waiting["id"], "review"))

    # listing runs: pages, filters, and every page in turn
    everything = am.runs(wsid, limit=200)
    assert everything["next_cursor"] is None
    newest_first = [r["id"] for r in everything["runs"]]
    assert len(newest_first) == 6
    assert newest_first[-1] == started["id"]
    page = am.runs(wsid, limit=2)
    following = am.runs(wsid, limit=2, cursor=page["next_cursor"])
    assert [r["id"] for r in page["runs"] + following["runs"]] == newest_first[:4]
    assert [r["id"] for r in am.iter_runs(wsid, page_size=1)] == newest_first
    assert [r["id"] for r in am.iter_runs(wsid, workflow_id=wfid, page_size=1)] == [
        latest["id"],
        started["id"],
    ]
    assert [r["id"] for r in am.runs(wsid, status="CANCELLED")["runs"]] == [waiting["id"]]
    assert [r["id"] for r in am.runs(wsid, status="FAILED")["runs"]] == [rejected["id"]]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert am.runs(wsid, created_after=future)["runs"] == []
    assert len(am.runs(wsid, created_before=future)["runs"]) == 6

    # usage: the two greet runs made one priced model call each
    usage = am.usage(wsid)
    assert usage["total"]["calls"] == 2
    assert Decimal(usage["total"]["cost"]) == Decimal(done["cost"]) + Decimal(
        am.run(latest["id"])["cost"]
    )
    assert [(line["key"], line["calls"]) for line in usage["by_model"]] == [("scripted/writer", 2)]
    assert am.usage(wsid, since=future, until=future + timedelta(days=1))["total"]["calls"] == 0
    _raises(422, "validation_error", lambda: am.usage(wsid, since=future, until=future))

    # spending controls: a budget that already shows what was spent, limits, markup, health
    budget = am.create_budget(wsid, "5", period="monthly")
    assert Decimal(budget["spent_usd"]) == Decimal(usage["total"]["price"])
    keyed = am.create_budget(wsid, 1, scope="api_key", period="daily", soft_ratio=0.5)
    assert keyed["spent_usd"] is None  # a budget of each key has no single total
    assert [b["id"] for b in am.budgets(wsid)] == sorted([budget["id"], keyed["id"]])
    assert am.delete_budget(wsid, keyed["id"]) is None
    _raises(404, "not_found", lambda: am.delete_budget(wsid, keyed["id"]))
    _raises(422, "validation_error", lambda: am.create_budget(wsid, 1, subject_id="x"))
    limit = am.create_rate_limit(wsid, scope="user", requests_per_minute=60)
    assert am.rate_limits(wsid) == [limit]
    assert am.delete_rate_limit(wsid, limit["id"]) is None
    assert am.rate_limits(wsid) == []
    assert am.set_markup(wsid, "0.25") == {"workspace_id": wsid, "markup": "0.25"}
    assert Decimal(am.markup(wsid)["markup"]) == Decimal("0.25")

    # egress: the server's default until the workspace sets its own, refused entries named
    assert am.egress(wsid)["source"] == "operator"
    own = am.set_egress(wsid, hosts=["api.example.com"], ports=[443])
    assert (own["source"], own["hosts"], own["ports"]) == ("workspace", ["api.example.com"], [443])
    assert am.egress(wsid) == own
    _raises(422, "validation_error", lambda: am.set_egress(wsid, networks=["10.0.0.1/8"]))
    assert am.clear_egress(wsid) is None
    assert am.egress(wsid)["source"] == "operator"
    health = am.providers_health(wsid)  # figures are the workspace's own calls
    assert "scripted" in health["providers"]
    assert [m["model"] for m in health["models"] if m["provider"] == "scripted"] == ["writer"]
    assert am.providers_health()["providers"] == health["providers"]
    assert am.providers_health()["models"] == []  # no one's figures but an operator's

    # memory: stored, found by words (no embedding model here), listed newest first, forgotten
    bees = am.store_memory(wsid, "bees make honey", metadata={"topic": "bees"})
    kettle = am.store_memory(wsid, "the kettle boils water")
    assert [(m["id"], m["metadata"]) for m in am.search_memory(wsid, "honey", limit=5)] == [
        (bees["id"], {"topic": "bees"})
    ]
    assert [m["id"] for m in am.search_memory(wsid)] == [kettle["id"], bees["id"]]
    assert am.delete_memory(wsid, bees["id"]) is None
    _raises(404, "not_found", lambda: am.delete_memory(wsid, bees["id"]))

    # a form: a bad answer is refused with where it is wrong; a good one becomes the output
    forms_ws = am.create_workspace("Forms")["id"]
    form = am.create_workflow(forms_ws, FORM)
    asked = am.start_run(form["id"])
    assert am.wait(asked["id"], timeout=20)["status"] == "WAITING"
    refused = _raises(422, "invalid_answer", lambda: am.respond(asked["id"], "ask", {"n": "x"}))
    assert refused.details == {"path": "$.n"}
    assert am.respond(asked["id"], "ask", {"n": 3}, comment="three")["id"] == asked["id"]
    answered = am.wait(asked["id"], timeout=20)
    assert answered["outputs"] == {"n": 3, "comment": "three"}

    # artifacts: what a run's agent wrote, listed and downloaded byte for byte
    files = am.push_workflow(wsid, WRITES)
    wrote = am.start_run(files["id"])
    assert am.wait(wrote["id"], timeout=20)["status"] == "COMPLETED"
    (listed,) = am.artifacts(wrote["id"])
    assert (listed["name"], listed["size"], listed["step"]) == ("notes/today.txt", 5, "make")
    assert am.download_artifact(wrote["id"], "notes/today.txt") == b"hello"
    _raises(404, "not_found", lambda: am.download_artifact(wrote["id"], "nope.txt"))

    # unknown ids, then logging out ends the token for everyone holding it
    _raises(404, "not_found", lambda: am.run("run_doesnotexist"))
    _raises(404, "not_found", lambda: list(am.events("run_doesnotexist")))
    same_login = connect(server.url, token=token)
    assert same_login.me()["id"] == ana["id"]
    assert am.logout() is None
    _raises(401, "not_authenticated", am.me)
    _raises(401, "not_authenticated", same_login.me)

    assert server.recorder.missed_routes() == []


async def test_the_async_client_natively(sqlite_server: Server) -> None:
    server = sqlite_server
    """``async with``, awaited calls and ``async for`` over the streams."""
    async with AsyncClient(server.url) as am:
        email = f"cy-{uuid.uuid4().hex[:10]}@example.com"
        await am.register(email, "Cy", PASSWORD)
        await am.login(email, PASSWORD)
        ws = (await am.create_workspace("Async"))["id"]
        workflow = await am.push_workflow(ws, GREET.format(description="async"))
        runs = [await am.start_run(workflow["id"], {"who": str(n)}) for n in range(3)]
        assert (await am.wait(runs[0]["id"], timeout=20))["status"] == "COMPLETED"
        types = [event["type"] async for event in am.events(runs[0]["id"])]
        assert types[0] == "run.created"
        assert types[-1] == "run.completed"
        async with contextlib.aclosing(am.iter_runs(ws, page_size=2)) as listed:
            seen = [run["id"] async for run in listed]
        assert seen == [r["id"] for r in reversed(runs)]
        with pytest.raises(ApiError) as caught:
            await am.run("run_doesnotexist")
        assert caught.value.status == 404


def test_iterators_stop_early_and_read_lazily(sqlite_server: Server) -> None:
    server = sqlite_server
    with Client(server.url) as am:
        email = f"di-{uuid.uuid4().hex[:10]}@example.com"
        am.register(email, "Di", PASSWORD)
        am.login(email, PASSWORD)
        ws = am.create_workspace("Lazy")["id"]
        workflow = am.push_workflow(ws, GREET.format(description="lazy"))
        for n in range(3):
            am.start_run(workflow["id"], {"who": str(n)})
        before = len(server.recorder.seen)
        pages = am.iter_runs(ws, page_size=1)
        assert len(server.recorder.seen) == before  # nothing asked yet
        assert next(pages)["inputs"] == {"who": "2"}
        pages.close()


def _public(cls: type) -> dict[str, Any]:
    return {name: value for name, value in vars(cls).items() if not name.startswith("_")}


def test_both_clients_have_the_same_methods_with_the_same_signatures() -> None:
    sync, asynchronous = _public(Client), _public(AsyncClient)
    assert set(sync) == set(asynchronous) - {"aclose"}
    for name, method in sync.items():
        assert inspect.signature(method) == inspect.signature(asynchronous[name]), name
        assert method.__doc__ == asynchronous[name].__doc__, name
        assert not inspect.iscoroutinefunction(method), name
        streams = name in ("events", "iter_runs")
        assert inspect.iscoroutinefunction(asynchronous[name]) is not streams, name
    declared = {
        name
        for name, fn in vars(endpoints).items()
        if inspect.isfunction(fn) and fn.__module__ == endpoints.__name__ and name[0] != "_"
    }
    assert declared == set(sync) - {"close"}  # every endpoint, on both clients
    with Client("http://127.0.0.1:9") as client:  # bound methods read like the endpoints
        assert str(inspect.signature(client.wait)) == (
            "(run_id: str, *, timeout: float = 600, poll: float = 0.2)"
        )
