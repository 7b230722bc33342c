"""The bus: queues, policies, order, failures, quarantine and draining."""

from __future__ import annotations

import anyio
import pytest

from vizierd.bus import Bus
from vizierd.events import AnyEvent, Progress, SubscriberFailed

pytestmark = pytest.mark.anyio


def progress(n: int, sid: str = "s") -> Progress:
    return Progress(session_id=sid, kind="t", phase="p", message=str(n))


class Recorder:
    def __init__(self, name: str = "recorder", **attrs: object) -> None:
        self.name = name
        self.seen: list[AnyEvent] = []
        for key, value in attrs.items():
            setattr(self, key, value)

    async def handle(self, event: AnyEvent) -> None:
        self.seen.append(event)


class Gate(Recorder):
    """Blocks in its handler until opened."""

    def __init__(self, name: str, **attrs: object) -> None:
        super().__init__(name, **attrs)
        self.open = anyio.Event()
        self.entered = anyio.Event()

    async def handle(self, event: AnyEvent) -> None:
        self.entered.set()
        await self.open.wait()
        self.seen.append(event)


async def test_every_subscriber_sees_every_event_in_publish_order() -> None:
    subs = [Recorder(f"r{i}", capacity=3) for i in range(3)]
    async with Bus() as bus:
        for sub in subs:
            bus.subscribe(sub)
        for n in range(100):
            await bus.publish(progress(n))
        await bus.drain()
    for sub in subs:
        assert [e.message for e in sub.seen] == [str(n) for n in range(100)]  # type: ignore[union-attr]
        assert [e.seq for e in sub.seen] == list(range(1, 101))


async def test_seq_is_per_session() -> None:
    sub = Recorder()
    async with Bus() as bus:
        bus.subscribe(sub)
        await bus.publish(progress(1, "a"))
        await bus.publish(progress(2, "b"))
        await bus.publish(progress(3, "a"))
        await bus.drain()
    assert [(e.session_id, e.seq) for e in sub.seen] == [("a", 1), ("b", 1), ("a", 2)]


async def test_block_policy_makes_the_publisher_wait_and_loses_nothing() -> None:
    gate = Gate("slow", capacity=2, policy="block")
    async with Bus() as bus:
        bus.subscribe(gate)
        published = 0

        async def producer() -> None:
            nonlocal published
            for n in range(10):
                await bus.publish(progress(n))
                published += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await gate.entered.wait()
            # One event in the handler, two queued: the producer is stuck.
            await anyio.wait_all_tasks_blocked()
            assert published == 3
            gate.open.set()
        await bus.drain()
    assert [e.message for e in gate.seen] == [str(n) for n in range(10)]  # type: ignore[union-attr]


async def test_drop_oldest_counts_what_it_drops_and_never_blocks() -> None:
    gate = Gate("watcher", capacity=3, policy="drop_oldest")
    fast = Recorder("fast")
    async with Bus() as bus:
        sub = bus.subscribe(gate)
        bus.subscribe(fast)
        await bus.publish(progress(0))
        await gate.entered.wait()
        for n in range(1, 20):
            await bus.publish(progress(n))
        assert sub.dropped == 16
        gate.open.set()
        await bus.drain()
    assert [e.message for e in gate.seen] == ["0", "17", "18", "19"]  # type: ignore[union-attr]
    assert len(fast.seen) == 20


async def test_raising_subscriber_is_quarantined_and_others_carry_on() -> None:
    class Raiser(Recorder):
        async def handle(self, event: AnyEvent) -> None:
            raise ValueError("boom")

    good = Recorder("good")
    async with Bus(max_failures=3) as bus:
        bad = bus.subscribe(Raiser("bad"))
        bus.subscribe(good)
        for n in range(5):
            await bus.publish(progress(n))
        await bus.drain()
        assert bad.state == "quarantined"
        assert bad.failures == 3
        assert "ValueError: boom" in (bad.last_error or "")
    failed = [e for e in good.seen if isinstance(e, SubscriberFailed)]
    assert len(failed) == 1 and failed[0].subscriber == "bad"
    assert len([e for e in good.seen if isinstance(e, Progress)]) == 5


async def test_hanging_subscriber_times_out_and_others_carry_on() -> None:
    class Hanger(Recorder):
        async def handle(self, event: AnyEvent) -> None:
            await anyio.sleep_forever()

    class Witness(Recorder):
        quarantined = anyio.Event()

        async def handle(self, event: AnyEvent) -> None:
            self.seen.append(event)
            if isinstance(event, SubscriberFailed):
                self.quarantined.set()

    good = Witness("good")
    async with Bus(max_failures=2) as bus:
        hung = bus.subscribe(Hanger("hung"), timeout=0.05)
        bus.subscribe(good)
        for n in range(4):
            await bus.publish(progress(n))
        with anyio.fail_after(10):
            await good.quarantined.wait()
        await bus.drain()
    assert hung.state == "quarantined"
    assert "timed out" in (hung.last_error or "")
    assert [e.message for e in good.seen if isinstance(e, Progress)] == [
        "0",
        "1",
        "2",
        "3",
    ]


async def test_a_single_failure_is_counted_but_not_quarantined() -> None:
    class Flaky(Recorder):
        async def handle(self, event: AnyEvent) -> None:
            if event.message == "1":  # type: ignore[union-attr]
                raise RuntimeError("once")
            self.seen.append(event)

    flaky = Flaky("flaky")
    async with Bus() as bus:
        sub = bus.subscribe(flaky)
        for n in range(3):
            await bus.publish(progress(n))
        await bus.drain()
        assert sub.state == "running" and sub.failures == 1
    assert [e.message for e in flaky.seen] == ["0", "2"]  # type: ignore[union-attr]


async def test_close_drains_queues_and_calls_aclose() -> None:
    class Closer(Recorder):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    sub = Closer("closer")
    async with Bus() as bus:
        bus.subscribe(sub)
        for n in range(50):
            await bus.publish(progress(n))
    assert len(sub.seen) == 50 and sub.closed


async def test_close_gives_up_at_the_drain_deadline() -> None:
    gate = Gate("stuck", timeout=60)
    with anyio.fail_after(10):
        async with Bus(drain_deadline=0.05) as bus:
            bus.subscribe(gate)
            await bus.publish(progress(0))
            await bus.publish(progress(1))
            await gate.entered.wait()
    assert gate.seen == []


async def test_publish_after_close_is_refused() -> None:
    from vizierd.errors import BusClosed

    bus = Bus()
    async with bus:
        pass
    with pytest.raises(BusClosed):
        await bus.publish(progress(0))


async def test_stages_can_drop_and_add_events() -> None:
    class Doubler:
        name = "doubler"

        def process(self, event: AnyEvent) -> AnyEvent | list[AnyEvent] | None:
            if isinstance(event, Progress) and event.message == "drop":
                return None
            return [
                event,
                Progress(
                    session_id=event.session_id, kind="x", phase="y", message="extra"
                ),
            ]

    sub = Recorder()
    async with Bus([Doubler()]) as bus:
        bus.subscribe(sub)
        await bus.publish(progress(1))
        await bus.publish(Progress(session_id="s", kind="t", phase="p", message="drop"))
        await bus.drain()
    assert [e.message for e in sub.seen] == ["1", "extra"]  # type: ignore[union-attr]


async def test_idle_flush_runs_when_coalesced_work_is_due() -> None:
    class Coalescing(Recorder):
        def __init__(self) -> None:
            super().__init__("coalescing")
            self.pending = False
            self.flushed = anyio.Event()

        async def handle(self, event: AnyEvent) -> None:
            self.seen.append(event)
            self.pending = True

        def flush_due(self) -> float | None:
            return 0.01 if self.pending else None

        async def flush(self) -> None:
            self.pending = False
            self.flushed.set()

    sub = Coalescing()
    async with Bus() as bus:
        bus.subscribe(sub)
        await bus.publish(progress(1))
        with anyio.fail_after(10):
            await sub.flushed.wait()
    assert not sub.pending and len(sub.seen) == 1
