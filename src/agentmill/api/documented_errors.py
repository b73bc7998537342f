"""The error answers every route documents in the OpenAPI schema, so that generated clients and
schema checkers know what can come back besides success.

Each route under ``/api/v1`` may answer any of these; the body is always ``{"error": {...}}``
(see ``api/errors.py``). The OpenAI-compatible routes under ``/v1`` are left out of this schema:
OpenAI's own documents them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: not_found, validation_error, ...")
    message: str = Field(description="What went wrong, for a person.")
    details: Any = Field(default=None, description="Per-field problems, ids, limits, or null.")


class ErrorBody(BaseModel):
    """Every failure of the AgentMill API."""

    error: ErrorDetail


_WHY = {
    400: "The request cannot be honoured as given (a bad parameter or setting).",
    401: "No credentials, or wrong ones: sign in or send a valid API key.",
    403: "Signed in, but your role in this workspace does not allow it.",
    404: "No such object in your workspaces (another tenant's objects are not found either).",
    409: "The object's state does not allow it now, or it already exists.",
    413: "The request body is larger than the server accepts.",
    422: "The body, a parameter or a workflow is invalid; details name each field.",
    429: "Too many requests: wait for Retry-After.",
    503: "The store is unavailable for now; retry.",
}

_API_STATUSES = (400, 401, 403, 404, 409, 413, 422, 429, 503)
_OPS_STATUSES = (403, 503)


def _responses(statuses: tuple[int, ...], model: type[BaseModel]) -> dict[int | str, Any]:
    return {status: {"model": model, "description": _WHY[status]} for status in statuses}


API_ERRORS = _responses(_API_STATUSES, ErrorBody)
OPS_ERRORS = _responses(_OPS_STATUSES, ErrorBody)
