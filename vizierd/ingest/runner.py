"""Running an ingest: inputs in, one session per input out.

Each input (a file, stdin's bytes, or a file still being written) is read
line by line through its parser, inside one session.  The session id of a
Codex input is derived from Codex's own session id, so ingesting it again
continues the same session: its saved dedup state drops every call already
counted, and the totals never double.

Codex forks need their parent's history.  Every ingested rollout leaves its
token rows in ``<state dir>/codex/<thread id>.rows.json``; a fork whose
parent has none is recorded as waiting in ``<state dir>/codex/waiting/`` and
ingested again, from scratch, when that parent arrives.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import anyio
import msgspec

from vizierd.atomic import write_atomic
from vizierd.errors import InputError
from vizierd.events import AnyEvent, OutcomeDoc
from vizierd.ingest.base import InputMeta, Parser, TokenRow
from vizierd.ingest.detect import detect_format, make_parser
from vizierd.pipeline import Pipeline
from vizierd.sessions import SessionHandle, SessionSpec

__all__ = ["CodexStore", "InputSource", "ingest", "order_parents_first"]

logger = logging.getLogger(__name__)

#: How often ``--follow`` looks for new lines once it has read everything.
FOLLOW_POLL = 0.2


@dataclass
class InputSource:
    """One input: a path, or bytes read from stdin."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    follow: bool = False


class WaitingFork(msgspec.Struct):
    session_id: str
    path: str
    cwd: str
    format: str


class CodexStore:
    """Token rows of ingested Codex sessions, and forks waiting for a parent."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "codex"

    def _rows_path(self, thread_id: str) -> Path:
        safe = hashlib.sha256(thread_id.encode()).hexdigest()[:32]
        return self.root / f"{safe}.rows.json"

    def rows(self, thread_id: str) -> list[TokenRow] | None:
        """Return the stored rows of a Codex session, or ``None`` if unknown."""
        try:
            data = self._rows_path(thread_id).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return msgspec.json.decode(data, type=list[TokenRow])
        except msgspec.DecodeError:
            logger.warning("ignoring damaged rows of codex session %s", thread_id)
            return None

    def save_rows(self, thread_id: str, rows: list[TokenRow]) -> None:
        write_atomic(self._rows_path(thread_id), msgspec.json.encode(rows))

    def _waiting_dir(self, parent_id: str) -> Path:
        safe = hashlib.sha256(parent_id.encode()).hexdigest()[:32]
        return self.root / "waiting" / safe

    def add_waiting(self, parent_id: str, fork: WaitingFork) -> None:
        name = hashlib.sha256(fork.session_id.encode()).hexdigest()[:32]
        write_atomic(self._waiting_dir(parent_id) / name, msgspec.json.encode(fork))

    def take_waiting(self, parent_id: str) -> list[WaitingFork]:
        """Return (and forget) the forks that were waiting for ``parent_id``."""
        folder = self._waiting_dir(parent_id)
        forks = []
        for entry in sorted(folder.glob("*")) if folder.is_dir() else []:
            try:
                forks.append(msgspec.json.decode(entry.read_bytes(), type=WaitingFork))
            except (OSError, msgspec.DecodeError) as exc:
                logger.warning(
                    "ignoring damaged waiting-fork record %s: %s", entry, exc
                )
            entry.unlink(missing_ok=True)
        return forks


def _first_line(data: bytes) -> bytes:
    for line in data.splitlines():
        if line.strip():
            return line
    return b""


def _peek_codex_ids(path: Path) -> tuple[str | None, str | None]:
    """Return (own id, parent id) from a rollout's first line, best effort."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 20)
        payload = msgspec.json.decode(first).get("payload") or {}
        own = payload.get("id")
        parent = payload.get("forked_from_id")
        if parent is None:
            spawn = ((payload.get("source") or {}).get("subagent") or {}).get(
                "thread_spawn"
            ) or {}
            parent = spawn.get("parent_thread_id")
        return (own if isinstance(own, str) else None), (
            parent if isinstance(parent, str) else None
        )
    except (OSError, msgspec.DecodeError, AttributeError):
        return None, None


def order_parents_first(paths: Iterable[Path]) -> list[Path]:
    """Return ``paths`` with every Codex parent before the forks made from it."""
    paths = list(paths)
    ids = {p: _peek_codex_ids(p) for p in paths}
    by_id = {own: p for p, (own, _) in ids.items() if own}
    ordered: list[Path] = []
    placed: set[Path] = set()

    def place(path: Path, trail: frozenset[Path]) -> None:
        if path in placed or path in trail:
            return
        parent = ids[path][1]
        if parent and parent in by_id:
            place(by_id[parent], trail | {path})
        placed.add(path)
        ordered.append(path)

    for path in paths:
        place(path, frozenset())
    return ordered


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}")


def _session_id(meta: InputMeta, data_head: bytes) -> str:
    prefix = meta.source.split("-")[0]
    if meta.external_id:
        if _SAFE_ID.fullmatch(meta.external_id):
            return f"{prefix}-{meta.external_id}"
        # An agent's id that cannot name a folder is still a stable name
        # for the session: its digest.
        digest = hashlib.sha256(meta.external_id.encode()).hexdigest()[:32]
        return f"{prefix}-{digest}"
    # Without an id of its own, an input is known by its content, so that
    # ingesting the same recording twice is still an update.
    digest = hashlib.sha256(data_head).hexdigest()[:16]
    return f"{meta.source}-{digest}"


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip():
            yield number, line


async def _read(source: InputSource) -> bytes:
    if source.data is not None:
        return source.data
    assert source.path is not None
    try:
        return await anyio.Path(source.path).read_bytes()
    except IsADirectoryError as exc:
        raise InputError(f"{source.name}: is a directory, not a log file") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{source.name}: no such file") from exc
    except OSError as exc:
        raise InputError(f"{source.name}: cannot read: {exc.strerror}") from exc


def _check_text(name: str, data: bytes) -> None:
    if not data.strip():
        raise InputError(f"{name}: the input is empty")
    if b"\x00" in data[:65536]:
        raise InputError(f"{name}: this is a binary file, not a JSON log")


async def ingest(
    pipeline: Pipeline,
    source: InputSource,
    *,
    fmt: str = "auto",
    cwd: str,
    client_pid: int | None = None,
    resume: bool = True,
    session_id: str | None = None,
    on_start: Callable[[str], None] | None = None,
) -> OutcomeDoc:
    """Ingest one input as one session; return its outcome.

    Unusable input (not JSON, an unknown format, empty, binary) becomes an
    ``error`` outcome whose message names the input and line; everything
    accepted before the bad line is kept.
    """
    store = CodexStore(pipeline.state_dir)
    data = b"" if source.follow else None
    head = b""
    try:
        if not source.follow:
            data = await _read(source)
            _check_text(source.name, data)
            head = data[:65536]
        else:
            head = await _follow_head(source)
        if fmt == "auto":
            fmt = detect_format(head, source.name)
        parser = make_parser(fmt, source.name, store.rows)
    except InputError as exc:
        return await _failed_before_start(
            pipeline, source, fmt, cwd, client_pid, exc, on_start
        )

    # The first line names the session (Codex's own id), so it is parsed
    # before the session starts and its events are published right after.
    first_events: list[AnyEvent] = []
    first_error: InputError | None = None
    lines: Iterator[tuple[int, bytes]] = iter(())
    if data is not None and not source.follow:
        lines = _lines(data)
    try:
        first = next(lines, None) if not source.follow else (1, head)
        if first is not None:
            first_events = list(parser.feed(*first))
    except InputError as exc:
        first_error = exc

    sid = session_id or _session_id(parser.meta, head)
    spec = SessionSpec(
        action="ingest",
        source=fmt,
        cwd=cwd,
        session_id=sid,
        model=parser.meta.model,
        provider="openai" if fmt.startswith("openai") else "codex",
        client_pid=client_pid,
        input=str(source.path.resolve()) if source.path else source.name,
        resume=resume,
    )

    async def produce(handle: SessionHandle) -> None:
        for event in first_events:
            await handle.publish(event)
        if first_error is not None:
            raise first_error
        if source.follow:
            await _follow(source, parser, handle)
        else:
            for number, line in lines:
                for event in parser.feed(number, line):
                    await handle.publish(event)
        for event in parser.finish():
            await handle.publish(event)
        _finish_meta(parser, handle)

    outcome = await pipeline.run(spec, produce, on_start)
    await _after_codex(pipeline, store, parser, fmt, sid, source, cwd)
    return outcome


def _finish_meta(parser: Parser, handle: SessionHandle) -> None:
    handle.summary = getattr(parser, "last_assistant", None)
    handle.model = parser.meta.model or handle.model
    handle.waiting_for_parent = getattr(parser, "waiting_for_parent", None)


async def _after_codex(
    pipeline: Pipeline,
    store: CodexStore,
    parser: Parser,
    fmt: str,
    sid: str,
    source: InputSource,
    cwd: str,
) -> None:
    """Keep a rollout's rows; re-ingest forks that were waiting for it."""
    if fmt != "codex-rollout" or not parser.meta.external_id:
        return
    thread_id = parser.meta.external_id
    waiting = getattr(parser, "waiting_for_parent", None)
    if waiting and source.path is not None:
        fork = WaitingFork(
            session_id=sid, path=str(source.path.resolve()), cwd=cwd, format=fmt
        )
        await anyio.to_thread.run_sync(store.add_waiting, waiting, fork)
        return
    rows: list[TokenRow] = getattr(parser, "rows", [])
    await anyio.to_thread.run_sync(store.save_rows, thread_id, rows)
    for fork in await anyio.to_thread.run_sync(store.take_waiting, thread_id):
        path = Path(fork.path)
        if not await anyio.Path(path).exists():
            logger.warning("fork %s waited for %s but its file is gone", fork, sid)
            continue
        logger.info(
            "parent %s arrived: recomputing fork %s", thread_id, fork.session_id
        )
        await ingest(
            pipeline,
            InputSource(name=str(path), path=path),
            fmt=fork.format,
            cwd=fork.cwd,
            resume=False,
            session_id=fork.session_id,
        )


async def _failed_before_start(
    pipeline: Pipeline,
    source: InputSource,
    fmt: str,
    cwd: str,
    client_pid: int | None,
    error: InputError,
    on_start: Callable[[str], None] | None,
) -> OutcomeDoc:
    """Record an input that could not even be opened as a failed session."""

    async def produce(handle: SessionHandle) -> None:
        raise error

    spec = SessionSpec(
        action="ingest",
        source=fmt,
        cwd=cwd,
        client_pid=client_pid,
        input=source.name,
        resume=False,
    )
    return await pipeline.run(spec, produce, on_start)


async def _follow_head(source: InputSource) -> bytes:
    """Wait for the first complete line of a file that is being written."""
    assert source.path is not None
    while True:
        try:
            with source.path.open("rb") as f:
                line = f.readline()
        except FileNotFoundError:
            line = b""
        except OSError as exc:
            raise InputError(f"{source.name}: cannot read: {exc.strerror}") from exc
        if line.endswith(b"\n") and line.strip():
            _check_text(source.name, line)
            return line.rstrip(b"\r\n")
        await anyio.sleep(FOLLOW_POLL)


async def _follow(source: InputSource, parser: Parser, handle: SessionHandle) -> None:
    """Feed lines as the file grows, until cancelled.

    A line is parsed only once its newline is there, so a line written in
    two pieces is read whole.  The first line was already parsed.
    """
    assert source.path is not None
    number = 1
    partial = b""
    async with aiofiles.open(source.path, "rb") as f:
        await f.readline()
        while True:
            chunk = await f.read(1 << 16)
            if not chunk:
                await anyio.sleep(FOLLOW_POLL)
                continue
            partial += chunk
            *complete, partial = partial.split(b"\n")
            for line in complete:
                number += 1
                line = line.rstrip(b"\r")
                if line.strip():
                    for event in parser.feed(number, line):
                        await handle.publish(event)
