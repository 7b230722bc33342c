"""The records of the summary index, and how a session's events fill them.

Each line of ``<state dir>/summary.jsonl`` is a :class:`Header` (the first
line), a :class:`Segment` (one run of a session as of a journal offset) or a
:class:`~vizierd.journal_file.Damage` (a damaged journal line).
:class:`SegmentBuilder` turns a run's events into its segment, the same way
for the journal subscriber (from the events it writes) and for a reader
(from the journal lines it reads back); :mod:`vizierd.history` explains how
the lines together stay right.

This module imports only the standard library and msgspec.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

from vizierd.journal_file import Damage, JournalEntry

__all__ = [
    "BUCKET_SECONDS",
    "SUMMARY_NAME",
    "SUMMARY_SCHEMA",
    "Bucket",
    "Header",
    "Segment",
    "SegmentBuilder",
    "SummaryItem",
    "bucket_start",
    "builder_from_entry",
]

SUMMARY_NAME = "summary.jsonl"
SUMMARY_SCHEMA = "vizier.summary.v1"

#: Usage is kept per quarter hour: every time zone is a whole number of them.
BUCKET_SECONDS = 900


def bucket_start(timestamp: float) -> int:
    """Return the start (UTC epoch seconds) of the quarter hour of ``timestamp``."""
    seconds = int(timestamp // 1)
    return seconds - seconds % BUCKET_SECONDS


class Bucket(msgspec.Struct, array_like=True, gc=False):
    """One quarter hour of a segment's usage with one model.

    ``start`` is UTC epoch seconds; ``model`` indexes the segment's
    ``models``.  A token count is ``None`` while no call in the bucket
    reported it: unknown, not zero.
    """

    start: int
    model: int
    calls: int = 0
    unknown_calls: int = 0
    prompt: int | None = None
    completion: int | None = None
    total: int | None = None
    cached_input: int | None = None
    reasoning_output: int | None = None


class Segment(
    msgspec.Struct,
    tag="segment",
    tag_field="kind",
    kw_only=True,
    omit_defaults=True,
    gc=False,
):
    """One run of a session, as of journal offset ``upto``.

    ``start`` is the journal offset the run began at.  ``reset`` is set when
    the run carried no usage over, so it replaces earlier runs of the
    session; otherwise ``base`` holds the usage it carried over, counted
    only when no earlier run of the session is known.  ``calls`` and
    ``unknown_calls`` are the session's counts after the run's last report,
    as the ledger counts them (carried-over calls included).
    """

    session_id: str
    segment: str
    upto: int
    start: int
    started: datetime
    reset: bool = True
    final: bool = False
    action: str = ""
    source: str = ""
    model: str | None = None
    models: list[str | None] = []
    first_at: datetime | None = None
    last_at: datetime | None = None
    ended: datetime | None = None
    status: str = "running"
    path: str = ""
    project_root: str = ""
    input: str | None = None
    calls: int = 0
    unknown_calls: int = 0
    base: Bucket | None = None
    buckets: list[Bucket] = []


class Header(msgspec.Struct, tag="header", tag_field="kind", kw_only=True, gc=False):
    """The first line of the index: which journal it summarizes."""

    schema: str = SUMMARY_SCHEMA
    journal_ino: int


SummaryItem = Header | Segment | Damage

_encoder = msgspec.json.Encoder()


class _Totals(Protocol):
    """Carried-over usage: a ``TokenUsage`` or what the journal says of one."""

    @property
    def prompt_total(self) -> int | None: ...
    @property
    def completion_total(self) -> int | None: ...
    @property
    def total(self) -> int | None: ...
    @property
    def cached_input_total(self) -> int | None: ...
    @property
    def reasoning_output_total(self) -> int | None: ...
    @property
    def calls(self) -> int: ...
    @property
    def unknown_calls(self) -> int: ...


def _add(a: int | None, b: int | None) -> int | None:
    if b is None:
        return a
    return b if a is None else a + b


class SegmentBuilder:
    """Accounts one segment's events into its :class:`Segment`.

    The journal subscriber feeds it the events it journals; a reader feeds
    it what it reads back from the journal.  Both end up with the same
    segment.  The writer-side flags (``written``, ``dirty`` …) are unused
    by readers.
    """

    __slots__ = (
        "_buckets",
        "_pending",
        "dirty",
        "last_line",
        "reports",
        "seg",
        "written",
    )

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        # Built when the first report needs it: most segments only get read.
        self._buckets: dict[tuple[int, int], Bucket] | None = None
        # The observation a report is about comes right before the report.
        self._pending: tuple[float, str | None] | None = None
        self.written = False
        self.dirty = False
        self.reports = 0
        self.last_line = 0.0

    @classmethod
    def start(
        cls,
        *,
        session_id: str,
        segment: str,
        at: datetime,
        offset: int,
        action: str,
        source: str,
        model: str | None,
        path: str,
        project_root: str,
        input: str | None,
        resume: _Totals | None,
    ) -> SegmentBuilder:
        """Return a builder for a run that starts with ``session.started``."""
        seg = Segment(
            session_id=session_id,
            segment=segment,
            upto=offset,
            start=offset,
            started=at,
            reset=resume is None,
            action=action,
            source=source,
            model=model,
            path=path,
            project_root=project_root,
            input=input,
        )
        builder = cls(seg)
        if resume is not None:
            seg.calls = resume.calls
            seg.unknown_calls = resume.unknown_calls
            seg.base = Bucket(
                start=bucket_start(at.timestamp()),
                model=builder._model(model),
                calls=resume.calls,
                unknown_calls=resume.unknown_calls,
                prompt=resume.prompt_total,
                completion=resume.completion_total,
                total=resume.total,
                cached_input=resume.cached_input_total,
                reasoning_output=resume.reasoning_output_total,
            )
        return builder

    @property
    def pending(self) -> bool:
        """Whether an observation is waiting for its report."""
        return self._pending is not None

    def _model(self, name: str | None) -> int:
        models = self.seg.models
        try:
            return models.index(name)
        except ValueError:
            models.append(name)
            return len(models) - 1

    def activity(self, at: datetime) -> None:
        """Note an event of the conversation at ``at`` (first/last activity)."""
        seg = self.seg
        if seg.first_at is None or at < seg.first_at:
            seg.first_at = at
        if seg.last_at is None or at > seg.last_at:
            seg.last_at = at

    def observed(self, at: datetime, model: str | None) -> None:
        """Note a usage observation: the next report is timed by it."""
        self.activity(at)
        self._pending = (at.timestamp(), model)

    def report(
        self,
        at: datetime,
        *,
        prompt: int | None,
        completion: int | None,
        total: int | None,
        cached: int | None,
        reasoning: int | None,
        calls: int,
        unknown_calls: int,
    ) -> None:
        """Account one ``usage.report``: its deltas and its new call counts."""
        pending, self._pending = self._pending, None
        when, model = pending if pending is not None else (at.timestamp(), None)
        key = (bucket_start(when), self._model(model))
        buckets = self._buckets
        if buckets is None:
            buckets = self._buckets = {(b.start, b.model): b for b in self.seg.buckets}
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = Bucket(start=key[0], model=key[1])
            self.seg.buckets.append(bucket)

        seg = self.seg
        # A call without a report (zero tokens) is counted with the next one.
        bucket.calls += max(0, calls - seg.calls)
        bucket.unknown_calls += max(0, unknown_calls - seg.unknown_calls)
        seg.calls = max(seg.calls, calls)
        seg.unknown_calls = max(seg.unknown_calls, unknown_calls)
        bucket.prompt = _add(bucket.prompt, prompt)
        bucket.completion = _add(bucket.completion, completion)
        bucket.total = _add(bucket.total, total)
        bucket.cached_input = _add(bucket.cached_input, cached)
        bucket.reasoning_output = _add(bucket.reasoning_output, reasoning)
        self.dirty = True
        self.reports += 1

    def named(self, model: str | None) -> None:
        """Take the model the run's outcome names."""
        if model:
            self.seg.model = model
            self.dirty = True

    def ended(self, at: datetime, status: str) -> None:
        """Close the run with its final status."""
        self._pending = None
        self.seg.final = True
        self.seg.status = status
        self.seg.ended = at
        self.dirty = True

    def apply(self, entry: JournalEntry) -> None:
        """Account one event read back from the journal."""
        kind = entry.type
        if kind == "usage.report":
            self.report(
                entry.at,
                prompt=entry.prompt_delta,
                completion=entry.completion_delta,
                total=entry.delta_total,
                cached=entry.cached_input_delta,
                reasoning=entry.reasoning_output_delta,
                calls=entry.calls,
                unknown_calls=entry.unknown_calls,
            )
        elif kind == "usage.observed":
            self.observed(entry.at, entry.model)
        elif kind == "message":
            self.activity(entry.at)
        elif kind == "outcome":
            ref = entry.outcome.model if entry.outcome is not None else None
            self.named(ref.name if ref is not None else None)
        elif kind == "session.ended":
            self.ended(entry.at, entry.status or "ok")

    def line(self) -> bytes:
        """Return the segment as one index line (newline included)."""
        return _encoder.encode(self.seg) + b"\n"


def builder_from_entry(entry: JournalEntry, offset: int) -> SegmentBuilder:
    """Return a builder for the run a ``session.started`` line at ``offset`` opens."""
    return SegmentBuilder.start(
        session_id=entry.session_id or "",
        segment=entry.id,
        at=entry.at,
        offset=offset,
        action=entry.action,
        source=entry.source,
        model=entry.model,
        path=entry.path,
        project_root=entry.project_root,
        input=entry.input,
        resume=entry.resume_usage,
    )
