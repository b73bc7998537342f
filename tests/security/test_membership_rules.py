"""The membership rules as pure logic (domain/membership.py)."""

from __future__ import annotations

import pytest

from agentmill.domain.membership import check_add, check_change, check_remove, weaker
from agentmill.domain.permissions import Role
from agentmill.errors import PermissionDenied

O, A, M, V = Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER


@pytest.mark.parametrize(
    ("actor", "role", "allowed"),
    [(O, O, True), (O, A, True), (A, O, False), (A, A, True), (A, V, True), (M, V, False)],
)
def test_nobody_adds_a_role_above_their_own(actor: Role, role: Role, allowed: bool) -> None:
    if allowed:
        check_add(actor, role)
    else:
        with pytest.raises(PermissionDenied):
            check_add(actor, role)


@pytest.mark.parametrize(
    ("actor", "target", "role", "allowed"),
    [
        (O, O, V, True),
        (O, V, O, True),
        (A, O, V, False),  # only owners touch owners
        (A, O, O, False),
        (A, V, O, False),  # above its own
        (A, V, A, True),
        (A, A, V, True),
        (M, V, M, False),  # members may not manage members
    ],
)
def test_changing_a_role(actor: Role, target: Role, role: Role, allowed: bool) -> None:
    if allowed:
        check_change(actor, target, role, is_self=False)
    else:
        with pytest.raises(PermissionDenied):
            check_change(actor, target, role, is_self=False)


@pytest.mark.parametrize("role", list(Role))
def test_nobody_changes_their_own_role(role: Role) -> None:
    with pytest.raises(PermissionDenied, match="their own role"):
        check_change(O, O, role, is_self=True)
    with pytest.raises(PermissionDenied):
        check_change(A, A, role, is_self=True)


def test_only_owners_remove_owners_and_anyone_may_leave() -> None:
    check_remove(O, O, is_self=False)
    check_remove(A, A, is_self=False)
    check_remove(V, V, is_self=True)
    with pytest.raises(PermissionDenied, match="only an owner"):
        check_remove(A, O, is_self=False)
    with pytest.raises(PermissionDenied):
        check_remove(M, V, is_self=False)


def test_a_key_acts_with_the_weaker_role() -> None:
    assert weaker(A, V) == V
    assert weaker(V, O) == V
    assert weaker(O, A) == A
    assert weaker(M, M) == M
