"""Which package may import which: read from the source with ``ast``, so an import inside a
function or under ``if TYPE_CHECKING:`` counts as much as one at the top of a module.

- ``agentmill.domain`` is the bottom layer: only ``agentmill.errors`` besides itself.
- ``agentmill.store`` and ``agentmill.gateway`` stand on the domain and a few neutral modules,
  and never on each other (nor on the engine, the API or the CLI).
- The neutral modules (errors, ids, settings, credential crypto, the Redis pool) import only
  one another, so allowing them does not let anything else in through the back door.
- Nothing imports ``agentmill.api`` or ``agentmill.cli`` but themselves (and ``__main__``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

NEUTRAL = frozenset(
    {
        "agentmill.errors",
        "agentmill.ids",
        "agentmill.config",  # settings: the store opens its database from them
        "agentmill.secret_key",  # checks of AGENTMILL_SECRET_KEY, used by config
        "agentmill.crypto",  # provider credentials: sealed by the store, for the gateway
        "agentmill.redis_pool",  # one shared client for budgets and rate limits
    }
)

# Package (or module) -> what it may import of ours besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "agentmill.domain": frozenset({"agentmill.errors"}),
    "agentmill.store": frozenset(
        {"agentmill.domain", "agentmill.errors", "agentmill.ids", "agentmill.config"}
        | {"agentmill.crypto"}
    ),
    "agentmill.gateway": frozenset(
        {"agentmill.domain", "agentmill.errors", "agentmill.ids", "agentmill.config"}
        | {"agentmill.crypto", "agentmill.redis_pool"}
    ),
    **{name: NEUTRAL for name in NEUTRAL},
}

# Packages only they themselves (and these) may import.
PRIVATE: dict[str, frozenset[str]] = {
    "agentmill.api": frozenset({"agentmill.cli", "agentmill.__main__"}),
    "agentmill.cli": frozenset({"agentmill.api", "agentmill.__main__"}),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports (absolute)
    line: int


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path, package: str = "agentmill") -> Iterator[Import]:
    """Every import of ``package`` made by a module under ``root/package``."""
    for path in sorted((root / package).rglob("*.py")):
        module = _module_name(path, root)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    targets = [".".join([*base, *([node.module] if node.module else [])])]
                elif node.module:
                    targets = [node.module]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    yield Import(module, target, node.lineno)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _owner(module: str, names: Iterable[str]) -> str | None:
    """The most specific of ``names`` that ``module`` is, or is inside."""
    return next((n for n in sorted(names, key=len, reverse=True) if _within(module, n)), None)


def violations(root: Path) -> list[str]:
    """Each broken rule as ``module:line imports target``."""
    found = []
    for imp in imports(root):
        owner = _owner(imp.module, ALLOWED)
        may_import = {owner, *ALLOWED[owner]} if owner is not None else None
        if may_import is not None and not any(_within(imp.target, m) for m in may_import):
            found.append(f"{imp.module}:{imp.line} imports {imp.target}")
        private = _owner(imp.target, PRIVATE)
        may_be_used_by = {private, *PRIVATE[private]} if private is not None else None
        if may_be_used_by is not None and not any(_within(imp.module, m) for m in may_be_used_by):
            found.append(f"{imp.module}:{imp.line} imports {imp.target}")
    return found


def test_the_source_keeps_the_import_rules() -> None:
    assert list(imports(SRC)), "found no imports at all: is SRC right?"
    assert violations(SRC) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # the store on the gateway, under TYPE_CHECKING
            {
                "agentmill/store/x.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from agentmill.gateway.types import CallReport\n"
                )
            },
            ["agentmill.store.x:3 imports agentmill.gateway.types"],
        ),
        (  # the gateway on the store, inside a function
            {"agentmill/gateway/x.py": "def f():\n    import agentmill.store.db\n"},
            ["agentmill.gateway.x:2 imports agentmill.store.db"],
        ),
        (  # the domain on ids (not allowed) and on the engine, relatively
            {
                "agentmill/domain/__init__.py": "from ..ids import new_id\n",
                "agentmill/domain/x.py": "from ..engine import worker\n",
            },
            [
                "agentmill.domain:1 imports agentmill.ids",
                "agentmill.domain.x:1 imports agentmill.engine",
            ],
        ),
        (  # the engine on the API
            {"agentmill/engine/x.py": "from agentmill.api.app import create_app\n"},
            ["agentmill.engine.x:1 imports agentmill.api.app"],
        ),
        (  # a neutral module on the engine
            {"agentmill/config.py": "from agentmill.engine import Engine\n"},
            ["agentmill.config:1 imports agentmill.engine"],
        ),
    ],
)
def test_the_checker_finds_a_broken_rule(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    _write(tmp_path, files)
    assert violations(tmp_path) == expected


def test_the_checker_accepts_what_the_rules_allow(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "agentmill/store/x.py": "from agentmill.domain.usage import CallReport\n"
            "from agentmill.store import db\nfrom . import models\n",
            "agentmill/gateway/x.py": "from agentmill.crypto import decrypt\n",
            "agentmill/cli/x.py": "from agentmill.api.app import create_app\n",
            "agentmill/__main__.py": "from agentmill.cli import main\n",
            "agentmill/engine/x.py": "from agentmill.store.db import Database\n",
        },
    )
    assert violations(tmp_path) == []
