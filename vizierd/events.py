"""The typed events that flow over the bus, and the documents built from them.

Every event is a msgspec Struct in one tagged union whose tag field is
``type``.  Field names are part of the public contract: new fields get
defaults, nothing is renamed or reordered.

This module imports only the standard library and msgspec, so the thin
client can decode pushed events without loading the daemon.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "OUTCOME_SCHEMA",
    "SESSION_SCHEMA",
    "AnyEvent",
    "CallUsage",
    "DedupRecord",
    "ErrorInfo",
    "Event",
    "Message",
    "MessageRecord",
    "ModelInfo",
    "Outcome",
    "OutcomeDoc",
    "Progress",
    "RepoInfo",
    "SessionDoc",
    "SessionEnded",
    "SessionOutcome",
    "SessionRef",
    "SessionStarted",
    "SubscriberFailed",
    "TextDelta",
    "TokenUsage",
    "UsageObserved",
    "UsageReport",
    "decode_event",
    "encode",
    "new_event_id",
    "token_usage_of",
    "utcnow",
]

OUTCOME_SCHEMA = "vizier.outcome.v1"
SESSION_SCHEMA = "vizier.session.v1"

Role = Literal["system", "user", "assistant", "tool"]
Scope = Literal["call", "cumulative"]
Status = Literal["ok", "error", "interrupted"]
SessionStatus = Literal["running", "ok", "error", "interrupted"]

# Event ids must be unique without paying for a uuid per event: a random
# per-process prefix plus a counter is unique across processes and restarts.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_event_id() -> str:
    """Return a new process-unique event id."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER)}"


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    """Fields every event carries.

    ``seq`` is the per-session order; the bus assigns it when the event is
    published, so a producer leaves it at 0.
    """

    id: str = msgspec.field(default_factory=new_event_id)
    session_id: str | None = None
    seq: int = 0
    at: datetime = msgspec.field(default_factory=utcnow)


class TokenUsage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A session's running totals and the last change to them.

    Unknown is never zero: the totals are ``None`` until a call with known
    usage is counted, and the deltas are ``None`` in a report triggered by a
    call without usage (``known`` false).  ``cached_input_*`` and
    ``reasoning_output_*`` stay ``None`` (and are left out of JSON) until a
    source reports them.
    """

    prompt_total: int | None
    completion_total: int | None
    total: int | None
    prompt_delta: int | None
    completion_delta: int | None
    delta_total: int | None
    calls: int
    unknown_calls: int
    known: bool
    cached_input_total: int | None = None
    cached_input_delta: int | None = None
    reasoning_output_total: int | None = None
    reasoning_output_delta: int | None = None


class DedupRecord(msgspec.Struct, kw_only=True):
    """Drop counts by reason, and the stage's state to resume from."""

    dropped: dict[str, int] = msgspec.field(default_factory=dict)
    state: dict[str, Any] = msgspec.field(default_factory=dict)


class SessionStarted(Event, tag="session.started", kw_only=True):
    """A session began: one ``ask``, one ingested input."""

    action: str
    source: str
    cwd: str = ""
    project_root: str = ""
    model: str | None = None
    client_pid: int | None = None
    path: str = ""
    input: str | None = None
    resume_dedup: DedupRecord | None = None
    resume_usage: TokenUsage | None = None


class Message(Event, tag="message", kw_only=True):
    """One message of the conversation."""

    role: Role
    content: str
    model: str | None = None
    request_id: str | None = None


class TextDelta(Event, tag="text.delta", kw_only=True):
    """A chunk of streamed assistant text, for live display only."""

    text: str


class UsageObserved(Event, tag="usage.observed", kw_only=True):
    """One raw usage observation, exactly as a source reported it.

    A count is ``None`` when the source did not report it; ``known`` is
    false when the source reported no usage at all.  ``replay`` marks an
    observation that repeats another session's history (the replayed
    prefix of a forked Codex session); it only sets a baseline.
    ``continues`` is set by the dedup stage on the difference it passes on
    for a progressive snapshot: tokens added to a call already counted.
    """

    source: str
    request_id: str | None = None
    model: str | None = None
    scope: Scope = "call"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    reasoning_tokens: int | None = None
    known: bool = True
    replay: bool = False
    continues: bool = False


class UsageReport(Event, tag="usage.report", kw_only=True, omit_defaults=True):
    """The ledger's report after dedup; see :class:`TokenUsage`."""

    prompt_total: int | None
    completion_total: int | None
    total: int | None
    prompt_delta: int | None
    completion_delta: int | None
    delta_total: int | None
    calls: int
    unknown_calls: int
    known: bool
    cached_input_total: int | None = None
    cached_input_delta: int | None = None
    reasoning_output_total: int | None = None
    reasoning_output_delta: int | None = None


_USAGE_FIELDS = TokenUsage.__struct_fields__


def token_usage_of(report: UsageReport) -> TokenUsage:
    """Return the usage fields of ``report`` as a :class:`TokenUsage`."""
    return TokenUsage(**{name: getattr(report, name) for name in _USAGE_FIELDS})


class Progress(Event, tag="progress", kw_only=True):
    """A generic progress line: ``[kind] phase — message (detail)``."""

    kind: str
    phase: str
    message: str
    detail: str | None = None


class SessionRef(msgspec.Struct, kw_only=True):
    id: str
    path: str


class ModelInfo(msgspec.Struct, kw_only=True):
    provider: str | None
    name: str


class ErrorInfo(msgspec.Struct, kw_only=True):
    kind: str
    message: str


class OutcomeDoc(msgspec.Struct, kw_only=True):
    """The ``vizier.outcome.v1`` document: what ``--json`` prints."""

    schema: str = OUTCOME_SCHEMA
    action: str
    status: Status
    exit_code: int
    session: SessionRef
    started_at: datetime
    elapsed_ms: int
    model: ModelInfo | None = None
    summary: str | None = None
    token_usage: TokenUsage | None = None
    error: ErrorInfo | None = None


class Outcome(Event, tag="outcome", kw_only=True):
    """The session's final outcome."""

    outcome: OutcomeDoc


class SessionEnded(Event, tag="session.ended", kw_only=True):
    """The session is over.  The dedup stage fills in ``dedup`` on its way."""

    status: Status
    dedup: DedupRecord | None = None
    waiting_for_parent: str | None = None


class SubscriberFailed(Event, tag="subscriber.failed", kw_only=True):
    """A subscriber was quarantined after repeated failures."""

    subscriber: str
    reason: str


AnyEvent = (
    SessionStarted
    | Message
    | TextDelta
    | UsageObserved
    | UsageReport
    | Progress
    | Outcome
    | SessionEnded
    | SubscriberFailed
)


# --- the session log -------------------------------------------------------


class RepoInfo(msgspec.Struct, kw_only=True):
    root: str
    branch: str | None = None
    head: str | None = None


class CallUsage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One model call's usage as counted (after dedup).  ``None`` is unknown."""

    known: bool = True
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    reasoning_tokens: int | None = None


class MessageRecord(msgspec.Struct, kw_only=True):
    role: Role
    content: str
    at: datetime
    model: str | None = None
    request_id: str | None = None
    usage: CallUsage | None = None


class SessionOutcome(msgspec.Struct, kw_only=True):
    status: SessionStatus
    summary: str | None = None
    token_usage: TokenUsage | None = None
    exit_code: int | None = None
    error: ErrorInfo | None = None


class SessionDoc(msgspec.Struct, kw_only=True):
    """The ``vizier.session.v1`` document written to ``session.json``."""

    schema: str = SESSION_SCHEMA
    id: str
    created_at: datetime
    updated_at: datetime
    tool_version: str
    action: str
    source: str
    repo: RepoInfo
    model: str | None = None
    messages: list[MessageRecord] = msgspec.field(default_factory=list)
    usage_reports: list[TokenUsage] = msgspec.field(default_factory=list)
    dedup: DedupRecord = msgspec.field(default_factory=DedupRecord)
    outcome: SessionOutcome = msgspec.field(
        default_factory=lambda: SessionOutcome(status="running")
    )
    input: str | None = None
    waiting_for_parent: str | None = None


_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(AnyEvent)


def encode(obj: object) -> bytes:
    """Encode any event or document as compact JSON."""
    return _encoder.encode(obj)


def decode_event(data: bytes | str) -> AnyEvent:
    """Decode one event from JSON.

    Raises :class:`msgspec.ValidationError` or :class:`msgspec.DecodeError`
    when ``data`` is not a valid event.
    """
    return _event_decoder.decode(data)
