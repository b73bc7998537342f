"""Templates: Jinja2 in the immutable sandbox, undefined names are errors (decision 10).

A string that is exactly one ``{{ expression }}`` evaluates to the expression's native value
(a list for ``over``, a bool for ``when``); any other string renders to text. Values substituted
into a template are data: they are never rendered again.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache, update_wrapper
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from agentmill.domain import template_limits as limits
from agentmill.domain import template_work as work
from agentmill.domain.template_limits import MAX_RENDERED_CHARS as MAX_RENDERED_CHARS

_MARKERS = ("{{", "{%", "{#")
_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class TemplateError(Exception):
    """A template failed to compile or render; the message says why."""


def _tojson(value: Any) -> str:
    limits.refuse_over(limits.size(value), "tojson")
    return json.dumps(value, ensure_ascii=False, default=str)


def _fromjson(value: str) -> Any:
    return json.loads(value)


class _Undefined(StrictUndefined):
    """Strict everywhere, including ``repr`` (so ``{{ [missing] }}`` fails instead of printing)."""

    __repr__ = StrictUndefined._fail_with_undefined_error


class _CheckedCodeGenerator(CodeGenerator):
    """``a ~ b`` compiles to a join of its parts: check their sizes first. Macros and block
    ``set``/``filter``/``call`` collect their text in a buffer: make it one that counts."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # Every loop iterates through the render's work budget (template_work).
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("counted_iter"), [node.iter], [], None, None
        )
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        join = "(markup_join if context.eval_ctx.volatile else str_join)"
        self.write(f"{join}(environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class _DataFirstEnvironment(ImmutableSandboxedEnvironment):
    """``x.items`` means the key ``items`` when ``x`` is a mapping that has it, not the dict
    method: workflow data is JSON, and keys like items, keys or values are common.

    Operations that can build a large value are checked before they run (template_limits):
    ``'y' * 10**10`` or ``'%*s' % (10**10, 'y')`` would allocate gigabytes before the
    rendered-size limit could see the result. Intercepted operators are also never folded at
    compile time, so validating such a template cannot hang either."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CheckedCodeGenerator

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            limits.check_repeat(left, right)
            limits.check_repeat(right, left)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            limits.check_add(left, right)
        elif operator == "%":
            limits.check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def output_buffer(self) -> limits.OutputBuffer:
        return limits.OutputBuffer()

    def checked_concat(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        return limits.check_concat(parts)

    def counted_iter(self, iterable: Any) -> Iterator[Any]:
        return work.counted(iterable)

    def call(
        __self,  # Jinja's spelling: any keyword argument of the callee passes through
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(__obj, types.BuiltinMethodType) and isinstance(owner, str | bytes):
            limits.check_text_method(owner, __obj.__name__, args)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed ``str.format``/``format_map``, with a formatter that checks each
        field's width and the running size (``'{:>10000000000}'.format(1)``)."""
        if not isinstance(
            value, types.MethodType | types.BuiltinMethodType
        ) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner: Any = value.__self__
        if not isinstance(owner, str):
            return None
        is_map = value.__name__ == "format_map"
        formatter = (
            limits.BoundedEscapeFormatter(self, escape=owner.escape)
            if isinstance(owner, Markup)
            else limits.BoundedFormatter(self)
        )

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return update_wrapper(wrapper, value)


_MAX_POWER_BITS = 65_536


def _check_power(base: Any, exponent: Any) -> None:
    ints = isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1
    if ints and abs(base).bit_length() * exponent > _MAX_POWER_BITS:
        raise SecurityError(f"{base} ** {exponent} is too large a number")


def _make_env() -> ImmutableSandboxedEnvironment:
    env = _DataFirstEnvironment(
        undefined=_Undefined, autoescape=False, finalize=limits.check_output
    )
    env.filters.update(limits.bounded_filters())
    env.globals["lipsum"] = limits.bounded_lipsum()
    env.filters["tojson"] = _tojson
    env.filters["fromjson"] = _fromjson
    for name, function in env.filters.items():
        env.filters[name] = work.charged_filter(function)
    return env


ENV = _make_env()
GLOBAL_NAMES = frozenset(ENV.globals) | {"loop"}  # `loop` exists inside for blocks


def is_template(text: str) -> bool:
    return any(marker in text for marker in _MARKERS)


@dataclass(frozen=True)
class Template:
    """A compiled template string."""

    source: str
    _render: Any  # a jinja2 Template, or a compiled expression for native values
    native: bool

    def render(self, context: Mapping[str, Any]) -> Any:
        try:
            with work.render_budget():
                return self._render_checked(context)
        except UndefinedError as exc:
            raise TemplateError(f"{exc.message} in {self.source!r}") from None
        except SecurityError as exc:
            raise TemplateError(f"not allowed in a template: {exc}") from None
        except TemplateError:
            raise
        except Exception as exc:  # a filter or operator failed on the data
            raise TemplateError(f"{type(exc).__name__}: {exc} in {self.source!r}") from None

    def _render_checked(self, context: Mapping[str, Any]) -> Any:
        if self.native:
            value = self._render(**context)
            if limits.size(value) > limits.limit():
                raise TemplateError(_too_long())
            _reject_undefined(value)
            return value
        return _render_bounded(self._render, context)


def _too_long() -> str:
    return f"rendered text is longer than {limits.limit()} characters"


def _render_bounded(template: Any, context: Mapping[str, Any]) -> str:
    """Render piece by piece and stop once past the limit: a loop printing a million
    characters a hundred thousand times never gets to join its output."""
    pieces: list[str] = []
    made = 0
    for piece in template.generate(context):
        made += len(piece)
        if made > limits.limit():
            raise TemplateError(_too_long())
        pieces.append(piece)
    return "".join(pieces)


def _reject_undefined(value: Any) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_undefined(item)
    elif isinstance(value, dict):
        for item in value.values():
            _reject_undefined(item)


def _single_expression(source: str) -> str | None:
    """The expression of a template that is exactly one ``{{ … }}``, else None."""
    match = _SINGLE_EXPR.match(source)
    if match and not any(m in match.group("expr") for m in ("{{", "}}", "{%")):
        return match.group("expr").strip()
    return None


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    """Compile once; raises TemplateError with the syntax problem."""
    expression = _single_expression(source)
    try:
        if expression is not None:
            return Template(
                source, ENV.compile_expression(expression, undefined_to_none=False), True
            )
        return Template(source, ENV.from_string(source), False)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from None


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template string inside a JSON-like value."""
    if isinstance(value, str):
        return compile_template(value).render(context) if is_template(value) else value
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    if isinstance(value, dict):
        return {key: render_value(item, context) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class References:
    """What a template reads: top-level names and the step ids under ``steps``."""

    names: frozenset[str]
    steps: frozenset[str]
    inputs: frozenset[str]
    # Python internals (``__class__``, ``_Foo__bar``) it reaches for: always refused.
    internals: frozenset[str] = frozenset()


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLACEHOLDER = re.compile(r"\{\{\s*(" + _NAME + r"(?:\." + _NAME + r")*)\s*\}\}")


def _placeholder_references(source: str) -> References | None:
    """The references of a template that is text with ``{{ a.b.c }}`` placeholders only (most
    prompts), found without Jinja's parser (a thousand times cheaper: a 20,000-step workflow
    validates in a fraction of a second); None for any other template."""
    paths = [match.split(".") for match in _PLACEHOLDER.findall(source)]
    if not paths or any(marker in _PLACEHOLDER.sub("", source) for marker in _MARKERS):
        return None
    return References(
        names=frozenset(path[0] for path in paths) - GLOBAL_NAMES,
        steps=frozenset(path[1] for path in paths if path[0] == "steps" and len(path) > 1),
        inputs=frozenset(path[1] for path in paths if path[0] == "inputs" and len(path) > 1),
        internals=frozenset(part for path in paths for part in path[1:] if _is_internal(part)),
    )


def references(source: str) -> References:
    """Static analysis of a template; raises TemplateError on a syntax error."""
    simple = _placeholder_references(source)
    if simple is not None:
        return simple
    expression = _single_expression(source)
    text = source if expression is None else "{{ " + expression + " }}"
    try:
        tree = ENV.parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from None
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    names = {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"} - assigned
    return References(
        names=frozenset(names - GLOBAL_NAMES),
        steps=frozenset(_attrs_of(tree, "steps")),
        inputs=frozenset(_attrs_of(tree, "inputs")),
        internals=frozenset(_internals(tree)),
    )


def _is_internal(name: str) -> bool:
    """Dunder and name-mangled attributes: the sandbox refuses them at run time anyway; saying
    so when the workflow is checked keeps an escape attempt from ever being stored."""
    return name.startswith("_") and "__" in name


def _internals(tree: nodes.Template) -> Iterator[str]:
    for attr in tree.find_all(nodes.Getattr):
        assert isinstance(attr, nodes.Getattr)
        if _is_internal(attr.attr):
            yield attr.attr
    for item in tree.find_all(nodes.Getitem):
        assert isinstance(item, nodes.Getitem)
        key = item.arg.value if isinstance(item.arg, nodes.Const) else None
        if isinstance(key, str) and _is_internal(key):
            yield key


def _attrs_of(tree: nodes.Template, root: str) -> Iterator[str]:
    for attr in tree.find_all(nodes.Getattr):
        assert isinstance(attr, nodes.Getattr)
        if isinstance(attr.node, nodes.Name) and attr.node.name == root:
            yield attr.attr
    for item in tree.find_all(nodes.Getitem):
        assert isinstance(item, nodes.Getitem)
        is_root = isinstance(item.node, nodes.Name) and item.node.name == root
        if is_root and isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
            yield item.arg.value


def template_strings(value: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every template string inside a JSON-like value, with its relative path."""
    if isinstance(value, str):
        if is_template(value):
            yield (), value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for path, text in template_strings(item):
                yield (index, *path), text
    elif isinstance(value, dict):
        for key, item in value.items():
            for path, text in template_strings(item):
                yield (key, *path), text
