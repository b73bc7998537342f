"""Statements compiled once and run straight on the DBAPI cursor.

SQLAlchemy's execution path costs tens of microseconds per statement (cache key, execution
context, result wrapping); the engine's hot path runs a few statements per step and its target
is 0.3 ms per step. A :class:`Prepared` statement is compiled by SQLAlchemy once (so the SQL and
the type conversions are SQLAlchemy's own), then executed on the connection's DBAPI cursor
inside the same transaction: the SQLite cursor, or SQLAlchemy's asyncpg adapter cursor (which
keeps asyncpg's prepared statements). On PostgreSQL a driver error is raised as SQLAlchemy's
``DBAPIError`` (its subclass), and a dropped connection is invalidated, as ``execute`` would.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

_Processor = Callable[[Any], Any] | None


class _Compiled:
    def __init__(self, statement: Any, dialect: Dialect, keys: Sequence[str] | None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        names: Sequence[str] = compiled.positiontup or ()
        self.sql: str = compiled.string
        self.names = list(names)
        self.fixed = {n: compiled.binds[n].effective_value for n in names}
        self.processors: list[_Processor] = [
            compiled.binds[n].type._cached_bind_processor(dialect) for n in names
        ]
        self.pairs = list(zip(self.names, self.processors, strict=True))
        self.row: Any = None
        self._dialect = dialect
        self._result_types: list[Any] = []
        # Known after the first execution: a type's result processor may depend on the type
        # the server reports for the column (asyncpg's numerics).
        self.result_processors: list[_Processor] | None = None
        if isinstance(statement, Select):
            columns = list(statement.selected_columns)
            self.row = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]
            self._result_types = [c.type for c in columns]
        elif getattr(statement, "_returning", ()):  # INSERT/UPDATE … RETURNING
            described = statement.returning_column_descriptions
            self.row = namedtuple("Row", [d["name"] for d in described])  # type: ignore[misc]
            self._result_types = [d["type"] for d in described]

    def result_processors_for(self, description: Sequence[Any] | None) -> list[_Processor]:
        if self.result_processors is None:
            coltypes = (
                [d[1] for d in description] if description else [None] * len(self.row._fields)
            )
            self.result_processors = [
                t._cached_result_processor(self._dialect, coltype)
                for t, coltype in zip(self._result_types, coltypes, strict=True)
            ]
        return self.result_processors

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        # Hot: runs for every row the engine writes. Plain columns skip the processor call.
        fixed = self.fixed
        return tuple(
            [
                value if processor is None or value is None else processor(value)
                for name, processor in self.pairs
                for value in (params[name] if name in params else fixed[name],)
            ]
        )


class Prepared:
    """One statement, compiled per (dialect, parameter keys) on first use."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...] | None], _Compiled] = {}

    def _get(self, dialect: Dialect, keys: tuple[str, ...] | None) -> _Compiled:
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            found = self._compiled[(dialect.name, keys)] = _Compiled(self.statement, dialect, keys)
        return found

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Run a SELECT (or a statement with RETURNING) and return its rows."""
        compiled = self._get(conn.dialect, self._keys(params))
        cursor = _execute(conn, compiled.sql, compiled.bind(params))
        try:
            raw = cursor.fetchall()
            processors = compiled.result_processors_for(cursor.description)
        finally:
            cursor.close()
        make = compiled.row._make
        return [
            make(p(v) if p is not None else v for p, v in zip(processors, row, strict=True))
            for row in raw
        ]

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run an INSERT/UPDATE/DELETE; returns the row count."""
        compiled = self._get(conn.dialect, self._keys(params))
        cursor = _execute(conn, compiled.sql, compiled.bind(params))
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run an INSERT for many rows that all have the same keys."""
        if not rows:
            return
        compiled = self._get(conn.dialect, self._keys(rows[0]))
        cursor = _execute(conn, compiled.sql, [compiled.bind(r) for r in rows], many=True)
        cursor.close()

    def _keys(self, params: Mapping[str, Any]) -> tuple[str, ...] | None:
        # Plain INSERTs compile to the columns given; other statements use named bindparams.
        statement = self.statement
        if getattr(statement, "is_insert", False) and not getattr(statement, "_values", None):
            return tuple(params)
        return None


def _execute(conn: Connection, statement: str, args: Any, *, many: bool = False) -> Any:
    """Run ``statement`` on the connection's DBAPI cursor (sqlite3's, or SQLAlchemy's asyncpg
    adapter's: the SQL is compiled for it, with $1 placeholders and casts); returns the cursor.
    """
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        (cursor.executemany if many else cursor.execute)(statement, args)
    except BaseException as exc:
        cursor.close()
        dbapi = conn.dialect.loaded_dbapi
        if conn.dialect.name == "sqlite" or not isinstance(exc, dbapi.Error):
            raise  # SQLite's errors stay the sqlite3 module's, which its callers expect
        dropped = conn.dialect.is_disconnect(exc, dbapi_connection, cursor)
        if dropped:  # the pool must not hand this connection out again
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement,
            args,
            exc,
            dbapi.Error,
            connection_invalidated=dropped,
            dialect=conn.dialect,
        ) from exc
    return cursor
