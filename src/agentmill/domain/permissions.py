"""Roles and what each may do: the one permission table."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Permission(StrEnum):
    WORKFLOW_CREATE = "workflow:create"
    WORKFLOW_READ = "workflow:read"
    WORKFLOW_UPDATE = "workflow:update"
    WORKFLOW_DELETE = "workflow:delete"
    WORKFLOW_EXECUTE = "workflow:execute"
    RUN_CANCEL = "run:cancel"
    RUN_APPROVE = "run:approve"
    WORKSPACE_MANAGE = "workspace:manage"
    MEMBERS_MANAGE = "members:manage"
    USAGE_READ = "usage:read"
    API_KEYS_MANAGE = "api_keys:manage"
    BUDGETS_MANAGE = "budgets:manage"
    MODEL_CALL = "model:call"  # the OpenAI-compatible /v1 gateway endpoints
    PROVIDERS_MANAGE = "providers:manage"
    EGRESS_MANAGE = "egress:manage"  # where the workspace's agents may send HTTP requests


_VIEWER = frozenset({Permission.WORKFLOW_READ, Permission.USAGE_READ})
_MEMBER = _VIEWER | {
    Permission.WORKFLOW_CREATE,
    Permission.WORKFLOW_UPDATE,
    Permission.WORKFLOW_EXECUTE,
    Permission.RUN_CANCEL,
    Permission.RUN_APPROVE,
    Permission.MODEL_CALL,
}
_ADMIN = _MEMBER | {
    Permission.WORKFLOW_DELETE,
    Permission.MEMBERS_MANAGE,
    Permission.API_KEYS_MANAGE,
    Permission.BUDGETS_MANAGE,
    Permission.PROVIDERS_MANAGE,
    Permission.EGRESS_MANAGE,
}
_OWNER = _ADMIN | {Permission.WORKSPACE_MANAGE}

PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.MEMBER: frozenset(_MEMBER),
    Role.ADMIN: frozenset(_ADMIN),
    Role.OWNER: frozenset(_OWNER),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in PERMISSIONS[role]
