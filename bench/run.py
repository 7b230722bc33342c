"""vizier's benchmarks: ratios measured in one run against a baseline.

Each section times vizier and a baseline doing the same work on this
machine, in this run, and prints the ratio; absolute figures vary from
machine to machine, ratios much less.  Run it with::

    python bench/run.py            # everything
    python bench/run.py bus ingest # some sections

Sections: bus, ingest, client, memory, ask, usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from subscribers.dedup import DedupStage  # noqa: E402
from vizierd.bus import Bus  # noqa: E402
from vizierd.events import AnyEvent, Progress, UsageObserved  # noqa: E402
from vizierd.ledger import Ledger  # noqa: E402

SUBSCRIBERS = 3


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """Return the best (smallest) of ``runs`` timings of ``fn``."""
    return min(fn() for _ in range(runs))


def make_events(n: int) -> list[AnyEvent]:
    """A realistic mix: mostly progress, a distinct usage call every tenth."""
    events: list[AnyEvent] = []
    for i in range(n):
        if i % 10 == 0:
            events.append(
                UsageObserved(
                    session_id="bench",
                    source="bench",
                    request_id=f"r{i}",
                    prompt_tokens=100,
                    completion_tokens=10,
                )
            )
        else:
            events.append(
                Progress(session_id="bench", kind="b", phase="p", message="m")
            )
    return events


class NoOp:
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    async def handle(self, event: AnyEvent) -> None:
        self.count += 1


async def _vizier_bus(events: list[AnyEvent]) -> float:
    subs = [NoOp(f"noop{i}") for i in range(SUBSCRIBERS)]
    async with Bus([DedupStage(), Ledger()]) as bus:
        for sub in subs:
            bus.subscribe(sub)
        start = time.perf_counter()
        for event in events:
            await bus.publish(event)
        await bus.drain()
        elapsed = time.perf_counter() - start
    assert all(s.count >= len(events) for s in subs)
    return elapsed


async def _anyio_fanout(events: list[AnyEvent]) -> float:
    """The fastest fan-out anyio's memory streams allow: nowait first."""
    counts = [0] * SUBSCRIBERS
    pairs = [anyio.create_memory_object_stream[AnyEvent](1024) for _ in counts]

    async def consume(index: int, receive: anyio.abc.ObjectReceiveStream[AnyEvent]) -> None:
        async with receive:
            while True:
                try:
                    receive.receive_nowait()  # type: ignore[attr-defined]
                except anyio.WouldBlock:
                    try:
                        await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                counts[index] += 1

    async with anyio.create_task_group() as tg:
        for index, (_, receive) in enumerate(pairs):
            tg.start_soon(consume, index, receive)
        start = time.perf_counter()
        sends = [send for send, _ in pairs]
        for event in events:
            for send in sends:
                try:
                    send.send_nowait(event)
                except anyio.WouldBlock:
                    await send.send(event)
        for send in sends:
            await send.aclose()
    elapsed = time.perf_counter() - start
    return elapsed


async def _pyee(events: list[AnyEvent]) -> float:
    from pyee.asyncio import AsyncIOEventEmitter

    emitter = AsyncIOEventEmitter()
    counts = [0] * SUBSCRIBERS
    for index in range(SUBSCRIBERS):

        async def listener(event: AnyEvent, index: int = index) -> None:
            counts[index] += 1

        emitter.on("event", listener)
    start = time.perf_counter()
    for number, event in enumerate(events):
        emitter.emit("event", event)
        # Let the listener tasks run now and then, as a producer must.
        if number % 256 == 0:
            await asyncio.sleep(0)
    while sum(counts) < SUBSCRIBERS * len(events):
        await asyncio.sleep(0)
    return time.perf_counter() - start


def bench_bus(n: int = 100_000) -> None:
    def fresh() -> list[AnyEvent]:
        return make_events(n)

    ours = best_of(3, lambda: anyio.run(_vizier_bus, fresh()))
    bare = best_of(3, lambda: anyio.run(_anyio_fanout, fresh()))
    pyee = best_of(3, lambda: anyio.run(_pyee, fresh()))
    print(f"bus: {n:,} events, dedup + ledger + {SUBSCRIBERS} no-op subscribers")
    print(f"  vizier bus          {n / ours:>12,.0f} events/s")
    print(f"  bare anyio fan-out  {n / bare:>12,.0f} events/s")
    print(f"  pyee asyncio        {n / pyee:>12,.0f} events/s")
    print(f"  ratio vs anyio fan-out: {bare / ours:.2f}  (aim: >= 0.20)")
    print(f"  ratio vs pyee:          {pyee / ours:.2f}  (aim: several times)")


def _real_rollouts() -> list[Path]:
    folder = Path(
        os.environ.get("VIZIER_REAL_DATA", REPO.parent / "shared" / "data" / "real")
    )
    found = sorted((folder / "codex-rollout").glob("*.jsonl"))
    return found or [REPO / "examples" / "codex-rollout-demo.jsonl"]


def bench_ingest() -> None:
    from vizierd.ingest.codex import CodexRolloutParser

    lines: list[bytes] = []
    for path in _real_rollouts():
        lines.extend(x for x in path.read_bytes().split(b"\n") if x.strip())
    decode = msgspec.json.decode
    repeat = max(1, 200_000 // len(lines))

    def bare() -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            for line in lines:
                decode(line)
        return time.perf_counter() - start

    async def ours_async() -> float:
        async with Bus([DedupStage(), Ledger()]) as bus:
            bus.subscribe(NoOp("sink"))
            start = time.perf_counter()
            for r in range(repeat):
                parser = CodexRolloutParser("bench")
                for number, line in enumerate(lines, 1):
                    for event in parser.feed(number, line):
                        event.session_id = f"s{r}"
                        await bus.publish(event)
            await bus.drain()
            return time.perf_counter() - start

    total = repeat * len(lines)
    ours = best_of(3, lambda: anyio.run(ours_async))
    base = best_of(3, bare)
    print(f"ingest: {total:,} real Codex rollout lines (parse, dedup, ledger, bus)")
    print(f"  vizier ingest       {total / ours:>12,.0f} lines/s")
    print(f"  bare msgspec decode {total / base:>12,.0f} lines/s")
    print(f"  ratio: {base / ours:.2f}  (aim: >= 0.33)")


SECTIONS: dict[str, Callable[[], None]] = {
    "bus": bench_bus,
    "ingest": bench_ingest,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []][:-1] or None)
    args = parser.parse_args()
    gc.collect()
    for name in args.sections or SECTIONS:
        SECTIONS[name]()
        print()


_ = statistics

if __name__ == "__main__":
    main()
