"""Redis Streams as the step queue (``AGENTMILL_QUEUE_URL=redis://host:6379/0``).

One stream per database and named queue with one consumer group, ``workers``; each message
carries a step id. The ``default`` queue's stream is ``agentmill:<database>:steps`` (its name
from before named queues), any other queue's is ``agentmill:<database>:steps:<queue>``.

* **Publishing (an outbox).** A step becomes ready in the transaction that records it; a relay
  in every worker then marks ready steps as sent (``steps.published_at``, ``FOR UPDATE SKIP
  LOCKED``, committed) and ``XADD``s each to its queue's stream (a relay sends every queue's
  steps, whichever queues its worker serves). A crash between the two cannot lose a step: a step
  still ready long after it was sent is sent again. A rolled-back step is never sent, because
  the relay reads only committed rows. A retry or a step given back becomes due again by itself
  (its ``available_at`` moves past ``published_at``). The relay wakes on this process's commits,
  on other processes' ``NOTIFY``, when a retry falls due, and every poll interval.
* **Delivery.** ``XREADGROUP`` reads, over the streams of the queues the worker serves, only
  as many messages as the worker has free slots; the worker then claims those steps in the
  database. A take reads what is waiting (up to its limit) without blocking; a reader blocks
  in ``XREADGROUP`` only once the streams are drained, and wakes the worker when a message
  comes. A worker that serves every queue finds the streams by name (``SCAN``) as they
  appear. A message whose step cannot start (finished, cancelled, already running elsewhere)
  is acknowledged and dropped; one whose step's row another transaction held for a moment
  (claims skip locked rows) is offered again; a claimed one stays pending until the step's
  result is recorded, and its idle time is reset with every lease heartbeat.
* **Lost workers.** A worker declared lost (silent past the liveness window, see
  ``engine/worker.py``) has its pending messages claimed by the worker that declared it,
  sent again as new messages and acknowledged, and its consumer deleted: its steps, whose
  leases that declaration expired, are read and claimed by any worker at once.
* **Dead workers.** ``XAUTOCLAIM`` (per stream) takes over messages idle for longer than a lease: their
  worker stopped heartbeating, so their steps' leases have expired and the claim takes them
  over. A step whose message is gone (trimmed, or Redis restarted without its data) and whose
  lease expired is sent again by the relay.
* **Redis down.** Reads, acknowledgements and sends back off and retry; nothing is lost because
  the database still says which steps are ready, and the relay sends them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.engine import make_url

from agentmill.domain.spec import DEFAULT_QUEUE
from agentmill.engine.alarm import Alarm
from agentmill.engine.claims import Claim
from agentmill.store.db import Tx
from agentmill.store.notify import STEPS_CHANNEL

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine

log = structlog.get_logger("agentmill.queue")

GROUP = "workers"
PUBLISH_BATCH = 500
MAX_LENGTH = 1_000_000  # approximate trim; a trimmed unread message is sent again (see above)
_BUSY_RETRY_SECONDS = 0.02  # how soon a step whose row was locked is offered again
# A Redis that accepts but does not answer (stuck, or cut off without a reset) fails a call
# after this long instead of stalling the worker's loop; longer than a blocking read's second.
SOCKET_TIMEOUT = 5.0


def stream_name(database_url: str, queue: str = DEFAULT_QUEUE) -> str:
    """One stream per database and named queue, so deployments can share a Redis server."""
    database = make_url(database_url).database or "agentmill"
    base = f"agentmill:{Path(database).name}:steps"
    return base if queue == DEFAULT_QUEUE else f"{base}:{queue}"


class RedisQueue:
    name = "redis"

    def __init__(
        self,
        url: str,
        engine: Engine,
        *,
        owner: str,
        free: Callable[[], int],
        queues: tuple[str, ...] | None = None,
    ) -> None:
        self._redis = redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=10,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        self._engine = engine
        self._owner = owner
        self._free = free
        self._queues = queues  # the named queues served; None: every queue
        self._all = queues is None
        # The streams read: those of the queues served (found by SCAN when serving all).
        names = (DEFAULT_QUEUE,) if queues is None else queues
        self._streams = [stream_name(engine.db.url, q) for q in dict.fromkeys(names)]
        self._next_scan = 0.0  # loop time of the next look for new streams (serving all)
        lease = engine.settings.lease_seconds
        self._idle_ms = int(lease * 1000)  # a message idle this long lost its worker
        self._redeliver_after = max(5.0, 2 * lease)
        self._poll = engine.settings.poll_interval
        # (stream, message id, step id), read but not taken
        self._buffer: list[tuple[str, str, str]] = []
        self._messages: dict[str, list[tuple[str, str]]] = {}  # step id -> (stream, message id)
        self._relay_wake = Alarm()
        self._drained = asyncio.Event()  # the last read found no more waiting: block for more
        self._drained.set()
        self._wake: Callable[[], None] = lambda: None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], object]] = []
        self._next_sweep = 0.0  # loop time of the next look for lost messages
        self._groups: set[str] = set()  # streams whose consumer group exists
        self._unacked: list[tuple[str, str]] = []  # finished, for the next acknowledgement
        self._acking: asyncio.Task[None] | None = None  # the next acknowledgement, not begun
        self._acks: set[asyncio.Task[None]] = set()  # acknowledgements under way

    # ------------------------------------------------------------------ the worker's side

    async def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._unsubscribe = [
            self._engine.db.subscribe(self._on_local_events),
            self._engine.db.subscribe_remote(self._on_remote),
        ]
        for name, loop in (
            ("read", self._read_loop),
            ("relay", self._relay_loop),
            ("reclaim", self._reclaim_loop),
        ):
            self._tasks.append(asyncio.create_task(self._forever(name, loop)))

    async def take(self, limit: int) -> list[Claim]:
        if len(self._buffer) < limit:
            await self._read_waiting(limit - len(self._buffer))
        batch, self._buffer = self._buffer[:limit], self._buffer[limit:]
        if not batch:
            return []
        transitions = self._engine.transitions
        wanted = [step_id for _, _, step_id in batch]

        def claim(tx: Tx) -> tuple[list[Claim], set[str]]:
            claims = transitions.claim_ids(
                tx, owner=self._owner, step_ids=wanted, queues=self._queues
            )
            skipped = set(wanted) - {c.step_id for c in claims}
            return claims, transitions.still_claimable(tx, skipped, self._queues)

        try:
            claims, busy = await self._engine.db.write(claim)
        except BaseException:
            # Not taken: they are read again at the next take, not left pending on this
            # consumer until another worker takes them over a lease later.
            self._buffer[:0] = batch
            raise
        claimed = {c.step_id for c in claims}
        drop = []
        again = []
        for stream, message_id, step_id in batch:
            if step_id in claimed:
                self._messages.setdefault(step_id, []).append((stream, message_id))
            elif step_id in busy:  # its row was locked for a moment: offered again shortly
                again.append((stream, message_id, step_id))
            else:  # finished, cancelled, running elsewhere, or a duplicate
                drop.append((stream, message_id))
        if again:
            # Dropped, its step would wait for the relay's sweep for lost messages (a minute).
            self._buffer.extend(again)
            asyncio.get_running_loop().call_later(_BUSY_RETRY_SECONDS, self._wake)
        await self._ack(drop)
        return claims

    async def done(self, step_ids: Iterable[str]) -> None:
        messages = [m for step_id in step_ids for m in self._messages.pop(step_id, [])]
        if not messages:
            return
        # Steps whose results one group commit recorded all finish in the same turn of the
        # event loop: one XACK per stream acknowledges them all (one each cost a round trip
        # and a fifth of a busy worker's time).
        self._unacked.extend(messages)
        if self._acking is None:
            self._acking = asyncio.ensure_future(self._ack_unacked())
            self._acks.add(self._acking)
            self._acking.add_done_callback(self._acks.discard)
        await asyncio.shield(self._acking)  # a caller cancelled (closing) leaves it to finish

    async def _ack_unacked(self) -> None:
        messages, self._unacked = self._unacked, []
        self._acking = None  # what finishes from now on goes in the next batch
        await self._ack(messages)

    async def keep_alive(self, step_ids: Iterable[str]) -> None:
        by_stream = _by_stream(m for step_id in step_ids for m in self._messages.get(step_id, []))
        for stream, ids in by_stream.items():
            with contextlib.suppress(RedisError, OSError):  # the next heartbeat tries again
                # Resets their idle time: no one takes them over while we run them.
                await self._redis.xclaim(stream, GROUP, self._owner, 0, list[Any](ids), justid=True)

    async def take_over(self, owners: Iterable[str]) -> None:
        """Send again, as new messages, what the lost consumers had pending (the steps they
        ran, and what they had read but not taken), acknowledge the old ones and drop those
        consumers: any worker with a free slot reads them now. If this fails, XAUTOCLAIM takes
        the old messages over once they have been idle for a lease."""
        for stream in list(self._streams):
            for owner in owners:
                with contextlib.suppress(RedisError, OSError):
                    await self._resend_pending(stream, owner)

    async def _resend_pending(self, stream: str, owner: str) -> None:
        while True:
            pending: Any = await self._redis.xpending_range(
                stream, GROUP, min="-", max="+", count=PUBLISH_BATCH, consumername=owner
            )
            if not pending:
                break
            ids: list[Any] = [entry["message_id"] for entry in pending]
            # Claimed first: of two workers doing this at once, only one gets each message.
            claimed: Any = await self._redis.xclaim(stream, GROUP, self._owner, 0, ids)
            if claimed:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for _, fields in claimed:
                        if fields and "step" in fields:
                            pipe.xadd(stream, {"step": fields["step"]}, maxlen=MAX_LENGTH)
                    pipe.xack(stream, GROUP, *[mid for mid, _ in claimed])
                    await pipe.execute()
            log.info("sent again the messages of a lost worker", messages=len(ids), owner=owner)
            if not claimed or len(pending) < PUBLISH_BATCH:
                break
        await self._redis.xgroup_delconsumer(stream, GROUP, owner)

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._relay_wake.cancel_pending()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._acks, return_exceptions=True)
        await self._hand_back()
        await self._redis.aclose()

    async def _hand_back(self) -> None:
        """Messages read but not taken go back to the stream for other workers now, rather
        than wait, pending on this consumer, until someone takes them over."""
        unread, self._buffer = self._buffer, []
        if not unread:
            return
        with contextlib.suppress(RedisError, OSError):  # else: taken over after a lease
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream, _, step_id in unread:
                    pipe.xadd(stream, {"step": step_id}, maxlen=MAX_LENGTH)
                for stream, ids in _by_stream((s, m) for s, m, _ in unread).items():
                    pipe.xack(stream, GROUP, *ids)
                await pipe.execute()

    # ------------------------------------------------------------------ loops

    async def _forever(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        failures = 0
        while True:
            try:
                await loop()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the database unreachable: back off, go on
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning(f"queue {name} failed; retrying", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)

    async def _read_waiting(self, count: int) -> None:
        """Read, without waiting, up to ``count`` messages already in the streams. Steps that
        finished together free their slots together: read here, at the take, their successors
        are claimed together too (the reader, which reads as soon as a slot is free, took them
        a few at a time). Short of ``count``, the streams are drained: the reader waits for
        the next message."""
        try:
            got = await self._read(count)
        except (RedisError, OSError):  # the reader finds out too (NOGROUP, Redis down)
            got = 0
        if got < count:
            self._drained.set()
        else:
            self._drained.clear()

    async def _read_loop(self) -> None:
        await self._drained.wait()  # while messages are waiting, takes read them
        room = self._free() - len(self._buffer)
        if room <= 0:
            await asyncio.sleep(0.02)
            return
        if self._all:
            await self._find_streams()
        held = 0
        try:
            got = await self._read(room, block=1000)
            while got:
                held += got
                # A relay sends many steps at once, but Redis wakes a blocked reader with what
                # had come by then, often a single message: read what came since, without
                # waiting, so that the worker claims them in one transaction, not one by one.
                got = await self._read(room - held) if held < room else 0
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.clear()  # Redis restarted without its data
            await self._ensure_groups()
        finally:
            if held:
                self._drained.clear()  # the next take reads what else came
                self._wake()

    async def _read(self, count: int, block: int | None = None) -> int:
        """``XREADGROUP`` up to ``count`` new messages over the streams served (waiting up to
        ``block`` ms for the first), held for the next takes; how many came."""
        answer = await _completed(
            self._redis.xreadgroup(
                GROUP, self._owner, dict.fromkeys(self._streams, ">"), count=count, block=block
            ),
            self._hold_answer,  # cancelled (closing): held, so handed back
        )
        return self._hold_answer(answer)

    def _hold_answer(self, answer: Any) -> int:
        """Buffer the messages of an XREADGROUP answer; how many there were."""
        streams: Any = answer or []  # RESP2: [[stream, entries]]; RESP3: {stream: entries}
        pairs = streams.items() if isinstance(streams, dict) else streams
        return sum(self._hold(stream, entries) for stream, entries in pairs)

    async def _find_streams(self) -> None:
        """Serving every queue: read the streams of queues that appeared since the last look."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_scan:
            return
        self._next_scan = loop.time() + self._poll
        base = stream_name(self._engine.db.url)
        found = [
            key
            async for key in self._redis.scan_iter(match=f"{base}:*", count=1000, _type="stream")
        ]
        new = [key for key in sorted(found) if key not in self._streams]
        if new:
            self._streams.extend(new)
            await self._ensure_groups()

    async def _reclaim_loop(self) -> None:
        await asyncio.sleep(self._idle_ms / 2000)
        room = self._free() - len(self._buffer)
        if room <= 0:
            return
        for stream in list(self._streams):
            room = self._free() - len(self._buffer)
            if room <= 0:
                return
            try:
                _, entries, _deleted = await _completed(
                    self._redis.xautoclaim(
                        stream, GROUP, self._owner, self._idle_ms, "0-0", count=room
                    ),
                    functools.partial(self._receive_claimed, stream),
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                continue  # the read loop creates the group again
            if entries:
                log.info(
                    "took over messages of a silent worker", messages=len(entries), stream=stream
                )
            self._receive(stream, entries)

    def _receive_claimed(self, stream: str, answer: Any) -> None:
        self._receive(stream, answer[1])

    def _receive(self, stream: str, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        if self._hold(stream, entries):
            self._wake()

    def _hold(self, stream: str, entries: Iterable[tuple[str, dict[str, str]]]) -> int:
        received = [
            (stream, mid, fields["step"]) for mid, fields in entries if fields and "step" in fields
        ]
        self._buffer.extend(received)
        return len(received)

    async def _relay_loop(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._relay_wake.wait(), timeout=self._poll)
        self._relay_wake.clear()
        await self._ensure_groups()
        loop = asyncio.get_running_loop()
        sweep = loop.time() >= self._next_sweep
        if sweep:
            self._next_sweep = loop.time() + self._redeliver_after / 2
        transitions = self._engine.transitions
        redeliver = self._redeliver_after if sweep else None
        while True:
            due = await self._engine.db.write(
                lambda tx: transitions.to_publish(
                    tx, limit=PUBLISH_BATCH, redeliver_after=redeliver
                )
            )
            if due:
                url = self._engine.db.url
                async with self._redis.pipeline(transaction=False) as pipe:
                    for step_id, queue in due:
                        pipe.xadd(stream_name(url, queue), {"step": step_id}, maxlen=MAX_LENGTH)
                    await pipe.execute()
            if len(due) < PUBLISH_BATCH:
                return

    async def _ensure_groups(self) -> None:
        """The consumer group of every stream read. A group starts at the stream's first
        message, so what a relay sent before any worker of its queue started is delivered."""
        for stream in self._streams:
            if stream in self._groups:
                continue
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(stream)

    async def _ack(self, messages: list[tuple[str, str]]) -> None:
        """Acknowledge (stream, message id) pairs."""
        # A lost acknowledgement is harmless: the message is taken over later, its step is
        # found finished, and it is acknowledged then.
        for stream, ids in _by_stream(messages).items():
            with contextlib.suppress(RedisError, OSError):
                await self._redis.xack(stream, GROUP, *ids)

    # ------------------------------------------------------------------ relay wake-ups

    def _on_local_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind = event["type"]
            if kind in ("step.queued", "step.released"):
                self._relay_wake.set()
            elif kind == "step.retrying":
                self._relay_wake.set_after(float(event["data"].get("delay", 0)))

    def _on_remote(self, channel: str, payload: str) -> None:
        if channel == STEPS_CHANNEL:
            self._relay_wake.set_after(float(payload or 0))


def _by_stream(messages: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Message ids grouped by their stream."""
    grouped: dict[str, list[str]] = {}
    for stream, message_id in messages:
        grouped.setdefault(stream, []).append(message_id)
    return grouped


async def _completed(call: Awaitable[Any], on_cancel: Callable[[Any], object]) -> Any:
    """Await a read that delivers messages; if we are cancelled meanwhile (closing), still wait
    for its answer and pass it to ``on_cancel``: Redis has already made those messages pending
    on this consumer, and only what we hold can be handed back when the worker closes."""
    read = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(read)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            on_cancel(await read)  # bounded: the read blocks for at most a second
        raise
