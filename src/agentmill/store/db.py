"""Running transactions: one place that knows SQLite from PostgreSQL.

Transactions are plain functions ``fn(tx) -> T`` written against a synchronous SQLAlchemy
``Connection``; the same function runs on both engines:

* **SQLite** has one writer, and one connection does all of this process's writes:

  - every write asked for in one turn of the event loop joins one transaction (group
    commit); it runs on the loop thread, where the engine's Python runs anyway, so there are
    no thread hand-offs and no GIL ping-pong;
  - a caller with nothing to batch with (``alone=True``, a step of a chain) runs at once;
  - the loop thread never waits for SQLite's lock: if another process holds it, the batch
    goes to a writer thread, which waits with backoff (up to 30 s);
  - a batch runs without savepoints; if one transaction raises, the batch is rolled back and
    each transaction runs again alone, so a failure never affects the others;
  - append-only rows (events, model calls) and each run's progress counters are written once
    per batch, just before COMMIT; WAL checkpoints run on their own thread.

  Reads run on a small thread pool with their own connections (WAL lets them run beside
  writes).
* **PostgreSQL**: asyncpg through SQLAlchemy's async engine; ``AsyncConnection.run_sync`` runs
  the same function. Deadlocks, serialization failures and dropped connections are retried
  (the engine's transactions are conditional, so a retried result cannot apply twice).
  Writes asked for in one turn of the event loop share one transaction too (one COMMIT and
  one WAL flush for the step results a worker records together):

  - members run in the order of their ``lock_order`` key (the worker passes the run id), so
    two processes' groups take their run locks in one order;
  - a prelude locks the members' run rows in one statement, skipping rows another
    transaction holds (another worker's group with a result of the same run): their members
    sit the group out, try together again 20 ms later, then alone (waiting for the lock).
    Waiting instead made the group time out (below) and all its members run alone: 200
    transactions where one would do;
  - a group waits at most 50 ms for any lock; if it waits longer, or any member raises, the
    group is rolled back and each member runs again alone, with the usual retries. A
    deadlock between two groups thus costs 50 ms, not the server's ``deadlock_timeout``;
  - each member reads the clock as it starts, so a time it stamps is never earlier than a
    commit it has seen.

Events a transaction appends are handed to subscribers only after its commit; on PostgreSQL
other processes hear of the commit through ``NOTIFY`` (store/notify.py).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmill.config import Settings
from agentmill.errors import ConfigError
from agentmill.store.notify import Listener, PgListener

T = TypeVar("T")
EventListener = Callable[[list[dict[str, Any]]], None]
_BATCH_LIMIT = 512


@dataclass
class Tx:
    """What a transaction function gets: the connection, the time it started, and an outbox of
    events to publish once it commits."""

    conn: Connection
    dialect: str
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    published: list[dict[str, Any]] = field(default_factory=list)
    written_events: int = 0
    # Append-only rows nobody reads back inside the transaction (events, model calls); they
    # are inserted just before COMMIT, one statement per table for a whole group commit.
    deferred: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)
    # Counters the engine adds up across a group commit (a run's progress), keyed by its own
    # keys; their rows sit in ``deferred`` and are written with it.
    accumulators: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Keys whose transactions must commit in the order they insert their deferred rows (a run's
    # events, so a reader resuming after event id N never misses a lower id committed later).
    # PostgreSQL takes an advisory lock per key just before the deferred inserts; SQLite has
    # one writer, so its commits are in order already.
    ordered_by: set[str] = field(default_factory=set)
    # (channel, payload) pairs to NOTIFY with the commit on PostgreSQL (see store/notify.py).
    notify: set[tuple[str, str]] = field(default_factory=set)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def insert_later(self, statement: Any, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` with ``statement`` (a :class:`Prepared` INSERT) before this commits."""
        self.deferred.setdefault(statement, []).extend(rows)


# Runs once for a PostgreSQL group commit, before its members, given the ``lock_order`` keys
# (in order) of the members that asked for it, and a ``Tx`` sharing their ``accumulators``:
# it locks those members' rows in one statement and leaves what it read for them, instead of
# one round trip each. It returns the keys whose rows another transaction holds (it skips
# them rather than wait): their members sit the group out and commit after it. Members must
# not depend on it: alone, or on SQLite, it does not run.
GroupPrelude = Callable[[Tx, list[str]], set[str]]


def _lock_commit_order(conn: Connection, keys: set[str]) -> None:
    # Taken last, after every row lock, in ascending order of lock id: a transaction holding
    # these waits for nothing but other holders, so they cannot deadlock. One statement for
    # all of a group's keys (a group of 256 runs took 256 round trips). Released at COMMIT.
    if keys:
        conn.execute(_ADVISORY_LOCKS, {"keys": sorted(keys)})


# The subquery's ORDER BY fixes the order the locks are taken in: PostgreSQL evaluates the
# outer select list row by row as the sorted rows come out.
_ADVISORY_LOCKS = text(
    "SELECT pg_advisory_xact_lock(lock_id) FROM (SELECT DISTINCT hashtextextended(k, 0)"
    " AS lock_id FROM unnest(CAST(:keys AS text[])) AS t(k) ORDER BY lock_id) AS ids"
)


def _notify(conn: Connection, notify: set[tuple[str, str]]) -> None:
    if notify:
        channels, payloads = zip(*sorted(notify), strict=True)
        conn.execute(_NOTIFY, {"channels": list(channels), "payloads": list(payloads)})


_NOTIFY = text(
    "SELECT pg_notify(c, p) FROM unnest(CAST(:channels AS text[]), CAST(:payloads AS text[]))"
    " AS t(c, p)"
)


def _insert_deferred(conn: Connection, deferred: dict[Any, list[dict[str, Any]]]) -> None:
    for statement, rows in deferred.items():
        statement.run_many(conn, rows)
    deferred.clear()


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite:///`` URLs; pick the drivers we use."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError("an in-memory SQLite database cannot be shared; use a file path")
        return parsed.set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:///path or postgresql://…")


class Database:
    """The process's database: transactions, reads, and post-commit event delivery."""

    def __init__(
        self, url: str, *, sqlite_synchronous: str = "NORMAL", pool_size: int = 10
    ) -> None:
        self.url = normalize_url(url)
        self._pool_size = pool_size
        self.dialect = make_url(self.url).get_backend_name()
        self._sqlite_synchronous = sqlite_synchronous
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync_write: Engine | None = None
        self._sync_read: Engine | None = None
        self._async: AsyncEngine | None = None
        self._autocommit: AsyncEngine | None = None
        self._writer: _SqliteWriter | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._checkpointer: _Checkpointer | None = None
        self._remote: PgListener | None = None
        # PostgreSQL group commit: the writes asked for in this turn of the event loop, and the
        # groups under way (held so they are not collected mid-flight).
        self._pg_pending: list[_PgWrite] = []
        self._pg_groups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> Database:
        """The database ``url`` (default: the settings' own) with the settings' tuning."""
        return cls(
            url or settings.resolved_database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_size=settings.db_pool_size,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.dialect == "sqlite":
            self._sync_write = self._sqlite_engine(immediate=True)
            self._sync_read = self._sqlite_engine(immediate=False)
            self._writer = _SqliteWriter(self._sync_write, self)
            self._checkpointer = _Checkpointer(self._sync_read)
            self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agentmill-read")
        else:
            self._async = create_async_engine(
                self.url, pool_size=self._pool_size, max_overflow=self._pool_size
            )
            self._autocommit = self._async.execution_options(isolation_level="AUTOCOMMIT")

    async def close(self) -> None:
        if self._pg_pending:
            self._flush_pg_pending()
        if self._pg_groups:  # writes already asked for still commit
            await asyncio.gather(*self._pg_groups, return_exceptions=True)
        if self._remote is not None:
            await self._remote.close()
            self._remote = None
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.stop)
            self._writer = None
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.stop)
            self._checkpointer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        for engine in (self._sync_write, self._sync_read):
            if engine is not None:
                engine.dispose()
        if self._async is not None:
            await self._async.dispose()
            self._async = None

    def sync_engine(self) -> Engine:
        """A synchronous SQLite engine for migrations (PostgreSQL migrates through run_sync)."""
        if self.dialect != "sqlite":
            raise ConfigError("a synchronous engine exists for SQLite only")
        return self._sqlite_engine(immediate=True)

    def _sqlite_engine(self, *, immediate: bool) -> Engine:
        path = make_url(self.url).database
        assert path is not None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # Readers keep their connections (a new one re-runs every PRAGMA); one per thread.
            pool_size=4 if not immediate else 1,
            max_overflow=4,
        )
        synchronous = self._sqlite_synchronous

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            if immediate:
                # Checkpoints fsync; a background thread runs them so commits never wait on one.
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front, so concurrent writers wait on the busy
            # timeout instead of failing with SQLITE_BUSY on a lock upgrade. (The writer thread
            # may have begun on the raw connection already.)
            raw = conn.connection.dbapi_connection
            if raw is None or not raw.in_transaction:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener`` (on the event loop) with the events of every committed transaction."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def subscribe_remote(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(channel, payload)`` when another process commits a change worth
        waking for (PostgreSQL only; see store/notify.py). On SQLite it is never called:
        other processes' commits are found by polling."""
        if self.dialect != "postgresql":
            return lambda: None
        if self._remote is None:
            self._remote = PgListener(self.url)
        return self._remote.subscribe(listener)

    async def remote_ready(self) -> None:
        """Wait until remote notifications are being received (no-op without a listener)."""
        if self._remote is not None:
            await self._remote.wait_ready()

    def _publish(self, tx: Tx) -> None:
        if tx.published:
            for listener in list(self._listeners):
                listener(tx.published)

    # ------------------------------------------------------------------ transactions

    async def write(
        self,
        fn: Callable[[Tx], T],
        *,
        alone: bool = False,
        lock_order: str = "",
        prelude: GroupPrelude | None = None,
    ) -> T:
        """Run ``fn`` as one transaction; its events are published after the commit.

        ``alone=True`` says the caller has nothing else in flight to batch with (a step of a
        chain): the transaction then runs right away (on SQLite on this thread, when the writer
        is idle, saving two thread hand-offs); otherwise it joins the next group commit.
        ``lock_order`` orders the members of a PostgreSQL group: give the key of the row
        ``fn`` locks first (a run id), so concurrent groups lock rows in one order.
        ``prelude`` runs once for a PostgreSQL group, before its members, with the
        ``lock_order`` keys of the members that name it: it locks their rows in one statement
        (see :data:`GroupPrelude`)."""
        if self._writer is not None:
            if alone:
                done = self._writer.try_inline(fn)
                if done is not None:
                    ok, value, inline_tx = done
                    if not ok:
                        raise value
                    assert inline_tx is not None
                    self._publish(inline_tx)
                    return cast(T, value)
            future: asyncio.Future[tuple[T, Tx]] = asyncio.get_running_loop().create_future()
            self._writer.coalesce(fn, future)
            result, tx = await future
            self._publish(tx)
            return result
        assert self._async is not None, "Database.start() was not awaited"
        if alone:
            result, tx = await self._write_pg_alone(fn)
        else:
            result, tx = await self._join_pg_group(fn, lock_order, prelude)
        self._publish(tx)
        return result

    async def _join_pg_group(
        self, fn: Callable[[Tx], T], lock_order: str, prelude: GroupPrelude | None
    ) -> tuple[T, Tx]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, Tx]] = loop.create_future()
        self._pg_pending.append(_PgWrite(lock_order, fn, future, prelude))
        if len(self._pg_pending) == 1:
            loop.call_soon(self._flush_pg_pending)
        return cast(tuple[T, Tx], await future)

    def _flush_pg_pending(self) -> None:
        group, self._pg_pending = self._pg_pending, []
        group.sort(key=lambda member: member.lock_order)  # stable: callers' order within a key
        task = asyncio.ensure_future(self._run_pg_group(group))
        self._pg_groups.add(task)
        task.add_done_callback(self._pg_groups.discard)

    async def _run_pg_group(self, group: list[_PgWrite]) -> None:
        try:
            left = group
            if len(group) > 1:
                held = await self._commit_together(group)
                if held is not None and len(held) > 1:
                    # Their rows were another transaction's (another worker's group commit,
                    # most often): once more together when it has likely committed.
                    await asyncio.sleep(_HELD_PAUSE_SECONDS)
                    again = await self._commit_together(held)
                    held = held if again is None else again
                left = group if held is None else held
            await asyncio.gather(*(self._commit_alone(member) for member in left))
        finally:  # cancelled (the loop is closing): no caller waits forever
            for member in group:
                member.future.cancel()

    async def _commit_together(self, group: list[_PgWrite]) -> list[_PgWrite] | None:
        """One transaction for the group, but for the members whose rows a prelude found held
        elsewhere: those are returned, uncommitted. None if the transaction failed (nothing
        was written)."""
        try:
            outcomes = await self._write_pg_group(
                [member.fn for member in group],
                [(m.prelude, m.lock_order) if m.prelude else None for m in group],
            )
        except Exception:  # each member runs again alone, and reports its own error
            return None
        held = []
        for member, outcome in zip(group, outcomes, strict=True):
            if outcome is None:
                held.append(member)
            elif not member.future.done():  # its caller may have been cancelled
                member.future.set_result(outcome)
        return held

    async def _commit_alone(self, member: _PgWrite) -> None:
        try:
            outcome = await self._write_pg_alone(member.fn)
        except Exception as exc:
            if not member.future.done():
                member.future.set_exception(exc)
        else:
            if not member.future.done():
                member.future.set_result(outcome)

    async def _write_pg_alone(self, fn: Callable[[Tx], T]) -> tuple[T, Tx]:
        for attempt in range(8):
            try:
                (outcome,) = await self._write_pg_group([fn], [None], lock_timeout=False)
                assert outcome is not None  # with no prelude, no member is held back
                return outcome
            except DBAPIError as exc:
                # A dropped connection is retried too: the engine's transactions are conditional
                # (a result already written raises StaleClaim instead of applying twice).
                if attempt < 7 and (_is_transient(exc) or exc.connection_invalidated):
                    await asyncio.sleep(0.005 * (2**attempt))
                    continue
                raise
        raise AssertionError("unreachable")

    async def _write_pg_group(
        self,
        fns: list[Callable[[Tx], T]],
        locks: list[tuple[GroupPrelude, str] | None],
        *,
        lock_timeout: bool = True,
    ) -> list[tuple[T, Tx] | None]:
        """Run ``fns`` in one transaction, after the preludes their ``locks`` name (with
        the key each passes): each with its own ``Tx`` (and clock), all sharing the rows
        inserted before COMMIT, what the engine accumulates (the preludes' locked rows among
        it), the commit-order locks and the notifications. A member whose key a prelude found
        held elsewhere does not run: its outcome is None."""
        assert self._async is not None
        preludes: dict[GroupPrelude, list[str]] = {}
        for lock in locks:
            if lock is not None:
                preludes.setdefault(lock[0], []).append(lock[1])
        async with self._async.begin() as conn:

            def run(sync_conn: Connection) -> list[tuple[T, Tx] | None]:
                if lock_timeout:
                    sync_conn.execute(_GROUP_LOCK_TIMEOUT)
                deferred: dict[Any, list[dict[str, Any]]] = {}
                accumulators: dict[str, dict[str, Any]] = {}
                held: set[tuple[GroupPrelude, str]] = set()
                for prelude, keys in preludes.items():
                    busy = prelude(Tx(sync_conn, self.dialect, accumulators=accumulators), keys)
                    held.update((prelude, key) for key in busy)
                outcomes: list[tuple[T, Tx] | None] = []
                for fn, lock in zip(fns, locks, strict=True):
                    if lock in held:
                        outcomes.append(None)
                        continue
                    tx = Tx(sync_conn, self.dialect, deferred=deferred, accumulators=accumulators)
                    outcomes.append((fn(tx), tx))
                ran = [outcome[1] for outcome in outcomes if outcome is not None]
                _lock_commit_order(sync_conn, set().union(*(tx.ordered_by for tx in ran)))
                _insert_deferred(sync_conn, deferred)
                _notify(sync_conn, set().union(*(tx.notify for tx in ran)))
                return outcomes

            return await conn.run_sync(run)

    async def read(self, fn: Callable[[Tx], T], *, point: bool = False) -> T:
        """Run ``fn`` in a read-only snapshot.

        ``point=True`` says ``fn`` reads a few rows by key (an API request's access check): on
        SQLite it then runs on this thread, which costs less than the hop to a reader thread
        and back; WAL readers never wait for the writer."""
        if self._readers is not None:
            assert self._sync_read is not None
            engine = self._sync_read

            def run() -> T:
                with engine.connect() as conn, conn.begin():
                    return fn(Tx(conn, self.dialect))

            if point:
                return run()
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        assert self._async is not None, "Database.start() was not awaited"
        # A point read runs in autocommit: one round trip instead of BEGIN, SELECT, ROLLBACK.
        source = self._autocommit if point and self._autocommit else self._async
        for attempt in range(3):
            try:
                async with source.connect() as conn:
                    result: T = await conn.run_sync(lambda c: fn(Tx(c, self.dialect)))
                    return result
            except DBAPIError as exc:
                # A pooled connection the server dropped: retried on a fresh one (reads are
                # harmless to repeat), rather than pinging every connection on checkout.
                if attempt < 2 and exc.connection_invalidated:
                    continue
                raise
        raise AssertionError("unreachable")


@dataclass
class _PgWrite:
    """A write waiting for the next PostgreSQL group commit."""

    lock_order: str
    fn: Callable[[Tx], Any]
    future: asyncio.Future[tuple[Any, Tx]]
    prelude: GroupPrelude | None


# Longer than a commit's own lock waits take; a group stuck behind another group's row lock
# (perhaps in a deadlock) gives up and runs its members alone instead.
_GROUP_LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '50ms'")
_HELD_PAUSE_SECONDS = 0.02  # before members whose rows were held elsewhere try together again


def _is_transient(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code in {"40001", "40P01"}  # serialization failure, deadlock detected


class _SqliteWriter:
    """The single writer thread with group commit (see the module docstring)."""

    def __init__(self, engine: Engine, db: Database) -> None:
        self._engine = engine
        self._db = db
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn = engine.connect()
        raw = self._conn.connection.dbapi_connection
        assert raw is not None
        # The event loop thread must never sleep in SQLite's busy handler: BEGIN fails at once
        # when another process holds the write lock, and the writer thread waits instead.
        raw.execute("PRAGMA busy_timeout=0")
        self._lock = threading.Lock()  # whoever holds it owns the write connection
        self._pending: list[Any] = []
        self._thread = threading.Thread(target=self._main, name="agentmill-writer", daemon=True)
        self._thread.start()

    def coalesce(self, fn: Callable[[Tx], Any], future: asyncio.Future[Any]) -> None:
        """Queue ``fn`` for one transaction with every other write asked for in this turn of the
        event loop; the batch then runs on the loop thread if the writer thread is idle (no GIL
        ping-pong between threads), else on the writer thread."""
        self._pending.append((fn, future, future.get_loop()))
        if len(self._pending) == 1:
            future.get_loop().call_soon(self._flush_pending)

    def _flush_pending(self) -> None:
        batch, self._pending = self._pending, []
        if not self._queue.empty() or not self._lock.acquire(blocking=False):
            for item in batch:
                self._queue.put(item)
            return
        try:
            done = self._run_batch(self._conn, batch, same_thread=True)
        finally:
            self._lock.release()
        if not done:  # another process holds the write lock: let the writer thread wait for it
            for item in batch:
                self._queue.put(item)

    def try_inline(self, fn: Callable[[Tx], Any]) -> tuple[bool, Any, Tx | None] | None:
        """Run ``fn`` now on the caller's thread if the writer is idle; None if it is busy."""
        if not self._queue.empty() or not self._lock.acquire(blocking=False):
            return None
        try:
            outcomes = self._attempt(self._conn, [(fn, None, None)], wait=False)
        finally:
            self._lock.release()
        if outcomes is _BUSY:
            return None
        assert isinstance(outcomes, list)
        first: tuple[bool, Any, Tx | None] = outcomes[0]
        return first

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _main(self) -> None:
        conn = self._conn
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                batch = [item]
                stop = False
                while len(batch) < _BATCH_LIMIT:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                with self._lock:
                    self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: Connection, batch: list[Any], *, same_thread: bool = False) -> bool:
        """One commit for the whole batch. Transactions rarely fail (a stale result, a conflict),
        so the batch runs without savepoints; if one raises, the batch is rolled back and each
        transaction is run again on its own, so a failure never affects the others."""
        wait = not same_thread
        outcomes = self._attempt(conn, batch, wait=wait) if len(batch) > 1 else None
        if outcomes is _BUSY:
            return False
        if outcomes is None:
            outcomes = []
            for item in batch:
                single = self._attempt(conn, [item], wait=wait)
                if single is _BUSY:  # only before anything ran: the rest go to the thread
                    return self._requeue_rest(batch, outcomes, same_thread)
                assert isinstance(single, list)
                outcomes.append(single[0])
        assert isinstance(outcomes, list)
        self._resolve_all(batch, outcomes, same_thread)
        return True

    def _requeue_rest(self, batch: list[Any], outcomes: list[Any], same_thread: bool) -> bool:
        self._resolve_all(batch[: len(outcomes)], outcomes, same_thread)
        for item in batch[len(outcomes) :]:
            self._queue.put(item)
        return True

    @staticmethod
    def _resolve_all(batch: list[Any], outcomes: list[Any], same_thread: bool) -> None:
        for (ok, value, tx), (_fn, future, loop) in zip(outcomes, batch, strict=True):
            if same_thread:
                _resolve(future, ok, value, tx)
            else:
                loop.call_soon_threadsafe(_resolve, future, ok, value, tx)

    def _attempt(
        self, conn: Connection, batch: list[Any], *, wait: bool
    ) -> list[tuple[bool, Any, Tx | None]] | object | None:
        """Run ``batch`` in one transaction. Returns None if a multi-item batch had a failure,
        and ``_BUSY`` if ``wait`` is false and another process holds the write lock.

        BEGIN and COMMIT go straight to the driver (SQLAlchemy's transaction bookkeeping costs
        more than the commit itself here); a statement that autobegins a SQLAlchemy transaction
        inside it is committed through SQLAlchemy, so its state stays right."""
        raw = conn.connection.dbapi_connection
        assert raw is not None
        outcomes: list[tuple[bool, Any, Tx | None]] = []
        try:
            if not _begin_immediate(raw, wait=wait):
                return _BUSY
        except BaseException as exc:  # locked for longer than the busy timeout
            return [(False, exc, None)] * len(batch)
        try:
            now = datetime.now(UTC)
            deferred: dict[Any, list[dict[str, Any]]] = {}  # shared by the batch
            accumulators: dict[str, dict[str, Any]] = {}
            for fn, _future, _loop in batch:
                tx = Tx(conn, "sqlite", now=now, deferred=deferred, accumulators=accumulators)
                outcomes.append((True, fn(tx), tx))
            _insert_deferred(conn, deferred)
        except BaseException as exc:  # handed to the caller
            _rollback(conn, raw)
            if len(batch) > 1:
                return None
            return [(False, exc, None)]
        try:
            if conn.in_transaction():
                conn.commit()
            if raw.in_transaction:
                raw.execute("COMMIT")
        except BaseException as exc:  # the commit failed: nothing was written
            _rollback(conn, raw)
            return [(False, exc, None)] * len(batch)
        return outcomes


_BUSY = object()
_BUSY_TIMEOUT_S = 30.0


def _begin_immediate(raw: Any, *, wait: bool) -> bool:
    """Take SQLite's write lock. Without ``wait``, False if another process holds it; with it,
    retry with backoff for up to 30 s (what SQLite's busy handler would do, but only here)."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if not wait:
                return False
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _rollback(conn: Connection, raw: Any) -> None:
    if conn.in_transaction():
        conn.rollback()
    if raw.in_transaction:
        raw.execute("ROLLBACK")


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any, tx: Tx | None) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result((value, tx))
    else:
        future.set_exception(value)


class _Checkpointer:
    """Copies the SQLite WAL back into the database file every second, off the commit path.

    PASSIVE checkpoints never block readers or the writer; the final one at shutdown truncates
    the WAL so a stopped database is a single file again."""

    INTERVAL = 1.0

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="agentmill-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _main(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._checkpoint("PASSIVE")
        self._checkpoint("TRUNCATE")

    def _checkpoint(self, mode: str) -> None:
        try:
            raw = self._engine.raw_connection()
            try:
                raw.driver_connection.execute(f"PRAGMA wal_checkpoint({mode})")  # type: ignore[union-attr]
            finally:
                raw.close()
        except Exception:  # a busy database just waits for the next round
            return
