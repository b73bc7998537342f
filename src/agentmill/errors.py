"""The AgentMill exception tree.

::

    AgentMillError
    ├── ConfigError            a mistake in configuration or use; reported to the person at once
    │   ├── UnknownModel       a model name no configured provider serves
    │   └── InvalidArtifact    an artifact name, media type or size that cannot be stored
    ├── SpecError              a workflow spec is invalid; carries every problem found
    ├── NotFound               a workflow, run or step does not exist (or is another tenant's)
    ├── Conflict               the request does not fit the current state (approve a finished step)
    ├── NotAuthenticated       no valid credentials (missing, wrong, expired or revoked)
    ├── PermissionDenied       authenticated, but the role does not allow this
    └── StepError              raised while a step executes
        ├── RetryableError     transient: timeouts, 429, 5xx, lost connections; retried with backoff
        │   ├── RateLimited    our own rate limit is full; retry after ``retry_after`` seconds
        │   └── StoreUnavailable  the budget or rate-limit store cannot be reached; call refused
        └── StepFailed         terminal for the step (4xx, bad template, invalid output)
            └── BudgetExceeded a budget would be overspent; ends the run BUDGET_EXCEEDED

Errors from a provider carry the upstream HTTP ``status`` when there was one.

HTTP status codes are chosen in ``api/`` only; nothing here knows about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentMillError(Exception):
    """Base of every error AgentMill raises on purpose."""


class ConfigError(AgentMillError):
    """Configuration or usage is wrong; the message says what to change."""


class NotFound(AgentMillError):
    """The named object does not exist (or is not visible to the caller)."""


class Conflict(AgentMillError):
    """The operation does not apply to the object's current state."""


class NotAuthenticated(AgentMillError):
    """No valid credentials came with the request."""


class PermissionDenied(AgentMillError):
    """The caller's role in the workspace does not allow the operation."""


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One problem in a workflow spec, located as precisely as the source allows."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = self.source or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class SpecError(AgentMillError):
    """A workflow spec is invalid. ``problems`` lists every problem found, in source order."""

    def __init__(self, problems: list[Problem]) -> None:
        order = {source: i for i, source in enumerate(dict.fromkeys(p.source for p in problems))}
        self.problems = sorted(
            problems, key=lambda p: (order[p.source], p.line or 0, p.column or 0, p.path)
        )
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in workflow spec"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in self.problems))


class StepError(AgentMillError):
    """Raised while a step executes."""


class UnknownModel(ConfigError):
    """No configured provider serves the named model."""


class InvalidArtifact(ConfigError):
    """An artifact cannot be stored as asked (unsafe name, bad media type, too large)."""


class RetryableError(StepError):
    """A transient failure; the engine retries the step with backoff."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class RateLimited(RetryableError):
    """A rate limit of ours is full: HTTP callers get 429, steps are retried after the wait."""


class StoreUnavailable(RetryableError):
    """The store that budgets or rate limits are checked in cannot be reached, so the call was
    refused (fail closed). A step waits for it to come back rather than failing
    (engine/context.py); an HTTP caller gets 503 and retries."""


class StepFailed(StepError):
    """A terminal failure of one step; retrying would not help."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BudgetExceeded(StepFailed):
    """A call would overspend a budget. Ends the run with status BUDGET_EXCEEDED."""
