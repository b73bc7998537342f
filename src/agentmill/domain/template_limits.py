"""Size checks that run before a template operation allocates its result.

A template's rendered text is capped at ``MAX_RENDERED_CHARS``, but many operations can build
gigabytes before that cap is looked at: ``a + a`` doubling, ``'%*s' % (10**10, x)``,
``'x'.ljust(10**10)``, ``'{:>10000000000}'.format(1)``, ``indent(10**10)``, a list holding the
same long string a million times that is then printed or joined. Each check here works out how
big the result would be (cheaply, from the operands) and raises ``SecurityError`` instead;
``Template.render`` reports it as "not allowed in a template: …".

Sizes count characters of strings and items of collections (``size``), so a list of one
long string repeated counts that string every time it appears.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from jinja2 import filters as jinja_filters
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import generate_lorem_ipsum

MAX_RENDERED_CHARS = 1_000_000
# A width or precision with more digits than this is over any limit; int() is not even tried.
_MAX_DIGITS = 9


def limit() -> int:
    """The current limit (read at call time so tests can lower it)."""
    return MAX_RENDERED_CHARS


def size(value: Any) -> int:
    """Characters and items in ``value``, counting shared parts every time they appear; stops
    counting once over the limit, so it costs at most about the limit in steps."""
    cap = limit()
    total = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str | bytes):
                total += max(1, len(item))
            elif isinstance(item, bool) or not isinstance(item, int):
                total += 1
            else:
                total += max(1, item.bit_length() * 3 // 10)
            if isinstance(item, Mapping):
                stack.append(itertools.chain(item.keys(), item.values()))
            elif isinstance(item, list | tuple | set | frozenset):
                stack.append(iter(item))
            if total > cap:
                return total
            if isinstance(item, Mapping | list | tuple | set | frozenset):
                break
        else:
            stack.pop()
    return total


def refuse_over(made: int, what: str, unit: str = "characters") -> None:
    if made > limit():
        raise SecurityError(f"{what} makes more than {limit()} {unit}")


# ---------------------------------------------------------------- operators


def check_repeat(sequence: Any, times: Any) -> None:
    sized = isinstance(sequence, str | bytes | list | tuple) and isinstance(times, int)
    if sized and times > 0 and size(sequence) * times > limit():
        raise SecurityError(
            f"repeating a {type(sequence).__name__} of length {len(sequence)} {times} times "
            f"makes more than {limit()} items"
        )


def check_add(left: Any, right: Any) -> None:
    if isinstance(left, str | bytes) and isinstance(right, str | bytes):
        refuse_over(size(left) + size(right), f"adding two {type(left).__name__}s")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        refuse_over(size(left) + size(right), f"adding two {type(left).__name__}s", "items")


def check_concat(parts: tuple[Any, ...]) -> tuple[Any, ...]:
    """``a ~ b``: every part becomes text, so long parts or long lists add up."""
    refuse_over(sum(size(part) for part in parts), "joining with ~")
    return parts


class OutputBuffer(list[str]):
    """The text a macro or a block ``set``/``filter``/``call`` is building, refused once past
    the limit (it is joined only when the block ends, so the streaming check never sees it)."""

    made = 0

    def append(self, piece: str) -> None:
        self._count(len(piece))
        super().append(piece)

    def extend(self, pieces: Iterable[str]) -> None:
        pieces = tuple(pieces)
        self._count(sum(len(piece) for piece in pieces))
        super().extend(pieces)

    def _count(self, more: int) -> None:
        self.made += more
        refuse_over(self.made, "a macro or block")


def check_output(value: Any) -> Any:
    """Every ``{{ … }}`` printed: a list of long strings would print as one huge text."""
    refuse_over(size(value), "printing a value")
    return value


# ---------------------------------------------------------------- printf-style %

_PRINTF = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?"
    r"[hlL]?(?P<kind>.)",
    re.DOTALL,
)


def check_printf(template: Any, values: Any) -> None:
    """``template % values``: widths and precisions (``*`` ones taken from the values) and the
    values themselves, added up before Python pads anything."""
    if isinstance(template, bytes):
        template = template.decode("latin-1")
    if not isinstance(template, str):
        return
    args: Sequence[Any] = values if isinstance(values, tuple) else (values,)
    index = 0
    made = len(template)

    def take() -> Any:
        nonlocal index
        index += 1
        return args[index - 1] if index <= len(args) else None

    for match in _PRINTF.finditer(template):
        if match["kind"] == "%":
            continue
        for number in (match["width"], match["precision"]):
            if number == "*":
                star = take()
                made += abs(star) if isinstance(star, int) else 0
            elif number is not None:
                made += _digits(number)
        if match["key"] is not None:
            made += size(values.get(match["key"])) if isinstance(values, Mapping) else 0
        else:
            made += size(take())
        refuse_over(made, "formatting with %")


def _digits(number: str) -> int:
    number = number.lstrip("0") or "0"
    return int(number) if len(number) <= _MAX_DIGITS else limit() + 1


def _spec_width(spec: str) -> int:
    """Every digit run in a format spec (fill, width, precision) added up: an upper bound."""
    return sum(_digits(run) for run in re.findall(r"\d+", spec))


# ---------------------------------------------------------------- str.format / format_map


class _BoundedFormatterMixin(string.Formatter):
    """Counts what ``str.format`` has made so far and checks each field before formatting it
    (after nested ``{}`` in a spec are filled in, so ``{:>{w}}`` is checked too)."""

    _made = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._made = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._made += _spec_width(format_spec) + size(value)
        refuse_over(self._made, "str.format")
        return super().format_field(value, format_spec)


class BoundedFormatter(_BoundedFormatterMixin, SandboxedFormatter):
    pass


class BoundedEscapeFormatter(_BoundedFormatterMixin, SandboxedEscapeFormatter):
    pass


# ---------------------------------------------------------------- str and bytes methods


def check_text_method(text: str | bytes, name: str, args: tuple[Any, ...]) -> None:
    """The result size of the padding and replacing methods, from their arguments."""
    made = _text_method_size(text, name, args)
    if made is not None:
        refuse_over(made, f"{type(text).__name__}.{name}")


def _text_method_size(text: str | bytes, name: str, args: tuple[Any, ...]) -> int | None:
    first = args[0] if args else None
    if name in ("ljust", "rjust", "center", "zfill") and isinstance(first, int):
        return max(len(text), first)
    if name == "expandtabs":
        tab = first if isinstance(first, int) else 8
        tabs = text.count("\t") if isinstance(text, str) else text.count(b"\t")
        return len(text) + tabs * max(tab, 0)
    if name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if not isinstance(old, type(text)) or not isinstance(new, type(text)):
            return None  # Python refuses mixed str and bytes itself
        haystack: Any = text
        count = haystack.count(old) if old else len(text) + 1
        if len(args) >= 3 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        return len(text) + count * max(len(new) - len(old), 0)
    if name == "join" and isinstance(first, list | tuple):
        return sum(size(item) for item in first) + len(text) * max(len(first) - 1, 0)
    if name == "translate" and isinstance(first, Mapping):
        longest = max((size(v) for v in first.values() if v is not None), default=1)
        return len(text) * max(longest, 1)
    return None


# ---------------------------------------------------------------- filters


def _wrap(original: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    """A filter with Jinja's behaviour and signature (and pass_* marker), checked first."""

    @functools.wraps(original)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    return bounded


def _check_center(value: Any, width: Any = 80) -> None:
    refuse_over(max(size(value), width if isinstance(width, int) else 0), "center")


def _check_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    pad = width if isinstance(width, int) else len(width) if isinstance(width, str) else 0
    text_size = size(s)
    lines = s.count("\n") + 2 if isinstance(s, str) else 2
    refuse_over(max(pad, 0) * lines + text_size, "indent")


def _check_batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    if fill_with is not None and isinstance(linecount, int):
        refuse_over(linecount * size(fill_with), "batch filling", "items")


def _check_slice(value: Any, slices: Any, fill_with: Any = None) -> None:
    if isinstance(slices, int):
        refuse_over(
            slices + (slices * size(fill_with) if fill_with is not None else 0), "slice", "items"
        )


def _check_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> None:
    text = s if isinstance(s, str) else None
    refuse_over(size(s), "replace")
    if text is not None:
        args = (str(old), str(new), -1 if count is None else count)
        check_text_method(text, "replace", args)


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    check_printf(value if isinstance(value, str) else str(value), kwargs or args)


def _check_wordwrap(
    environment: Any,
    s: Any,
    width: Any = 79,
    break_long_words: bool = True,
    wrapstring: Any = None,
    break_on_hyphens: bool = True,
) -> None:
    refuse_over(size(s), "wordwrap")
    if isinstance(s, str) and isinstance(wrapstring, str) and isinstance(width, int):
        # each line holds at least one word or a width-long piece of one
        lines = len(s.split()) + len(s) // max(width, 1) + s.count("\n") + 1
        refuse_over(len(s) + lines * len(wrapstring), "wordwrap")


def _check_join(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> None:
    if isinstance(value, list | tuple):
        refuse_over(size(value) + len(value) * size(d), "join")


def _check_sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    if isinstance(start, list | tuple | str) and isinstance(iterable, list | tuple):
        refuse_over(size(start) + size(iterable), "sum", "items")


def _check_value(value: Any, *args: Any, **kwargs: Any) -> None:
    refuse_over(size(value), "turning a value into text")


def _materialized(original: Callable[..., Any], position: int) -> Callable[..., Any]:
    """Iterables (like ``map`` results) become lists first, so the check can see them."""

    @functools.wraps(original)
    def listed(*args: Any, **kwargs: Any) -> Any:
        given = args[position]
        if not isinstance(given, list | tuple | str | Mapping) and isinstance(given, Iterable):
            args = (*args[:position], list(given), *args[position + 1 :])
        return original(*args, **kwargs)

    return listed


def _check_lipsum(n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100) -> None:
    if isinstance(n, int) and isinstance(max, int):
        refuse_over(n * max, "lipsum", "words")


def bounded_lipsum() -> Callable[..., Any]:
    """The ``lipsum`` global: ``lipsum(1, max=10**10)`` would write ten billion words."""
    return _wrap(generate_lorem_ipsum, _check_lipsum)


def bounded_filters() -> dict[str, Callable[..., Any]]:
    """Jinja's filters that can make a large result, each checked before it runs."""
    f = jinja_filters
    bounded: dict[str, Callable[..., Any]] = {
        "center": _wrap(f.do_center, _check_center),
        "indent": _wrap(f.do_indent, _check_indent),
        "batch": _wrap(f.do_batch, _check_batch),
        "slice": _wrap(f.sync_do_slice, _check_slice),
        "replace": _wrap(f.do_replace, _check_replace),
        "format": _wrap(f.do_format, _check_format),
        "wordwrap": _wrap(f.do_wordwrap, _check_wordwrap),
        "join": _materialized(_wrap(f.sync_do_join, _check_join), 1),
        "sum": _materialized(_wrap(f.sync_do_sum, _check_sum), 1),
    }
    for name in ("string", "pprint", "urlencode", "trim", "upper", "lower", "title"):
        bounded[name] = _wrap(jinja_filters.FILTERS[name], _check_value)
    return bounded
