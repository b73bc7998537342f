"""How long a big workflow takes to validate: chains in order and reversed, a wide fan-in.

    .venv/bin/python bench/validation.py [--steps 20000]

Validation runs in the API process for every workflow saved, so it must stay close to linear
in the number of steps (a 20,000-step workflow in at most 1 s).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

from agentmill.domain.source import Positions
from agentmill.domain.validation import parse_spec


def chain(n: int, *, reverse: bool = False) -> dict[str, Any]:
    steps = [
        {
            "id": f"s{i}",
            "type": "template",
            "value": f"{{{{ steps.s{i - 1}.output }}}}" if i else "start",
            **({"needs": [f"s{i - 1}"]} if i else {}),
        }
        for i in range(n)
    ]
    return {"name": "chain", "steps": steps[::-1] if reverse else steps}


def fan_in(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"id": f"s{i}", "type": "template", "value": "x"} for i in range(n - 1)
    ]
    steps.append(
        {"id": "join", "type": "template", "value": "done", "needs": [s["id"] for s in steps]}
    )
    return {"name": "fan-in", "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    # The document caps (1 MiB, 100,000 values) apply before this: time validation itself.
    print(f"{'workflow':<24} {'steps':>7} {'MB of JSON':>10} {'validate s':>11}")
    for name, spec in (
        ("chain", chain(args.steps)),
        ("chain, reverse order", chain(args.steps, reverse=True)),
        ("fan-in", fan_in(args.steps)),
    ):
        text = json.dumps(spec, separators=(",", ":"))
        started = time.perf_counter()
        parse_spec(json.loads(text), Positions(source=name))
        took = time.perf_counter() - started
        print(f"{name:<24} {args.steps:>7,} {len(text) / 1e6:>10.2f} {took:>11.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB  (target: 20,000 steps in <= 1 s)")


if __name__ == "__main__":
    main()
