"""CLI start-up: each command timed as a fresh subprocess, and what its imports cost.

Times `python -c pass` (the floor), `agentmill --help`, `agentmill validate FILE` and an
`agentmill run` of a 5-step workflow (four parallel 1 s steps, then a 1 s join) on a new and on
an existing SQLite database. Prints median and best wall time against the targets, then the
heaviest imports of each command (from ``python -X importtime``), summed by top-level package.

    python bench/startup.py [--repeat N] [--top N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

AGENTMILL = [sys.executable, "-m", "agentmill"]

FLOW = """\
name: bench-startup
agents:
  m: {model: scripted/bench, options: {reply: ok, latency: 1}}
steps:
  - {id: a, agent: m, prompt: a}
  - {id: b, agent: m, prompt: b}
  - {id: c, agent: m, prompt: c}
  - {id: d, agent: m, prompt: d}
  - {id: join, needs: [a, b, c, d], agent: m, prompt: join}
outputs:
  answer: "{{ steps.join.output }}"
"""


def commands(folder: Path) -> list[tuple[str, list[str], float | None]]:
    """(label, argv, target seconds); a NEW database is a new file for each run."""
    flow = str(folder / "flow.yaml")
    db = f"sqlite:///{folder / 'bench.db'}"
    return [
        ("python -c pass", [sys.executable, "-c", "pass"], None),
        ("agentmill --help", [*AGENTMILL, "--help"], 0.25),
        ("agentmill validate FILE", [*AGENTMILL, "validate", flow], 0.4),
        ("agentmill run (new db)", [*AGENTMILL, "run", flow, "--json", "--db", "NEW"], 2.6),
        ("agentmill run (existing db)", [*AGENTMILL, "run", flow, "--json", "--db", db], 2.6),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AGENTMILL_DATABASE_URL", None)
    # A user's Python caches bytecode; with this set (as in some CI images) every start would
    # compile our sources again and time the compiler, not the command.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _argv(argv: list[str], folder: Path, i: int) -> list[str]:
    return [f"sqlite:///{folder / f'new-{i}.db'}" if a == "NEW" else a for a in argv]


def time_command(argv: list[str], folder: Path, repeat: int) -> list[float]:
    times = []
    for i in range(repeat + 1):
        started = time.perf_counter()
        done = subprocess.run(_argv(argv, folder, i), env=_env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        if i:  # the first one warms the OS file cache and writes the bytecode
            times.append(elapsed)
    return times


def import_costs(argv: list[str]) -> Counter[str]:
    """Seconds of import time (self, not cumulative) per top-level package."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]] if argv[0] == sys.executable else argv,
        env=_env(),
        capture_output=True,
        text=True,
    )
    costs: Counter[str] = Counter()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in line[12:].split("|"))
        top = name.split(".")[0]
        costs["agentmill." + name.split(".")[1] if top == "agentmill" and "." in name else top] += (
            int(self_us) / 1e6
        )
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="heaviest packages shown per command")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="agentmill-startup-"))
    (folder / "flow.yaml").write_text(FLOW)
    rows = []
    for label, argv, target in commands(folder):
        times = time_command(argv, folder, args.repeat)
        costs = import_costs(_argv(argv, folder, 1000))
        rows.append(
            {
                "command": label,
                "median_s": round(statistics.median(times), 3),
                "best_s": round(min(times), 3),
                "target_s": target,
                "imports_s": round(sum(costs.values()), 3),
                "heaviest": [(name, round(s, 3)) for name, s in costs.most_common(args.top)],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'command':30} {'median':>8} {'best':>8} {'target':>8} {'imports':>8}")
    for row in rows:
        target = f"{row['target_s']:.2f}" if row["target_s"] else "-"
        verdict = (
            ""
            if not row["target_s"]
            else (" ok" if row["median_s"] <= row["target_s"] else " SLOW")
        )
        print(
            f"{row['command']:30} {row['median_s']:8.3f} {row['best_s']:8.3f} {target:>8} "
            f"{row['imports_s']:8.3f}{verdict}"
        )
    print("\nheaviest imports (self time, summed by package):")
    for row in rows[1:]:
        heaviest = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in row["heaviest"])
        print(f"  {row['command']}: {heaviest}")


if __name__ == "__main__":
    main()
