"""The in-process async event bus.

Publishing runs an event through the stages (the dedup stage, then the
ledger), stamps each resulting event with its per-session ``seq`` and hands
it to every subscriber's own bounded queue.  Each subscriber is served by its
own task, so a slow or broken one never holds up the others:

* a queue that is full either makes the publisher wait (``block``: nothing is
  lost, the producer slows down) or drops its oldest event (``drop_oldest``:
  the drop is counted and reported);
* a subscriber sees events in publish order;
* a handler that raises or runs past its timeout is logged and counted, and
  after ``max_failures`` failures in a row the subscriber is quarantined and
  a ``subscriber.failed`` event is published;
* closing the bus drains every queue, up to a deadline.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import anyio
from anyio.abc import TaskGroup

from vizierd.errors import BusClosed
from vizierd.events import AnyEvent, SessionEnded, SubscriberFailed

__all__ = [
    "Bus",
    "Policy",
    "Stage",
    "Subscriber",
    "Subscription",
]

logger = logging.getLogger(__name__)

Policy = Literal["block", "drop_oldest"]


@runtime_checkable
class Subscriber(Protocol):
    """What the bus needs of a subscriber.

    A subscriber may also define ``policy`` (:data:`Policy`), ``capacity``
    (queue size), ``timeout`` (seconds per event), an async ``aclose()``
    that the bus awaits once its queue is drained on shutdown, and a pair
    ``flush_due() -> float | None`` (seconds until coalesced work is due, or
    ``None``) and async ``flush()``, which the bus calls when the queue has
    been idle that long.
    """

    name: str

    async def handle(self, event: AnyEvent) -> None:
        """Consume one event."""


class Stage(Protocol):
    """A synchronous step every event passes before the subscribers see it."""

    name: str

    def process(self, event: AnyEvent) -> AnyEvent | list[AnyEvent] | None:
        """Return the event(s) to pass on, or ``None`` to drop the event."""


class Subscription:
    """One subscriber attached to the bus: its queue, its task, its counters."""

    def __init__(
        self,
        bus: Bus,
        subscriber: Subscriber,
        *,
        policy: Policy,
        capacity: int,
        timeout: float,
        max_failures: int,
        accepts: Callable[[AnyEvent], bool] | None,
    ) -> None:
        self.bus = bus
        self.subscriber = subscriber
        self.name = subscriber.name
        self.policy: Policy = policy
        self.capacity = max(1, capacity)
        self.timeout = timeout
        self.max_failures = max_failures
        self.accepts = accepts

        self.state: Literal["running", "quarantined", "closed"] = "running"
        self.handled = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.dropped = 0
        self.last_error: str | None = None

        self._items: deque[AnyEvent] = deque()
        self._readable: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._busy = False
        self._started: float | None = None
        self._scope: anyio.CancelScope | None = None
        self._flush_due: Callable[[], float | None] | None = getattr(
            subscriber, "flush_due", None
        )
        self._flush: Callable[[], Awaitable[None]] | None = getattr(
            subscriber, "flush", None
        )
        self._write_lock = anyio.Lock()
        self._waiting_writers = 0

    # --- the producer side -------------------------------------------------

    def try_put(self, event: AnyEvent) -> bool:
        """Queue ``event`` if that needs no waiting; return whether it did."""
        items = self._items
        if len(items) < self.capacity and not self._waiting_writers:
            if self.state == "running":
                items.append(event)
                if self._readable is not None:
                    self._wake_reader()
            return True
        return False

    async def put(self, event: AnyEvent) -> None:
        """Queue one event, applying the overflow policy."""
        if self.state != "running":
            return
        items = self._items
        if len(items) < self.capacity and not self._waiting_writers:
            items.append(event)
            self._wake_reader()
            return

        if self.policy == "drop_oldest":
            while len(items) >= self.capacity:
                items.popleft()
                self.dropped += 1
            items.append(event)
            self._wake_reader()
            return

        # Back-pressure.  The lock is fair, so writers that arrive while
        # others wait queue up behind them and publish order is kept.
        self._waiting_writers += 1
        try:
            async with self._write_lock:
                while len(items) >= self.capacity and self.state == "running":
                    writable = self._writable = anyio.Event()
                    await writable.wait()
                if self.state == "running":
                    items.append(event)
                    self._wake_reader()
        finally:
            self._waiting_writers -= 1

    def _wake_reader(self) -> None:
        readable = self._readable
        if readable is not None:
            self._readable = None
            readable.set()

    def _wake_writer(self) -> None:
        writable = self._writable
        if writable is not None:
            self._writable = None
            writable.set()

    # --- the consumer side -------------------------------------------------

    async def run(self) -> None:
        """Serve the queue until the subscription is closed or quarantined.

        Handlers are not each wrapped in their own cancel scope, which would
        cost more than the rest of the delivery: the bus's watchdog cancels
        this scope when a handler runs past its timeout, and serving resumes
        with the next event.
        """
        while self.state == "running":
            with anyio.CancelScope() as scope:
                self._scope = scope
                await self._serve()
            self._scope = None
            if scope.cancelled_caught and self._started is not None:
                self._started = None
                await self._failed(f"handler timed out after {self.timeout:g}s")

    async def _serve(self) -> None:
        items = self._items
        handle: Callable[[AnyEvent], Awaitable[None]] = self.subscriber.handle
        clock = time.monotonic
        while self.state == "running":
            if not items:
                self._busy = False
                due = self._flush_due() if self._flush_due is not None else None
                if due is None:
                    self._signal_idle()
                    readable = self._readable = anyio.Event()
                    await readable.wait()
                else:
                    await self._idle_flush(due)
                continue

            self._busy = True
            event = items.popleft()
            if self._writable is not None:
                self._wake_writer()
            self._started = clock()
            try:
                await handle(event)
            except Exception as exc:  # a plugin may raise anything
                self._started = None
                await self._failed(f"{type(exc).__name__}: {exc}")
            else:
                self._started = None
                self.handled += 1
                self.consecutive_failures = 0

    async def _idle_flush(self, due: float) -> None:
        """Wait for the next event, or flush the subscriber when it is due.

        A subscriber that coalesces work (the session log writes at most a
        few times a second) says when its pending work is due with
        ``flush_due()``; if no event arrives by then, ``flush()`` runs.
        """
        readable = self._readable = anyio.Event()
        with anyio.move_on_after(max(0.0, due)):
            await readable.wait()
        if readable.is_set() or self._flush is None:
            return
        self._readable = None
        self._busy = True
        self._started = time.monotonic()
        try:
            await self._flush()
        except Exception as exc:
            self._started = None
            await self._failed(f"{type(exc).__name__}: {exc}")
        else:
            self._started = None

    def overdue(self, now: float) -> bool:
        """Return whether the running handler has passed its timeout."""
        started = self._started
        return started is not None and now - started > self.timeout

    def cancel_handler(self) -> None:
        """Cancel the running handler (it ran past its timeout)."""
        if self._scope is not None:
            self._scope.cancel()

    def _signal_idle(self) -> None:
        idle = self._idle
        if idle is not None:
            self._idle = None
            idle.set()

    async def _failed(self, reason: str) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        logger.warning("subscriber %s failed: %s", self.name, reason)
        if self.consecutive_failures >= self.max_failures:
            await self.bus._quarantine(self, reason)

    def _stop(self, state: Literal["quarantined", "closed"]) -> None:
        self.state = state
        self._items.clear()
        self._busy = False
        self._wake_reader()
        self._signal_idle()
        # Release every writer blocked on a full queue: nothing more will be
        # consumed here.
        writable = self._writable
        if writable is not None:
            writable.set()

    async def wait_drained(self) -> None:
        """Return once the queue is empty and no handler is running."""
        while self.state == "running" and (self._items or self._busy):
            idle = self._idle = anyio.Event()
            await idle.wait()

    def stats(self) -> dict[str, object]:
        """Return the counters shown by ``vizier plugins`` and daemon status."""
        return {
            "name": self.name,
            "state": self.state,
            "policy": self.policy,
            "queued": len(self._items),
            "handled": self.handled,
            "failures": self.failures,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


class Bus:
    """The event bus.  Use it as an async context manager::

        async with Bus([DedupStage(), Ledger()]) as bus:
            bus.subscribe(my_subscriber)
            await bus.publish(event)

    Leaving the block closes the bus with :meth:`aclose`.
    """

    def __init__(
        self,
        stages: Sequence[Stage] = (),
        *,
        timeout: float = 10.0,
        capacity: int = 1024,
        max_failures: int = 3,
        drain_deadline: float = 5.0,
    ) -> None:
        self.stages = list(stages)
        self.timeout = timeout
        self.capacity = capacity
        self.max_failures = max_failures
        self.drain_deadline = drain_deadline
        # Replaced, never changed in place: a publish that waits on a full
        # queue keeps iterating the list it started with, so attaching or
        # detaching a subscriber meanwhile cannot make it skip anyone.
        self.subscriptions: list[Subscription] = []
        self.quarantined: list[Subscription] = []
        self._seq: dict[str | None, int] = {}
        self._tg: TaskGroup | None = None
        self._closed = False

    async def __aenter__(self) -> Bus:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._watchdog, name="bus watchdog")
        return self

    async def _watchdog(self) -> None:
        """Cancel handlers that run past their timeout.

        It wakes a few times per shortest timeout, so a hung handler is
        cancelled between one and 1.25 timeouts after it started.
        """
        while True:
            subs = self.subscriptions
            shortest = min((s.timeout for s in subs), default=self.timeout)
            await anyio.sleep(max(0.005, shortest / 4))
            now = time.monotonic()
            for sub in list(self.subscriptions):
                if sub.overdue(now):
                    sub.cancel_handler()

    async def __aexit__(self, *exc_info: object) -> bool | None:
        try:
            await self.aclose()
        finally:
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
            result = await self._tg.__aexit__(*exc_info)  # type: ignore[arg-type]
        return result

    def subscribe(
        self,
        subscriber: Subscriber,
        *,
        policy: Policy | None = None,
        capacity: int | None = None,
        timeout: float | None = None,
        accepts: Callable[[AnyEvent], bool] | None = None,
    ) -> Subscription:
        """Attach ``subscriber`` and start serving it; return its subscription.

        Arguments left as ``None`` come from the subscriber's own attributes,
        then from the bus defaults.
        """
        if self._tg is None:
            raise RuntimeError("the bus is not running; use it as 'async with'")
        chosen_policy: Policy = policy or getattr(subscriber, "policy", None) or "block"
        sub = Subscription(
            self,
            subscriber,
            policy=chosen_policy,
            capacity=capacity or getattr(subscriber, "capacity", None) or self.capacity,
            timeout=timeout or getattr(subscriber, "timeout", None) or self.timeout,
            max_failures=self.max_failures,
            accepts=accepts or getattr(subscriber, "accepts", None),
        )
        self.subscriptions = [*self.subscriptions, sub]
        self._tg.start_soon(sub.run, name=f"subscriber {sub.name}")
        return sub

    async def unsubscribe(self, sub: Subscription, *, drain: bool = True) -> None:
        """Detach a subscription, after its queue is drained if ``drain``."""
        if drain:
            with anyio.move_on_after(self.drain_deadline):
                await sub.wait_drained()
        self._detach(sub)
        sub._stop("closed")

    def _detach(self, sub: Subscription) -> None:
        if sub in self.subscriptions:
            self.subscriptions = [s for s in self.subscriptions if s is not sub]

    async def publish(self, event: AnyEvent) -> None:
        """Run ``event`` through the stages and queue the result for everyone.

        Raises :class:`~vizierd.errors.BusClosed` once the bus is closing.
        """
        if self._closed:
            raise BusClosed("the event bus is closed")

        current: AnyEvent | list[AnyEvent] = event
        for stage in self.stages:
            # Nearly every event is one event through every stage; the general
            # case (a stage that adds events) takes the slower path.
            if isinstance(current, list):
                passed: list[AnyEvent] = []
                for item in current:
                    out = stage.process(item)
                    if isinstance(out, list):
                        passed.extend(out)
                    elif out is not None:
                        passed.append(out)
                current = passed
            else:
                result = stage.process(current)
                if result is None:
                    return
                current = result
        events = current if isinstance(current, list) else [current]

        seq = self._seq
        for item in events:
            sid = item.session_id
            item.seq = seq[sid] = seq.get(sid, 0) + 1
            if isinstance(item, SessionEnded):
                # Sequence numbers restart only for a new session run.
                seq.pop(sid, None)
            for sub in self.subscriptions:
                accepts = sub.accepts
                if accepts is not None and not accepts(item):
                    continue
                # The common case inline: room in the queue, nobody waiting.
                items = sub._items
                if len(items) < sub.capacity and not sub._waiting_writers:
                    if sub.state == "running":
                        items.append(item)
                        if sub._readable is not None:
                            sub._wake_reader()
                else:
                    await sub.put(item)

    async def _quarantine(self, sub: Subscription, reason: str) -> None:
        if sub.state != "running":
            return
        self._detach(sub)
        sub._stop("quarantined")
        self.quarantined.append(sub)
        logger.error("subscriber %s quarantined: %s", sub.name, reason)
        if not self._closed:
            await self.publish(SubscriberFailed(subscriber=sub.name, reason=reason))

    async def drain(self) -> None:
        """Wait until every queue is empty and every handler idle."""
        for sub in list(self.subscriptions):
            await sub.wait_drained()

    async def aclose(self) -> None:
        """Stop publishing, drain every queue up to the deadline, close all."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(self.drain_deadline) as scope:
            await self.drain()
        if scope.cancelled_caught:
            left = {s.name: len(s._items) for s in self.subscriptions if s._items}
            logger.warning("bus drain deadline passed; events left: %s", left)

        for sub in list(self.subscriptions):
            sub._stop("closed")
            closer = getattr(sub.subscriber, "aclose", None)
            if closer is None:
                continue
            with anyio.move_on_after(sub.timeout, shield=True):
                try:
                    await closer()
                except Exception:
                    logger.exception("subscriber %s failed to close", sub.name)
        self.subscriptions = []

    def stats(self) -> list[dict[str, object]]:
        """Return the counters of every subscription, quarantined ones too."""
        return [sub.stats() for sub in self.subscriptions + self.quarantined]
