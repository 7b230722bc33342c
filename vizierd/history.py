"""The history of every accounted session: the summary index over the journal.

Reading a month of journal (:mod:`vizierd.journal_file`) for every ``vizier
usage`` would be slow, so the journal subscriber also keeps
``<state dir>/summary.jsonl``: one line per update of a session *segment*
(one run of a session; a continued or re-ingested session has one per run)
holding its metadata and its usage in quarter-hour buckets
(:mod:`vizierd.summary`).  How the index stays right:

* Every line is accurate as of a journal byte offset, its ``upto``: it
  accounts every event of its segment before that offset and none after.
  A segment's first line is written before its first event reaches the
  journal; later ones (at coalesced points, and at the end) after.
* Of a segment's lines, the one with the greatest ``upto`` wins (the last
  one, unless a compaction raced an append).  A run that started afresh,
  carrying no usage over (``reset``), replaces every earlier run of its
  session: a session ingested again from scratch is replaced, never added
  to.  A continued run adds to the earlier ones; a Codex session ingested
  again continues with a dedup state that drops every call it had, so its
  new run adds nothing.
* A reader folds the lines, then reads the journal from the lowest
  ``upto`` of any segment still running, or the highest ``upto`` of all
  when that is lower, to the end, and applies what it finds.  When no
  session runs, that is next to nothing.
* The index is rebuilt from the whole journal when it is missing, damaged,
  or does not match the journal (another file, or offsets past its end).
  Deleting ``summary.jsonl`` therefore forces a rebuild on the next
  ``vizier usage``; :func:`rebuild_index` does it directly.  Rebuilds and
  compactions replace the file under ``summary.lock``, which appends also
  take, and fold in whatever was appended meanwhile.
* Damaged journal lines found while reading are recorded in the index, so
  a reader that no longer reads them still reports them.  Damage that
  appears in a part of the journal the index already covers (a disk error,
  an edit by hand) is found only by a rebuild.

This module imports only the standard library and msgspec.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from vizierd.journal_file import JOURNAL_NAME, Damage, JournalReader, entry_decoder
from vizierd.summary import (
    SUMMARY_NAME,
    SUMMARY_SCHEMA,
    Header,
    Segment,
    SegmentBuilder,
    SummaryItem,
    builder_from_entry,
)

__all__ = [
    "LOCK_NAME",
    "Index",
    "append_summary",
    "damage_line",
    "gc_paused",
    "load_index",
    "rebuild_index",
]

logger = logging.getLogger(__name__)

LOCK_NAME = "summary.lock"

#: A catch-up read longer than this is saved back by a compaction.
_COMPACT_SCAN_BYTES = 4 << 20

_item_decoder = msgspec.json.Decoder(SummaryItem)
_encoder = msgspec.json.Encoder()


class Index:
    """The folded summary index: every live segment, by session.

    ``by_session`` lists each session's live segments in the order they
    started; ``damage`` holds every damaged journal line known to the index
    (by offset); ``journal_size`` is how far into the journal it is right.
    """

    def __init__(self) -> None:
        self.segments: dict[str, Segment] = {}
        self.by_session: dict[str, list[Segment]] = {}
        self.dropped: set[str] = set()
        self.damage: dict[int, Damage] = {}
        self.journal_size = 0
        self.lines = 0
        self.scanned = 0
        self.rebuilt = False
        self._builders: dict[str, SegmentBuilder] = {}

    def put(self, seg: Segment) -> None:
        """Fold one index line in."""
        if seg.segment in self.dropped:
            return
        known = self.segments.get(seg.segment)
        if known is None:
            self.add(seg)
        elif seg.upto >= known.upto:
            self.segments[seg.segment] = seg
            runs = self.by_session[seg.session_id]
            for i, run in enumerate(runs):
                if run is known:
                    runs[i] = seg
            self._builders.pop(seg.segment, None)

    def add(self, seg: Segment) -> None:
        """Add a new segment; a ``reset`` one replaces its session's others."""
        if seg.reset:
            for old in self.by_session.pop(seg.session_id, []):
                self.dropped.add(old.segment)
                del self.segments[old.segment]
                self._builders.pop(old.segment, None)
        self.segments[seg.segment] = seg
        self.by_session.setdefault(seg.session_id, []).append(seg)

    def _route(self, session_id: str, offset: int) -> Segment | None:
        """Return the segment a session's event at ``offset`` belongs to."""
        best: Segment | None = None
        for seg in self.by_session.get(session_id, ()):
            if seg.start <= offset and (best is None or seg.start >= best.start):
                best = seg
        return best

    def _builder(self, seg: Segment) -> SegmentBuilder:
        builder = self._builders.get(seg.segment)
        if builder is None or builder.seg is not seg:
            builder = self._builders[seg.segment] = SegmentBuilder(seg)
        return builder

    def catch_up(self, journal: Path, start: int) -> None:
        """Apply the journal's events from ``start`` on to the segments.

        Raises :class:`OSError` when the journal cannot be read.
        """
        reader = JournalReader(journal, entry_decoder, start=start)
        for offset, entry in reader:
            sid = entry.session_id
            if sid is None:
                continue
            if entry.type == "session.started":
                if entry.id not in self.segments and entry.id not in self.dropped:
                    builder = builder_from_entry(entry, offset)
                    self.add(builder.seg)
                    self._builders[entry.id] = builder
                continue
            seg = self._route(sid, offset)
            if seg is None or seg.final or offset < seg.upto:
                continue
            self._builder(seg).apply(entry)
        for damage in reader.damage:
            self.damage[damage.offset] = damage
        # Every segment is now accurate as of the end of what was read.
        for seg in self.segments.values():
            seg.upto = max(seg.upto, reader.end)
        self.scanned += reader.end - start
        self.journal_size = max(self.journal_size, reader.end)

    def scan_start(self) -> int:
        """Return where reading the journal must begin to bring this up to date."""
        top = 0
        low: int | None = None
        for seg in self.segments.values():
            top = max(top, seg.upto)
            if not seg.final and (low is None or seg.upto < low):
                low = seg.upto
        return top if low is None else min(low, top)

    def lines_out(self, journal_ino: int) -> list[bytes]:
        """Return the index as lines: header, damage, then every live segment."""
        encode = _encoder.encode
        out = [encode(Header(journal_ino=journal_ino)) + b"\n"]
        for damage in sorted(self.damage.values(), key=lambda d: d.offset):
            out.append(encode(damage) + b"\n")
        for runs in self.by_session.values():
            out.extend(encode(seg) + b"\n" for seg in runs)
        return out


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large index is built.

    Folding a month of index makes hundreds of thousands of objects, none
    of them in a cycle; the collector would run over them again and again
    for nothing, and take longer than the work itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _BadIndex(Exception):
    """The index cannot be used as it is; it is rebuilt."""


def _decode_items(data: bytes, path: Path) -> list[SummaryItem]:
    """Decode complete index lines; a torn last line is left out.

    Raises :class:`_BadIndex` naming the first line that does not decode.
    """
    body = data[: data.rfind(b"\n") + 1]
    try:
        return _item_decoder.decode_lines(body)
    except msgspec.DecodeError:
        pass
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            _item_decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise _BadIndex(f"{path} line {number}: {exc}") from None
    raise _BadIndex(f"{path}: cannot be read")


def _fold(index: Index, items: list[SummaryItem], limit: int | None = None) -> None:
    """Fold index lines in; with ``limit``, skip segments beyond that offset."""
    for item in items:
        if isinstance(item, Segment):
            if limit is None or item.upto <= limit:
                index.put(item)
        elif isinstance(item, Damage):
            index.damage[item.offset] = item
    index.lines += len(items)


def _from_summary(path: Path, data: bytes | None, journal_st: os.stat_result) -> Index:
    """Fold the index file's ``data`` (read before ``journal_st`` was taken).

    Raises :class:`_BadIndex` when it is missing, damaged or for another
    journal.
    """
    if data is None:
        raise _BadIndex(f"{path} is missing")
    items = _decode_items(data, path)
    if not items or not isinstance(items[0], Header):
        raise _BadIndex(f"{path} has no header")
    header = items[0]
    if header.schema != SUMMARY_SCHEMA or header.journal_ino != journal_st.st_ino:
        raise _BadIndex(f"{path} belongs to another journal")
    index = Index()
    _fold(index, items[1:])
    if any(seg.upto > journal_st.st_size for seg in index.segments.values()):
        raise _BadIndex(f"{path} reaches past the end of the journal")
    index.journal_size = journal_st.st_size
    return index


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write(
    state_dir: Path, index: Index, journal: os.stat_result, read: bytes | None
) -> None:
    """Replace the index file with ``index``, built from the file's ``read``.

    Under the lock, lines appended since are folded in first: every line is
    right as of its own offset, and of a segment's lines the one with the
    greatest offset wins.  A compacted index takes in the whole current file
    (another reader may have replaced it meanwhile); a rebuilt one only what
    was appended after ``read``, since the rest is what it did not trust.
    """
    path = state_dir / SUMMARY_NAME
    with _locked(state_dir):
        data = _read_or_none(path) or b""
        if index.rebuilt:
            known = read or b""
            data = data[len(known) :] if data.startswith(known) else b""
        try:
            items = _decode_items(data, path) if data else []
        except _BadIndex as exc:
            logger.debug("not merging the index being replaced: %s", exc)
            items = []
        if items and isinstance(items[0], Header):
            if items[0].journal_ino != journal.st_ino:
                items = []
            del items[:1]
        size = os.stat(state_dir / JOURNAL_NAME).st_size
        _fold(index, items, limit=size)

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"".join(index.lines_out(journal.st_ino)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def load_index(state_dir: Path, *, save: bool = True) -> Index:
    """Return the summary index, brought up to date with the journal.

    A missing, damaged or mismatched index is rebuilt from the whole
    journal; a long catch-up or many superseded lines are compacted.  With
    ``save`` the rebuilt or compacted index is written back (failures to
    write are logged, not raised).  An absent journal gives an empty index.
    Raises :class:`OSError` when the journal cannot be read.
    """
    journal = state_dir / JOURNAL_NAME
    summary = state_dir / SUMMARY_NAME
    # The index is read before the journal is looked at, so every offset in
    # it is within the journal as seen.
    data = _read_or_none(summary)
    try:
        st = os.stat(journal)
    except FileNotFoundError:
        return Index()

    try:
        index = _from_summary(summary, data, st)
    except _BadIndex as exc:
        logger.info("rebuilding the summary index from the journal: %s", exc)
        index = Index()
        index.rebuilt = True
        index.catch_up(journal, 0)
    else:
        start = index.scan_start()
        if start < st.st_size:
            index.catch_up(journal, start)

    superseded = index.lines - len(index.segments) - len(index.damage)
    if save and (
        index.rebuilt
        or index.scanned > _COMPACT_SCAN_BYTES
        or superseded > len(index.segments) // 2 + 100
    ):
        try:
            _write(state_dir, index, st, data)
        except OSError as exc:
            logger.warning("cannot save the summary index: %s", exc)
    return index


def rebuild_index(state_dir: Path) -> Index:
    """Rebuild the summary index from the whole journal, save and return it.

    Raises :class:`OSError` when the journal cannot be read or the index
    cannot be written.
    """
    journal = state_dir / JOURNAL_NAME
    data = _read_or_none(state_dir / SUMMARY_NAME)
    st = os.stat(journal)
    index = Index()
    index.rebuilt = True
    with gc_paused():
        index.catch_up(journal, 0)
    _write(state_dir, index, st, data)
    return index


def append_summary(
    state_dir: Path, lines: list[bytes], *, create_for: int | None, sync: bool
) -> bool:
    """Append index lines; return whether they were written.

    An absent index is created only when ``create_for`` (the journal's inode)
    is given, which the journal subscriber does only while the journal is
    empty: otherwise the index would claim a journal it has not read, and
    the next reader rebuilds it instead.  Raises :class:`OSError`.
    """
    path = state_dir / SUMMARY_NAME
    with _locked(state_dir):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            if create_for is None:
                return False
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size == 0:
                header = _encoder.encode(Header(journal_ino=create_for)) + b"\n"
                lines = [header, *lines]
        try:
            _write_all(fd, b"".join(lines))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return True


def damage_line(damage: Damage) -> bytes:
    """Return ``damage`` as one index line."""
    return _encoder.encode(damage) + b"\n"
