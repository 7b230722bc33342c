"""The journal: every event the daemon accounts, one JSON line each.

``<state dir>/journal.jsonl`` is append-only and newline-terminated, so a
crash can at worst leave a torn last line, which readers ignore.  Streamed
text chunks (``text.delta``) are not journaled: the full message is.

Lines are buffered and written in a worker thread; the buffer is flushed at
every session boundary and usage report, so what a client was told is
accounted is on disk before the client hears it.
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
    Outcome,
    SessionEnded,
    SessionStarted,
    TextDelta,
    UsageReport,
)
from vizierd.plugins import PluginContext

__all__ = ["JOURNAL_NAME", "Journal", "create"]

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
_FLUSH_EVENTS = (SessionStarted, UsageReport, Outcome, SessionEnded)
_MAX_BUFFER = 512
_MAX_AGE = 0.2


class Journal:
    """Appends events to the journal file."""

    name = "journal"
    policy = "block"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._buffer: list[bytes] = []
        self._oldest = 0.0
        self._encoder = msgspec.json.Encoder()

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            self._repair_tail()
        return self._file

    def _repair_tail(self) -> None:
        # A crash may have left a torn last line; start ours on a new line so
        # the torn one stays isolated (readers skip it) and ours stays whole.
        assert self._file is not None
        size = self._file.seek(0, os.SEEK_END)
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                self._file.write(b"\n")

    def _write(self, lines: list[bytes], sync: bool) -> None:
        f = self._open()
        f.write(b"".join(lines))
        f.flush()
        if sync:
            os.fsync(f.fileno())

    async def handle(self, event: AnyEvent) -> None:
        if isinstance(event, TextDelta):
            return
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(self._encoder.encode(event) + b"\n")
        if (
            isinstance(event, _FLUSH_EVENTS)
            or len(self._buffer) >= _MAX_BUFFER
            or time.monotonic() - self._oldest >= _MAX_AGE
        ):
            await self.flush(sync=isinstance(event, SessionEnded))

    async def flush(self, *, sync: bool = False) -> None:
        """Write the buffered lines (and fsync when ``sync``)."""
        lines, self._buffer = self._buffer, []
        if lines:
            await anyio.to_thread.run_sync(self._write, lines, sync)

    async def aclose(self) -> None:
        await self.flush(sync=True)
        if self._file is not None:
            self._file.close()
            self._file = None


def create(context: PluginContext) -> Journal:
    """Entry-point factory: the journal lives in the state directory."""
    return Journal(context.state_dir / JOURNAL_NAME)
