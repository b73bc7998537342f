"""Every state change of runs and steps, each a function run inside one transaction.

Rules that keep runs correct when processes die or messages repeat (DESIGN decisions 1, 2, 8):

* A step's result is written only if the step is still ``RUNNING`` at the attempt that produced
  it; anything else raises :class:`StaleClaim` and changes nothing.
* The run row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite has one writer) so that two
  steps finishing at once cannot both miss starting the step that needs them both.
* A step becomes ready in the same transaction that finished its last need. When the finishing
  worker has room it claims that step at once (no queue round trip); otherwise it is ``QUEUED``.
* Every change appends events to the run's log in the same transaction.

The parts live in one module each: ``runs``, ``claiming``, ``results``, ``human``, ``dag``,
``redrive``; shared state and helpers in ``_base``.
"""

from __future__ import annotations

from agentmill.engine.claims import Claim, StaleClaim
from agentmill.engine.transitions._base import NewRun, RunState, TransitionsBase, spec_loader
from agentmill.engine.transitions.claiming import ClaimTransitions
from agentmill.engine.transitions.dag import DagTransitions
from agentmill.engine.transitions.human import HumanTransitions
from agentmill.engine.transitions.redrive import RedriveTransitions
from agentmill.engine.transitions.results import ResultTransitions
from agentmill.engine.transitions.runs import RunTransitions


class Transitions(
    RunTransitions,
    ClaimTransitions,
    ResultTransitions,
    HumanTransitions,
    DagTransitions,
    RedriveTransitions,
    TransitionsBase,
):
    """The engine's transactions (see the module docstring)."""


__all__ = ["Claim", "NewRun", "RunState", "StaleClaim", "Transitions", "spec_loader"]
