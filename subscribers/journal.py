"""The journal: every event the daemon accounts, one JSON line each.

``<state dir>/journal.jsonl`` is append-only and newline-terminated, so a
crash can at worst leave a torn last line, which readers ignore; the next
writer starts on a fresh line and records the torn one as damage.  Streamed
text chunks (``text.delta``) are not journaled: the full message is.

Lines are buffered and written in a worker thread, each batch with one
``write`` on a file opened for appending, so writers in two processes never
interleave inside a line.  The buffer is flushed at every session boundary
and usage report, so what a client was told is accounted is on disk before
the client hears it; it is fsynced when a session ends.

Alongside, the journal keeps the summary index (:mod:`vizierd.history`): a
run's first index line goes out before its first event, then a line at
coalesced points while it runs (every :data:`SUMMARY_INTERVAL` seconds or
:data:`SUMMARY_REPORTS` reports) and one when it ends.  Only running
sessions are held in memory.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import BinaryIO

import anyio
import msgspec

from vizierd.events import (
    AnyEvent,
    Message,
    Outcome,
    SessionEnded,
    SessionStarted,
    TextDelta,
    UsageObserved,
    UsageReport,
)
from vizierd.history import append_summary, damage_line
from vizierd.journal_file import JOURNAL_NAME, Damage
from vizierd.plugins import PluginContext
from vizierd.summary import SegmentBuilder

__all__ = ["JOURNAL_NAME", "SUMMARY_INTERVAL", "SUMMARY_REPORTS", "Journal", "create"]

logger = logging.getLogger(__name__)

_FLUSH_EVENTS = (SessionStarted, UsageReport, Outcome, SessionEnded)
_MAX_BUFFER = 512
_MAX_AGE = 0.2

#: A running session's index line is renewed at most this often (seconds) …
SUMMARY_INTERVAL = 10.0
#: … or after this many reports, whichever comes first.
SUMMARY_REPORTS = 500


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Journal:
    """Appends events to the journal file and keeps the summary index."""

    name = "journal"
    policy = "block"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / JOURNAL_NAME
        self._fd: int | None = None
        self._buffer: list[bytes] = []
        self._oldest = 0.0
        self._encoder = msgspec.json.Encoder()
        #: The running segment of each session.
        self._open: dict[str, SegmentBuilder] = {}
        self._starting: list[SegmentBuilder] = []
        self._ended: list[SegmentBuilder] = []

    # --- the event loop side ------------------------------------------------

    async def handle(self, event: AnyEvent) -> None:
        if isinstance(event, TextDelta):
            return
        if isinstance(event, SessionStarted):
            await self._started(event)
            return
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(self._encoder.encode(event) + b"\n")
        self._account(event)
        if (
            isinstance(event, _FLUSH_EVENTS)
            or len(self._buffer) >= _MAX_BUFFER
            or time.monotonic() - self._oldest >= _MAX_AGE
        ):
            await self.flush(sync=isinstance(event, SessionEnded))

    async def _started(self, event: SessionStarted) -> None:
        # A run's first index line must reach the index before its first
        # event reaches the journal, and account nothing: so whatever is
        # buffered goes out first, then the line and the event alone.
        if self._buffer:
            await self.flush()
        builder = SegmentBuilder.start(
            session_id=event.session_id or "",
            segment=event.id,
            at=event.at,
            offset=0,
            action=event.action,
            source=event.source,
            model=event.model,
            path=event.path,
            project_root=event.project_root,
            input=event.input,
            resume=event.resume_usage,
        )
        self._open[builder.seg.session_id] = builder
        self._starting.append(builder)
        self._oldest = time.monotonic()
        self._buffer.append(self._encoder.encode(event) + b"\n")
        await self.flush()

    def _account(self, event: AnyEvent) -> None:
        builder = self._open.get(event.session_id or "")
        if builder is None:
            return
        if isinstance(event, UsageObserved):
            builder.observed(event.at, event.model)
        elif isinstance(event, UsageReport):
            builder.report(
                event.at,
                prompt=event.prompt_delta,
                completion=event.completion_delta,
                total=event.delta_total,
                cached=event.cached_input_delta,
                reasoning=event.reasoning_output_delta,
                calls=event.calls,
                unknown_calls=event.unknown_calls,
            )
        elif isinstance(event, Message):
            builder.activity(event.at)
        elif isinstance(event, Outcome):
            model = event.outcome.model
            builder.named(model.name if model is not None else None)
        elif isinstance(event, SessionEnded):
            builder.ended(event.at, event.status)
            del self._open[builder.seg.session_id]
            self._ended.append(builder)

    def _due(self, builder: SegmentBuilder, now: float) -> bool:
        # A line written between an observation and its report would lose
        # the observation's time: wait for the report.
        if builder.pending:
            return False
        if not builder.written:
            return True
        return builder.dirty and (
            now - builder.last_line >= SUMMARY_INTERVAL
            or builder.reports >= SUMMARY_REPORTS
        )

    def flush_due(self) -> float | None:
        """Return the seconds until the buffered lines are due, or ``None``."""
        if not self._buffer:
            return None
        return self._oldest + _MAX_AGE - time.monotonic()

    async def flush(self, *, sync: bool = False) -> None:
        """Write the buffered lines and the index lines that are due.

        With ``sync`` both files are fsynced.  Raises :class:`OSError` when
        the journal cannot be written (an index that cannot be written is
        logged: readers rebuild it from the journal).
        """
        lines, self._buffer = self._buffer, []
        starting, self._starting = self._starting, []
        ended, self._ended = self._ended, []
        now = time.monotonic()
        new = {id(b) for b in starting}
        after = ended + [
            b for b in self._open.values() if id(b) not in new and self._due(b, now)
        ]
        if lines or starting or after:
            await anyio.to_thread.run_sync(self._write, lines, starting, after, sync)

    async def aclose(self) -> None:
        await self.flush(sync=True)
        # Sessions still running as the bus closes keep their latest state.
        running = [b for b in self._open.values() if b.dirty or not b.written]
        if running:
            await anyio.to_thread.run_sync(self._write, [], [], running, True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- the worker thread side ---------------------------------------------

    def _journal_fd(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                self._repair_tail(fd)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _repair_tail(self, fd: int) -> None:
        # A crash may have left a torn last line.  Ours start on a new line,
        # so the torn one stays isolated: a damaged line that readers report.
        size = os.fstat(fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            start, line = self._last_line(f, size)
        _write_all(fd, b"\n")
        # Another process may have been halfway through a write when we
        # looked.  Ours went after it (appends are serialized), so if the
        # line is whole now, nothing was torn: a blank line is all we added.
        with open(self.path, "rb") as f:
            f.seek(start)
            whole = f.readline()
        try:
            msgspec.json.decode(whole)
        except msgspec.DecodeError:
            pass
        else:
            return
        damage = Damage(
            line=line,
            offset=start,
            reason="torn by an interrupted write; the event in it is lost",
        )
        logger.info("journal line %d was torn by an interrupted write", line)
        self._summary([damage_line(damage)], [], create=False, sync=False)

    @staticmethod
    def _last_line(f: BinaryIO, size: int) -> tuple[int, int]:
        """Return the offset and number of the last line in the first ``size`` bytes."""
        f.seek(0)
        newlines = 0
        last = -1
        position = 0
        while position < size:
            chunk = f.read(min(1 << 22, size - position))
            if not chunk:
                break
            found = chunk.rfind(b"\n")
            if found >= 0:
                last = position + found
            newlines += chunk.count(b"\n")
            position += len(chunk)
        return last + 1, newlines + 1

    def _write(
        self,
        lines: list[bytes],
        starting: list[SegmentBuilder],
        after: list[SegmentBuilder],
        sync: bool,
    ) -> None:
        fd = self._journal_fd()
        if starting:
            size = os.fstat(fd).st_size
            for builder in starting:
                builder.seg.start = builder.seg.upto = size
            self._summary(
                [b.line() for b in starting], starting, create=size == 0, sync=False
            )
        if lines:
            _write_all(fd, b"".join(lines))
            if sync:
                os.fsync(fd)
        if after:
            end = os.lseek(fd, 0, os.SEEK_CUR)
            for builder in after:
                builder.seg.upto = end
            self._summary([b.line() for b in after], after, create=False, sync=sync)

    def _summary(
        self,
        lines: list[bytes],
        builders: list[SegmentBuilder],
        *,
        create: bool,
        sync: bool,
    ) -> None:
        assert self._fd is not None or not create
        ino = os.fstat(self._fd).st_ino if create and self._fd is not None else None
        try:
            written = append_summary(self.state_dir, lines, create_for=ino, sync=sync)
        except OSError as exc:
            logger.error("cannot write the summary index: %s", exc)
            return
        if written:
            now = time.monotonic()
            for builder in builders:
                builder.written = True
                builder.dirty = False
                builder.reports = 0
                builder.last_line = now


def create(context: PluginContext) -> Journal:
    """Entry-point factory: the journal lives in the state directory."""
    return Journal(context.state_dir)
