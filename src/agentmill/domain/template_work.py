"""A render's work budget: loop iterations and the items filters are handed.

The size checks in ``template_limits`` stop a template from *building* something huge, but a
template can also spin without building anything: ``{% for i in range(100000) %}{% for j in
range(500) %}{% endfor %}{% endfor %}`` is 5·10⁷ empty iterations, seconds of CPU on the event
loop that runs every other step and heartbeat of the process. Each render gets a budget of work
units: one per loop iteration and one per item of a collection a filter is given
(``range(100000)|sum`` costs 100,000). Past it the render stops with ``SecurityError``.
At about a microsecond a unit, the default budget bounds a render to a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from typing import Any

from jinja2.exceptions import SecurityError

MAX_TEMPLATE_WORK = 200_000

# Undefined has a __len__ that raises, so name the collections rather than test for Sized.
_COLLECTIONS = (list, tuple, Mapping, set, frozenset, range)

_left: ContextVar[list[int] | None] = ContextVar("agentmill_template_work", default=None)


def work_limit() -> int:
    """The current budget (read at call time so tests can lower it)."""
    return MAX_TEMPLATE_WORK


@contextmanager
def render_budget() -> Iterator[None]:
    """Give the render inside a fresh budget (nested renders share the outer one)."""
    if _left.get() is not None:
        yield
        return
    token = _left.set([work_limit()])
    try:
        yield
    finally:
        _left.reset(token)


def _refuse() -> None:
    raise SecurityError(
        f"the template does more than {work_limit():,} loop iterations and filtered items"
    )


def charge(units: int) -> None:
    left = _left.get()
    if left is None:
        return
    left[0] -= units
    if left[0] < 0:
        _refuse()


def counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """``iterable``, charging one unit per item taken (a for loop's iterations)."""
    left = _left.get()
    for item in iterable:
        if left is not None:
            left[0] -= 1
            if left[0] < 0:
                _refuse()
        yield item


def charged_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a Jinja filter), charging the length of the collection it is given.
    Strings are not charged: their size is bounded by the rendered-size checks."""
    # Filters marked pass_context / pass_eval_context / pass_environment take that first.
    at = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) > at:
            value = args[at]
            if isinstance(value, _COLLECTIONS):
                charge(len(value))
        return function(*args, **kwargs)

    return wrapper
