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
import subprocess
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

    async def consume(
        index: int, receive: anyio.abc.ObjectReceiveStream[AnyEvent]
    ) -> None:
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
    while sum(counts) < SUBSCRIBERS * len(events):  # noqa: ASYNC110 - a busy drain is the fair baseline
        await asyncio.sleep(0)
    return time.perf_counter() - start


def bench_bus(n: int = 100_000) -> None:
    def fresh() -> list[AnyEvent]:
        return make_events(n)

    runs: dict[str, list[float]] = {"ours": [], "bare": [], "pyee": []}
    for _ in range(5):
        runs["ours"].append(anyio.run(_vizier_bus, fresh()))
        runs["bare"].append(anyio.run(_anyio_fanout, fresh()))
        runs["pyee"].append(anyio.run(_pyee, fresh()))
    ours, bare, pyee = (min(runs[k]) for k in ("ours", "bare", "pyee"))
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
    # Alternate the two, so a slow stretch of a shared machine hits both.
    ours_runs, base_runs = [], []
    for _ in range(5):
        ours_runs.append(anyio.run(ours_async))
        base_runs.append(bare())
    ours, base = min(ours_runs), min(base_runs)
    print(f"ingest: {total:,} real Codex rollout lines (parse, dedup, ledger, bus)")
    print(f"  vizier ingest       {total / ours:>12,.0f} lines/s")
    print(f"  bare msgspec decode {total / base:>12,.0f} lines/s")
    print(f"  ratio: {base / ours:.2f}  (aim: >= 0.33)")


class Daemon:
    """A real daemon on a socket in a temporary directory, for one section."""

    def __init__(self, state_dir: Path | None = None) -> None:
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="vzbench", dir="/tmp"))
        os.chmod(self.root, 0o700)
        self.state = state_dir or self.root / "state"
        self.project = self.root / "project"
        self.project.mkdir()
        self.env = {
            **os.environ,
            "VIZIER_SOCKET": str(self.root / "vizierd.sock"),
            "VIZIER_STATE_DIR": str(self.state),
            "VIZIER_CONFIG_DIR": str(self.root / "config"),
            "VIZIER_NO_AUTOSTART": "1",
            "NO_COLOR": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        import socket

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vizierd.cli", "daemon", "start", "--foreground"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.env["VIZIER_SOCKET"])
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the daemon did not start") from None
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        import shutil
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def vizier(self, *args: str, stdin: bytes | None = None) -> float:
        """Run `vizier ARGS` against this daemon; return its wall time."""
        start = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).with_name("vizier")), *args],
            env=self.env,
            cwd=self.project,
            input=stdin,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def _median_wall(command: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_package() -> None:
    """Write vizier's bytecode, as ``pip install`` does for a regular install.

    An editable install run with ``PYTHONDONTWRITEBYTECODE`` set would
    otherwise compile every module from source on every command, which a
    user's installation never does (msgspec, the baseline, has its bytecode).
    """
    import compileall

    for package in ("vizierd", "subscribers"):
        compileall.compile_dir(str(REPO / package), quiet=1)


def bench_client(runs: int = 30) -> None:
    compile_package()
    with Daemon() as daemon:
        vizier = str(Path(sys.executable).with_name("vizier"))
        _median_wall([vizier, "daemon", "status"], 3, daemon.env)  # warm caches
        ours = _median_wall([vizier, "daemon", "status"], runs, daemon.env)
        base = _median_wall([sys.executable, "-c", "import msgspec"], runs, daemon.env)
    print(f"client: median of {runs} runs")
    print(f"  vizier daemon status     {ours * 1000:8.1f} ms")
    print(f"  python -c 'import msgspec' {base * 1000:6.1f} ms")
    print(f"  ratio: {ours / base:.2f}x  (aim: < 1.5x)")


def _small_rollouts(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        sid = f"0199bench-0000-7000-8000-{i:012d}"
        usage = {
            "input_tokens": 100 + i % 7,
            "cached_input_tokens": 64,
            "output_tokens": 10,
            "reasoning_output_tokens": 4,
            "total_tokens": 110 + i % 7,
        }
        lines = [
            {
                "timestamp": "2026-11-01T10:00:00Z",
                "type": "session_meta",
                "payload": {"id": sid, "timestamp": "2026-11-01T10:00:00Z"},
            },
            {
                "timestamp": "2026-11-01T10:00:01Z",
                "type": "turn_context",
                "payload": {"model": "gpt-bench"},
            },
            {
                "timestamp": "2026-11-01T10:00:02Z",
                "type": "event_msg",
                "payload": {
                    "type": "token_count",
                    "info": {"total_token_usage": usage, "last_token_usage": usage},
                },
            },
        ]
        path = folder / f"rollout-{i:05d}.jsonl"
        path.write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in lines))
        paths.append(path)
    return paths


def bench_memory(sessions: int = 10_000, batch: int = 500) -> None:
    with Daemon() as daemon:
        paths = _small_rollouts(daemon.root / "inputs", sessions + 1)
        daemon.vizier("ingest", "-q", str(paths[0]))
        one = daemon.rss_kib()
        start = time.perf_counter()
        for first in range(1, sessions + 1, batch):
            chunk = paths[first : first + batch]
            daemon.vizier("ingest", "-q", *map(str, chunk))
        took = time.perf_counter() - start
        many = daemon.rss_kib()
    print(f"memory: daemon resident set after 1 and after {sessions + 1:,} sessions")
    print(f"  after 1 session      {one / 1024:8.1f} MiB")
    print(
        f"  after {sessions + 1:,} sessions {many / 1024:6.1f} MiB "
        f"({sessions / took:,.0f} sessions/s through the socket)"
    )
    print(f"  ratio: {many / one:.2f}x  (aim: < 1.3x)")


def bench_usage(sessions: int = 10_000, events: int = 1_000_000) -> None:
    import tempfile

    from bench.make_journal import make_journal
    from subscribers.journal import JOURNAL_NAME

    state = Path(tempfile.mkdtemp(prefix="vzusage", dir="/tmp"))
    counts = make_journal(state, sessions, events)
    journal = state / JOURNAL_NAME

    def bare() -> float:
        decode = msgspec.json.decode
        start = time.perf_counter()
        with journal.open("rb") as f:
            for line in f:
                decode(line)
        return time.perf_counter() - start

    base = best_of(3, bare)
    with Daemon(state_dir=state) as daemon:
        daemon.vizier("usage", "--by", "day")  # the daemon reads the index once
        ours = best_of(5, lambda: daemon.vizier("usage", "--by", "day"))
    import shutil

    shutil.rmtree(state, ignore_errors=True)
    print(
        f"usage: {counts['sessions']:,} sessions, {counts['events']:,} events, "
        f"journal {counts['journal_bytes'] / 2**20:,.0f} MiB"
    )
    print(f"  vizier usage --by day      {ours * 1000:8.1f} ms")
    print(f"  bare msgspec journal scan  {base * 1000:8.1f} ms")
    print(f"  ratio: {ours / base:.2f}x  (aim: < 0.2x)")


def bench_ask(runs: int = 15) -> None:
    import logging

    from tests.openai_server import CHAT, OpenAIServer, chat_chunks, sse_reply

    compile_package()
    # The test server's request log would drown the figures.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    server = OpenAIServer()
    server.start()
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    server.always(CHAT, sse_reply(chat_chunks(["Hello", " there"], usage=usage)))
    bare_script = (
        "import openai\n"
        f"c = openai.OpenAI(base_url={server.base_url!r}, api_key='sk-bench')\n"
        "s = c.chat.completions.create(model='gpt-bench', stream=True,"
        " stream_options={'include_usage': True},"
        " messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(''.join((k.choices[0].delta.content or '') for k in s if k.choices))\n"
    )
    try:
        with Daemon() as daemon:
            env = {
                **daemon.env,
                "OPENAI_BASE_URL": server.base_url,
                "OPENAI_API_KEY": "sk-bench",
            }
            vizier = str(Path(sys.executable).with_name("vizier"))
            ask = [vizier, "ask", "--model", "gpt-bench", "-q", "hi"]
            _median_wall(ask, 2, env)
            ours = _median_wall(ask, runs, env)
            base = _median_wall([sys.executable, "-c", bare_script], runs, env)
    finally:
        server.stop()
    print(f"ask: median of {runs} runs against a local OpenAI-compatible server")
    print(f"  vizier ask (through the daemon)  {ours * 1000:8.1f} ms")
    print(f"  bare openai SDK call, new process {base * 1000:7.1f} ms")
    print(f"  ratio: {ours / base:.2f}x  (aim: < 1.2x)")


SECTIONS: dict[str, Callable[[], None]] = {
    "bus": bench_bus,
    "ingest": bench_ingest,
    "client": bench_client,
    "memory": bench_memory,
    "ask": bench_ask,
    "usage": bench_usage,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=", ".join(SECTIONS))
    args = parser.parse_args()
    gc.collect()
    for name in args.sections or SECTIONS:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        SECTIONS[name]()
        print()


if __name__ == "__main__":
    main()
