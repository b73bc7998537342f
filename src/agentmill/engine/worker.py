"""The worker loop: claim ready steps, run them concurrently on asyncio, record their results.

One worker runs up to ``concurrency`` steps at once. It wakes when a transaction in this process
made a step ready, when one of its steps finishes, when a retry falls due, and otherwise every
``poll_interval`` (for work made ready by other processes and for expired leases). A heartbeat
extends its leases and cancels steps that were cancelled or taken over elsewhere.

Liveness: a shared worker reports itself in ``workers`` every ``worker_heartbeat_seconds``. One
silent for ``worker_liveness_seconds`` (SIGKILLed, its host gone) is declared lost by another
live worker, in one transaction that also expires the leases of the steps it held, so they run
again within seconds instead of a lease later. Only a worker that has itself reported without a
gap for a whole window declares others: after a database outage (when every worker went
silent) or a pause of its own, it first gives the others a window to report again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError

from agentmill.domain.backoff import backoff_delay
from agentmill.domain.spec import DEFAULT_QUEUE, HumanStep, NotifySpec
from agentmill.engine.alarm import Alarm
from agentmill.engine.claims import Claim, StaleClaim, worker_identity
from agentmill.engine.executor import execute
from agentmill.engine.outcomes import Failed, StepReport, WaitForHuman
from agentmill.engine.webhooks import announce
from agentmill.gateway.types import CallReport
from agentmill.queue import StepQueue, open_queue
from agentmill.store.db import Tx
from agentmill.store.notify import STEPS_CHANNEL
from agentmill.store.repositories import workers

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine

log = structlog.get_logger("agentmill.worker")
_DEADLINE_SWEEP_SECONDS = 1.0
# Steps claimed in one transaction at most. A worker with thousands of free slots claims in
# batches: the first steps start while later ones are claimed, and no lease is stamped long
# before its claim commits.
_CLAIM_BATCH = 256
_DELIVERY_GRACE_SECONDS = 15.0
_RECORD_RETRIES = 10  # about 10 s of waiting for the database before leaving it to the lease
# Errors that say the result itself cannot be stored; retrying would not help.
_REFUSED = (IntegrityError, DataError, ProgrammingError, TypeError, ValueError)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class Worker:
    def __init__(
        self,
        engine: Engine,
        *,
        name: str | None = None,
        concurrency: int = 1000,
        root_run_id: str | None = None,
        poll_interval: float = 0.5,
        grace_seconds: float = 0.0,
        queues: tuple[str, ...] | None = (DEFAULT_QUEUE,),
    ) -> None:
        self.engine = engine
        # The named queues whose steps this worker runs (None: every queue).
        self.queues = None if queues is None else tuple(dict.fromkeys(queues))
        self._serves = None if queues is None else frozenset(queues)
        self.owner = worker_identity(name)
        self.name = name or "worker"
        self.concurrency = concurrency
        self.root_run_id = root_run_id
        self.poll_interval = poll_interval
        self.grace_seconds = grace_seconds
        self._hurry = asyncio.Event()
        self.queue: StepQueue = open_queue(
            engine.settings.queue_url,
            engine,
            owner=self.owner,
            free=lambda: 0 if self._stopping else self.concurrency - len(self._tasks),
            root_run_id=root_run_id,
            queues=self.queues,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._claims: dict[str, Claim] = {}
        self._lost: set[str] = set()
        # Steps whose work is over: their tasks record the result and acknowledge the queue.
        # Nothing there needs cancelling (the record is conditional: a lease really lost makes
        # it raise StaleClaim), and a lease the heartbeat finds gone because the result was
        # just committed is not lost; cancelling would skip the acknowledgement.
        self._finishing: set[str] = set()
        self._wake = Alarm()
        self._stopping = False
        self._unsubscribe: Callable[[], object] | None = None
        self._saturated = False  # the last claim filled every free slot: more may be waiting
        self._deliveries: set[asyncio.Task[None]] = set()  # webhooks of waiting steps

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def hurry(self) -> None:
        """Stop waiting for in-flight steps to finish (a second Ctrl-C)."""
        self._hurry.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set. Then take no more work, give in-flight steps up to
        ``grace_seconds`` to finish, cancel the rest and give their leases back."""
        if self.root_run_id is None:  # a shared worker reports in (a CLI run's does not)
            await self._report(register=True)
        await self.queue.start(self._wake.set)
        unsubscribe_local = self.engine.db.subscribe(self._on_events)
        unsubscribe_remote = self.engine.db.subscribe_remote(self._on_remote)
        self._unsubscribe = lambda: (unsubscribe_local(), unsubscribe_remote())
        heartbeat = asyncio.create_task(self._heartbeat())
        liveness = asyncio.create_task(self._liveness()) if self.root_run_id is None else None
        transitions = self.engine.transitions
        root = self.root_run_id
        try:
            next_sweep = 0.0
            released = False
            failures = 0
            while not stop.is_set():
                self._wake.clear()
                try:
                    if not released:
                        await self.engine.db.write(
                            lambda tx: transitions.release_dead_leases(tx, root)
                        )
                        released = True
                    free = self.concurrency - len(self._tasks)
                    if free > 0:
                        wanted = min(free, _CLAIM_BATCH)
                        claims = await self._claim(wanted)
                        self._saturated = len(claims) == wanted
                        for claim in claims:
                            self._spawn(claim)
                        if self._saturated and wanted < free:
                            self._wake.set()  # more may be ready: claim again at once
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + _DEADLINE_SWEEP_SECONDS
                        await self.engine.expire(root)
                    failures = 0
                except Exception as exc:  # the database is unreachable or busy: back off, retry
                    failures += 1
                    delay = backoff_delay(failures + 1, base=0.1, cap=5.0)
                    log.warning("worker loop failed; retrying", error=str(exc), retry_in=delay)
                    await _sleep_or_stop(stop, delay)
                    continue
                stop_wait = asyncio.ensure_future(stop.wait())
                wake_wait = asyncio.ensure_future(self._wake.wait())
                timeout = min(self.poll_interval, _DEADLINE_SWEEP_SECONDS)
                await asyncio.wait(
                    {stop_wait, wake_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                stop_wait.cancel()
                wake_wait.cancel()
        finally:
            self._stopping = True
            self._wake.cancel_pending()
            if self._unsubscribe is not None:
                self._unsubscribe()
            await self._drain()  # heartbeats go on meanwhile: long steps keep their leases
            heartbeat.cancel()
            if liveness is not None:
                liveness.cancel()
            await self._shutdown()
            await self._finish_deliveries()
            await self.queue.close()
            if self.root_run_id is None:
                await self._report(stopped=True)

    async def _drain(self) -> None:
        if not self._tasks or self.grace_seconds <= 0:
            return
        log.info("finishing in-flight steps", steps=len(self._tasks), grace=self.grace_seconds)
        deadline = asyncio.get_running_loop().time() + self.grace_seconds
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while self._tasks and not self._hurry.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                await asyncio.wait(
                    {*self._tasks.values(), hurry},
                    timeout=left,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            hurry.cancel()
        if self._tasks:
            log.warning("grace period over; giving unfinished steps back", steps=len(self._tasks))

    async def _finish_deliveries(self) -> None:
        """Webhooks under way get a little time to finish (their retries included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DELIVERY_GRACE_SECONDS
        while self._deliveries and loop.time() < deadline:  # a recorded wait adds its webhook
            await asyncio.wait(set(self._deliveries), timeout=deadline - loop.time())
        if self._deliveries:
            log.warning("stopped before webhooks were delivered", webhooks=len(self._deliveries))
            for task in list(self._deliveries):
                task.cancel()

    async def _report(self, *, register: bool = False, stopped: bool = False) -> bool:
        """Keep this worker's row in ``workers`` current (liveness for /health)."""

        def write(tx: Tx) -> None:
            if register:
                host, pid, _ = self.owner.split(":", 2)
                workers.register_worker(
                    tx,
                    worker_id=self.owner,
                    name=self.name,
                    host=host,
                    pid=int(pid),
                    queue=self.queue.name,
                    queues=self.queues,
                    concurrency=self.concurrency,
                )
            else:
                workers.worker_heartbeat(
                    tx, self.owner, in_flight=len(self._tasks), stopped=stopped
                )

        try:
            await self.engine.db.write(write)
        except Exception as exc:  # liveness is best effort; the next heartbeat tries again
            log.warning("could not report worker liveness", error=str(exc))
            return False
        return True

    async def _liveness(self) -> None:
        """Report in every heartbeat; declare lost the workers silent past the window."""
        settings = self.engine.settings
        every = settings.worker_heartbeat_seconds
        window = settings.worker_liveness_seconds
        silent_for = timedelta(seconds=window)
        transitions = self.engine.transitions
        reported_since: float | None = None  # start of our own unbroken run of reports
        last_report = 0.0
        while True:
            await asyncio.sleep(every)
            ok = await self._report()
            now = time.monotonic()
            if not ok:
                reported_since = None
                continue
            if reported_since is None or now - last_report > window / 2:
                reported_since = now  # we were silent ourselves (outage, pause): wait a window
            last_report = now
            if now - reported_since < window:
                continue
            try:
                lost = await self.engine.db.write(
                    lambda tx: transitions.take_over_silent(
                        tx, me=self.owner, silent_for=silent_for
                    )
                )
            except Exception as exc:  # the next heartbeat looks again
                log.warning("could not look for lost workers", error=str(exc))
                continue
            if lost:
                log.warning("workers lost; taking their steps over", workers=lost)
                await self.queue.take_over(lost)
                self._wake.set()

    async def _shutdown(self) -> None:
        running = list(self._tasks.items())
        for _, task in running:
            task.cancel()
        if running:
            await asyncio.gather(*(task for _, task in running), return_exceptions=True)
            ids = [step_id for step_id, _ in running]
            with contextlib.suppress(Exception):
                await self.engine.db.write(
                    lambda tx: self.engine.transitions.release(tx, owner=self.owner, step_ids=ids)
                )
            await self.queue.done(ids)  # given back: the queue carries them again

    def _spawn(self, claim: Claim) -> None:
        task = asyncio.create_task(self._execute(claim), name=f"step:{claim.step_key}")
        self._tasks[claim.step_id] = task
        self._claims[claim.step_id] = claim

        def done(_: asyncio.Task[None], step_id: str = claim.step_id) -> None:
            self._tasks.pop(step_id, None)
            self._claims.pop(step_id, None)
            self._lost.discard(step_id)
            self._finishing.discard(step_id)
            if self._saturated:  # a slot opened while work may be queued
                self._wake.set()

        task.add_done_callback(done)

    async def _execute(self, claim: Claim) -> None:
        engine = self.engine
        compiled = await engine.compiled(claim.version_id, claim.spec_path)
        calls: list[CallReport] = []
        try:
            report = await execute(
                claim,
                compiled,
                engine.gateway,
                engine.tools,
                engine.db,
                engine.artifacts,
                engine.live,
                calls=calls,
            )
        except asyncio.CancelledError:  # lost, cancelled or shutting down: its calls were made
            await asyncio.shield(self._record_dropped(claim, calls))
            raise
        if claim.step_id in self._lost:
            await self._record_dropped(claim, calls)
            await self.queue.done([claim.step_id])
            return
        self._finishing.add(claim.step_id)
        capacity = max(0, self.concurrency - len(self._tasks) + 1) if not self._stopping else 0
        try:
            notify = _notify_spec(compiled.steps[claim.spec_id], report)
            if notify is None:
                claims = await self._record(claim, report, capacity)
            else:
                claims = await self._record_then_notify(claim, report, capacity, notify)
        except StaleClaim as exc:
            log.info("result dropped", step=claim.step_key, run_id=claim.run_id, reason=str(exc))
            await self._record_dropped(claim, calls)
            await self.queue.done([claim.step_id])
            return
        for next_claim in claims:  # before the acknowledgement, which a shutdown may cut short
            self._spawn(next_claim)
        await self.queue.done([claim.step_id])

    async def _record_dropped(self, claim: Claim, calls: list[CallReport]) -> None:
        """An attempt's result is dropped (its lease was lost, the step moved on), but its model
        calls were made and paid for: record them, tagged with the attempt, so that usage and
        budgets (which reload from these records) count them."""
        if not calls:
            return
        engine = self.engine
        made = tuple(calls)
        try:
            await engine.db.write(lambda tx: engine.transitions.record_calls(tx, claim, made))
        except Exception:
            log.exception("could not record a dropped attempt's calls", step=claim.step_key)

    async def _record_then_notify(
        self, claim: Claim, report: StepReport, capacity: int, notify: NotifySpec
    ) -> list[Claim]:
        """Record a wait, then deliver its webhook. Shielded: a worker told to stop the moment
        the run waits (``agentmill run``) still sends it, and waits for it on the way out."""
        assert isinstance(report.outcome, WaitForHuman)
        waiting = report.outcome
        record = asyncio.ensure_future(self._record(claim, report, capacity))

        def recorded(task: asyncio.Task[list[Claim]]) -> None:
            if not task.cancelled() and task.exception() is None:
                self._track(announce(self.engine, claim, notify, waiting))

        record.add_done_callback(recorded)
        self._track(record)
        return await asyncio.shield(record)

    def _track(self, work: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _record(self, claim: Claim, report: StepReport, capacity: int) -> list[Claim]:
        """Record a result. The database being unreachable or out of connections is retried
        (the write is conditional, so a retry cannot apply twice); if it stays so, the lease
        expires and another worker runs the step again. A result the database refuses (a bug,
        a value it cannot store) is recorded as the step's failure instead of leaving the
        step running until its lease expires."""
        engine = self.engine
        for attempt in range(_RECORD_RETRIES):
            try:
                return await engine.db.write(
                    lambda tx: engine.transitions.record(
                        tx, claim, report, capacity=capacity, queues=self._serves
                    ),
                    alone=self._alone(),
                    lock_order=claim.run_id,
                    prelude=engine.transitions.lock_runs,
                )
            except StaleClaim:
                raise
            except _REFUSED as exc:
                return await self._record_refused(claim, report, exc)
            except Exception as exc:  # unreachable, restarting, out of connections: wait
                if attempt == _RECORD_RETRIES - 1:
                    break
                delay = min(2.0, 0.05 * 2**attempt)
                log.warning(
                    "could not record a step result; retrying",
                    step=claim.step_key,
                    run_id=claim.run_id,
                    error=str(exc)[:300],
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
        log.error(
            "database unavailable: result not recorded; the step runs again after its lease",
            step=claim.step_key,
            run_id=claim.run_id,
        )
        return []

    async def _record_refused(
        self, claim: Claim, report: StepReport, exc: Exception
    ) -> list[Claim]:
        engine = self.engine
        log.exception("could not record a step result", step=claim.step_key, run_id=claim.run_id)
        failed = StepReport(
            outcome=Failed(
                error=f"internal error recording the result: {type(exc).__name__}: {exc}",
                retryable=False,
            ),
            calls=report.calls,  # spent whatever happened to the output
            duration_ms=report.duration_ms,
        )
        try:
            return await engine.db.write(
                lambda tx: engine.transitions.record(tx, claim, failed), lock_order=claim.run_id
            )
        except StaleClaim:
            raise
        except Exception:
            log.exception(
                "could not record the failure either; the lease will expire", step=claim.step_key
            )
            return []

    def _alone(self) -> bool:
        """Only the calling step is running (finished tasks may not be removed yet)."""
        tasks = self._tasks
        return len(tasks) <= 1 or (
            len(tasks) <= 4 and sum(not t.done() for t in tasks.values()) <= 1
        )

    async def _claim(self, limit: int) -> list[Claim]:
        return await self.queue.take(limit)

    async def _extend(self, step_ids: list[str]) -> set[str]:
        def extend(tx: Tx) -> set[str]:
            return self.engine.transitions.heartbeat(tx, owner=self.owner, step_ids=step_ids)

        return await self.engine.db.write(extend)

    async def _heartbeat(self) -> None:
        interval = self.engine.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self._tasks)  # finishing ones too: recording may be retried for a while
            if not ids:
                continue
            try:
                lost = await self._extend(ids)
            except Exception:
                log.exception("heartbeat failed; will retry")
                continue
            await self.queue.keep_alive(set(ids) - lost)
            for step_id in lost - self._finishing:  # their record finds out, or just did
                task = self._tasks.get(step_id)
                if task is not None:
                    self._lost.add(step_id)
                    task.cancel()

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind = event["type"]
            if kind in ("step.queued", "step.redriven"):
                self._wake.set()
            elif kind == "step.retrying":
                self._wake.set_after(float(event["data"].get("delay", 0)))
            elif kind == "step.cancelled":
                self._cancel_local(event["run_id"], event["step_key"])

    def _on_remote(self, channel: str, payload: str) -> None:
        """Another process made steps ready (now, or after a retry's delay)."""
        if channel != STEPS_CHANNEL:
            return
        self._wake.set_after(float(payload or 0))

    def _cancel_local(self, run_id: str, step_key: str) -> None:
        """A step we are running was cancelled (its run ended): stop it now."""
        for step_id, claim in list(self._claims.items()):
            if step_id in self._finishing:
                continue
            if claim.run_id == run_id and claim.step_key == step_key:
                self._lost.add(step_id)
                task = self._tasks.get(step_id)
                if task is not None:
                    task.cancel()


def _notify_spec(step: object, report: StepReport) -> NotifySpec | None:
    """The webhook to call once this report is recorded: a human step's, when it waits."""
    if isinstance(report.outcome, WaitForHuman) and isinstance(step, HumanStep):
        return step.notify
    return None
