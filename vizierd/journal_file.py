"""Reading the journal tolerantly.

``<state dir>/journal.jsonl`` holds every event, one JSON line each, appended
whole.  A torn last line (a write cut short by a crash, or one still being
written while it is read) is ignored.  A damaged line anywhere else is
skipped and reported as :class:`Damage`, with its line number: never dropped
silently.

This module imports only the standard library and msgspec.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

import msgspec

from vizierd.events import AnyEvent

__all__ = [
    "JOURNAL_NAME",
    "Damage",
    "JournalEntry",
    "JournalReader",
    "entry_decoder",
    "read_events",
]

logger = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"

_CHUNK = 1 << 22

T = TypeVar("T")


class Damage(msgspec.Struct, tag="damage", tag_field="kind", kw_only=True, gc=False):
    """A journal line that could not be read (and was skipped, reported)."""

    line: int
    offset: int
    reason: str


class _ResumeTotals(msgspec.Struct):
    prompt_total: int | None = None
    completion_total: int | None = None
    total: int | None = None
    cached_input_total: int | None = None
    reasoning_output_total: int | None = None
    calls: int = 0
    unknown_calls: int = 0


class _ModelRef(msgspec.Struct):
    name: str | None = None


class _OutcomeRef(msgspec.Struct):
    model: _ModelRef | None = None


class JournalEntry(msgspec.Struct, kw_only=True):
    """The fields of a journal event that the history needs.

    Decoding into this rather than the full event types skips message text
    and everything else the index does not keep, and accepts event types
    this version does not know.
    """

    type: str
    at: datetime
    id: str = ""
    session_id: str | None = None
    action: str = ""
    source: str = ""
    model: str | None = None
    path: str = ""
    project_root: str = ""
    input: str | None = None
    status: str | None = None
    resume_usage: _ResumeTotals | None = None
    outcome: _OutcomeRef | None = None
    prompt_delta: int | None = None
    completion_delta: int | None = None
    delta_total: int | None = None
    cached_input_delta: int | None = None
    reasoning_output_delta: int | None = None
    calls: int = 0
    unknown_calls: int = 0
    known: bool = True


class JournalReader(Generic[T]):
    """Iterate over ``(offset, item)`` for each readable line of a journal.

    ``decoder`` decodes one line.  Blank lines are skipped.  A line without
    its newline at the very end is a torn (or still growing) last line: it
    is left out, ``torn_tail`` is set, and ``end`` stays before it.  Every
    other line that does not decode is skipped and recorded in ``damage``.
    A missing file reads as empty.  Raises :class:`OSError` when the file
    exists but cannot be read.
    """

    def __init__(
        self, path: Path, decoder: msgspec.json.Decoder[T], *, start: int = 0
    ) -> None:
        self.path = path
        self.decoder = decoder
        self.start = start
        #: The offset just past the last complete line read.
        self.end = start
        self.damage: list[Damage] = []
        self.torn_tail = False
        # Line numbers are counted only when damage needs one.
        self._counted = (0, 1)

    def __iter__(self) -> Iterator[tuple[int, T]]:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            yield from self._read(f)

    def _read(self, f: BinaryIO) -> Iterator[tuple[int, T]]:
        read = f.read
        f.seek(self.start)
        decode = self.decoder.decode
        offset = self.start
        rest = b""
        while True:
            chunk: bytes = read(_CHUNK)
            if not chunk:
                break
            data = rest + chunk if rest else chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            for line in data[:cut].split(b"\n")[:-1]:
                here = offset
                offset += len(line) + 1
                if not line or line.isspace():
                    continue
                try:
                    item = decode(line)
                except msgspec.ValidationError as exc:
                    self._damaged(here, f"not a journal event: {exc}")
                    continue
                except msgspec.DecodeError as exc:
                    self._damaged(here, f"not valid JSON: {exc}")
                    continue
                yield here, item
            self.end = offset
        if rest.strip():
            self.torn_tail = True
            logger.debug("%s: ignoring a torn last line at byte %d", self.path, offset)

    def _damaged(self, offset: int, reason: str) -> None:
        line = self._line_number(offset)
        # Reported to the user through the query's warnings; logged for the
        # daemon's log.
        logger.info(
            "%s line %d is damaged and was skipped: %s", self.path, line, reason
        )
        self.damage.append(Damage(line=line, offset=offset, reason=reason))

    def _line_number(self, offset: int) -> int:
        """Return the 1-based number of the line starting at ``offset``."""
        counted, line = self._counted
        with open(self.path, "rb") as f:
            f.seek(counted)
            remaining = offset - counted
            while remaining > 0:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                line += chunk.count(b"\n")
                remaining -= len(chunk)
        self._counted = (offset, line)
        return line


#: Decodes one journal line into a :class:`JournalEntry`.
entry_decoder = msgspec.json.Decoder(JournalEntry)


def read_events(path: Path) -> tuple[list[AnyEvent], list[Damage]]:
    """Return every readable event of the journal at ``path``, and the damage.

    Meant for small journals and tools: everything is decoded and kept in
    memory.  Raises :class:`OSError` when the file cannot be read.
    """
    reader = JournalReader(path, msgspec.json.Decoder(AnyEvent))
    events = [event for _, event in reader]
    return events, reader.damage
