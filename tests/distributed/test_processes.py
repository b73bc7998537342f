"""Distributed mode end to end: `agentmill api` serves, `agentmill worker` runs the steps, on
one PostgreSQL database; the client drives it and /health sees the worker."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from agentmill.client import Client
from tests.cli.test_up import free_port, start_up, stop
from tests.distributed.conftest import Workers

pytestmark = pytest.mark.slow

FLOW = """
name: hello
inputs:
  who: {type: string}
agents:
  a: {model: scripted/a, options: {reply: "hello {{ prompt }}"}}
steps:
  - {id: greet, agent: a, prompt: "{{ inputs.who }}"}
outputs:
  greeting: "{{ steps.greet.output }}"
"""


def test_an_api_process_and_a_worker_process_run_a_workflow(
    workdir: Path, fresh_pg: str, workers: Workers
) -> None:
    port = free_port()
    api, first = start_up(workdir, port, "--db", fresh_pg, command="api")
    base = f"http://127.0.0.1:{port}"
    try:
        with Client(base, api_key=first["API key"]) as client:
            workflow = client.push_workflow(first["workspace"], FLOW)
            run = client.start_run(workflow["id"], {"who": "bees"})
            time.sleep(0.5)
            assert client.run(run["id"])["status"] == "PENDING"  # nobody runs steps yet
            health = httpx.get(f"{base}/health").json()
            assert health["worker"] == "off"
            assert health["queue"]["ready"] == 1

            workers.start("w1")
            finished = client.wait(run["id"], timeout=30)

            assert finished["status"] == "COMPLETED"
            assert finished["outputs"] == {"greeting": "hello bees"}
            alive = httpx.get(f"{base}/health").json()["workers"]
            assert alive["alive"] == 1
            assert alive["processes"][0]["name"] == "w1"
    finally:
        stop(api)


ROUTED = """
name: routed
agents:
  a: {model: scripted/a, options: {reply: "done"}}
steps:
  - {id: prep, agent: a, prompt: p}
  - {id: infer, agent: a, prompt: i, needs: [prep], queue: gpu}
outputs:
  out: "{{ steps.infer.output }}"
"""


def test_a_worker_process_serves_only_the_queues_named_with_queue(
    workdir: Path, fresh_pg: str, workers: Workers
) -> None:
    port = free_port()
    api, first = start_up(workdir, port, "--db", fresh_pg, command="api")
    base = f"http://127.0.0.1:{port}"
    try:
        with Client(base, api_key=first["API key"]) as client:
            workflow = client.push_workflow(first["workspace"], ROUTED)
            run = client.start_run(workflow["id"], {})
            workers.start("cpu")
            for _ in range(200):
                steps = {s["key"]: s for s in client.steps(run["id"])}
                if steps.get("prep", {}).get("status") == "SUCCEEDED" and "infer" in steps:
                    break
                time.sleep(0.1)
            time.sleep(0.6)
            steps = {s["key"]: s for s in client.steps(run["id"])}
            assert steps["infer"]["status"] == "QUEUED"  # the cpu worker does not serve gpu

            workers.start("gpu", "--queue", "gpu", "-q", "gpu-2")
            finished = client.wait(run["id"], timeout=30)
            assert finished["status"] == "COMPLETED"
            assert finished["outputs"] == {"out": "done"}
            processes = httpx.get(f"{base}/health").json()["workers"]["processes"]
            assert {p["name"]: p["queues"] for p in processes} == {
                "cpu": ["default"],
                "gpu": ["gpu", "gpu-2"],
            }
        assert "queues gpu, gpu-2" in workers.log("gpu")
    finally:
        stop(api)
