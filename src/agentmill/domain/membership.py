"""Who may add, re-role or remove whom in a workspace: pure rules, no database.

The rules (issue 17): nobody grants a role above their own; only owners touch owners (change
or remove them); nobody changes their own role. Leaving (removing yourself) is allowed. The
last-owner rule needs a count of owners, so the store enforces it in the same transaction.
"""

from __future__ import annotations

from agentmill.domain.permissions import Permission, Role, allows
from agentmill.errors import PermissionDenied

# Higher is more powerful; the permission table is a strict hierarchy in this order.
_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


def rank(role: Role) -> int:
    return _RANK[role]


def weaker(a: Role, b: Role) -> Role:
    """The less powerful of two roles (an API key acts with at most its creator's role)."""
    return a if _RANK[a] <= _RANK[b] else b


def _may_manage(actor: Role) -> None:
    if not allows(actor, Permission.MEMBERS_MANAGE):
        raise PermissionDenied(
            f"role {actor.value!r} may not {Permission.MEMBERS_MANAGE.value!r} in this workspace"
        )


def _may_grant(actor: Role, role: Role) -> None:
    if _RANK[role] > _RANK[actor]:
        raise PermissionDenied(
            f"role {actor.value!r} may not grant role {role.value!r}, which is above its own"
        )


def _may_touch(actor: Role, target: Role) -> None:
    if target == Role.OWNER and actor != Role.OWNER:
        raise PermissionDenied(f"only an owner may change or remove an owner, not {actor.value!r}")


def check_add(actor: Role, role: Role) -> None:
    """May someone with role ``actor`` add a member with ``role``? PermissionDenied if not."""
    _may_manage(actor)
    _may_grant(actor, role)


def check_change(actor: Role, target: Role, role: Role, *, is_self: bool) -> None:
    """May ``actor`` change a member's role from ``target`` to ``role``?"""
    _may_manage(actor)
    if is_self:
        raise PermissionDenied("nobody may change their own role; ask another owner")
    _may_touch(actor, target)
    _may_grant(actor, role)


def check_remove(actor: Role | None, target: Role, *, is_self: bool) -> None:
    """May ``actor`` remove a member whose role is ``target``? Anyone may leave."""
    if is_self:
        return
    if actor is None:
        raise PermissionDenied("only members may remove members")
    _may_manage(actor)
    _may_touch(actor, target)
