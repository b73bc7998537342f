"""The membership rules as pure logic (domain/membership.py)."""

from __future__ import annotations

import pytest

from agentmill.domain.membership import check_add, check_change, check_remove, weaker
from agentmill.domain.permissions import Role
from agentmill.errors import PermissionDenied

OWN, ADM, MEM, VIEW = Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER


@pytest.mark.parametrize(
    ("actor", "role", "allowed"),
    [
        (OWN, OWN, True),
        (OWN, ADM, True),
        (ADM, OWN, False),
        (ADM, ADM, True),
        (ADM, VIEW, True),
        (MEM, VIEW, False),
    ],
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
        (OWN, OWN, VIEW, True),
        (OWN, VIEW, OWN, True),
        (ADM, OWN, VIEW, False),  # only owners touch owners
        (ADM, OWN, OWN, False),
        (ADM, VIEW, OWN, False),  # above its own
        (ADM, VIEW, ADM, True),
        (ADM, ADM, VIEW, True),
        (MEM, VIEW, MEM, False),  # members may not manage members
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
        check_change(OWN, OWN, role, is_self=True)
    with pytest.raises(PermissionDenied):
        check_change(ADM, ADM, role, is_self=True)


def test_only_owners_remove_owners_and_anyone_may_leave() -> None:
    check_remove(OWN, OWN, is_self=False)
    check_remove(ADM, ADM, is_self=False)
    check_remove(VIEW, VIEW, is_self=True)
    with pytest.raises(PermissionDenied, match="only an owner"):
        check_remove(ADM, OWN, is_self=False)
    with pytest.raises(PermissionDenied):
        check_remove(MEM, VIEW, is_self=False)


def test_a_key_acts_with_the_weaker_role() -> None:
    assert weaker(ADM, VIEW) == VIEW
    assert weaker(VIEW, OWN) == VIEW
    assert weaker(OWN, ADM) == ADM
    assert weaker(MEM, MEM) == MEM
