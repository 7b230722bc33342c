"""The session-log writer: ``<project>/.vizier/sessions/<id>/session.json``.

The file is always a complete, valid ``vizier.session.v1`` document: it is
written whole to a temporary file in the same directory, fsynced, renamed
over the old one, and the directory is fsynced.  It is written when the
session starts, after usage reports (at most a few times a second) and at
the end.  All file work runs in a worker thread, off the event loop.

While a session runs its document lives in memory; once the session has
ended and been written, nothing of it is kept.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
import msgspec

from vizierd import __version__
from vizierd.atomic import write_atomic
from vizierd.events import (
    AnyEvent,
    CallUsage,
    ErrorInfo,
    Message,
    MessageRecord,
    Outcome,
    SessionDoc,
    SessionEnded,
    SessionOutcome,
    SessionStarted,
    UsageObserved,
    UsageReport,
    token_usage_of,
    utcnow,
)
from vizierd.plugins import PluginContext
from vizierd.sessions import load_session_doc, repo_info

__all__ = ["SessionLogWriter", "create", "write_atomic"]

logger = logging.getLogger(__name__)

#: Reports arriving faster than this are coalesced into one write.
WRITE_INTERVAL = 0.25
#: ... and a document that takes long to write is written at most once per
#: this many times its last write took.
WRITE_COST_FACTOR = 10

_encoder = msgspec.json.Encoder()


class _Open:
    __slots__ = ("dirty", "doc", "interval", "last_write", "path")

    def __init__(self, doc: SessionDoc, path: Path) -> None:
        self.doc = doc
        self.path = path
        self.dirty = True
        self.last_write = 0.0
        self.interval = WRITE_INTERVAL


class SessionLogWriter:
    """Keeps each running session's document and writes it atomically."""

    name = "session-log"
    policy = "block"

    def __init__(self) -> None:
        self._open: dict[str | None, _Open] = {}

    async def handle(self, event: AnyEvent) -> None:
        if isinstance(event, SessionStarted):
            await self._started(event)
            return
        entry = self._open.get(event.session_id)
        if entry is None:
            return
        doc = entry.doc

        if isinstance(event, Message):
            self._message(doc, event)
            entry.dirty = True
        elif isinstance(event, UsageObserved):
            self._usage(doc, event)
        elif isinstance(event, UsageReport):
            doc.usage_reports.append(token_usage_of(event))
            doc.outcome.token_usage = doc.usage_reports[-1]
            entry.dirty = True
            if time.monotonic() - entry.last_write >= entry.interval:
                await self._write(entry)
        elif isinstance(event, Outcome):
            out = event.outcome
            doc.outcome = SessionOutcome(
                status=out.status,
                summary=out.summary,
                token_usage=out.token_usage,
                exit_code=out.exit_code,
                error=out.error,
            )
            if out.model is not None:
                doc.model = out.model.name
            entry.dirty = True
        elif isinstance(event, SessionEnded):
            if event.dedup is not None:
                doc.dedup = event.dedup
            doc.waiting_for_parent = event.waiting_for_parent
            del self._open[event.session_id]
            await self._write(entry)

    def flush_due(self) -> float | None:
        """Return the seconds until a coalesced write is due, or ``None``."""
        pending = [e.last_write for e in self._open.values() if e.dirty]
        if not pending:
            return None
        return (
            min(e.last_write + e.interval for e in self._open.values() if e.dirty)
            - time.monotonic()
        )

    async def flush(self) -> None:
        """Write every session whose latest changes are not on disk yet."""
        for entry in list(self._open.values()):
            if entry.dirty:
                await self._write(entry)

    async def _started(self, event: SessionStarted) -> None:
        path = Path(event.path)
        try:
            previous = await anyio.to_thread.run_sync(load_session_doc, path)
        except Exception as exc:
            # A damaged earlier log is replaced, not trusted; say so once.
            logger.warning("replacing unreadable session log %s: %s", path, exc)
            previous = None
        now = utcnow()
        if previous is not None and event.resume_usage is not None:
            doc = previous
            doc.outcome = SessionOutcome(
                status="running", token_usage=previous.outcome.token_usage
            )
        else:
            root = Path(event.project_root or event.cwd or ".")
            doc = SessionDoc(
                id=event.session_id or "",
                created_at=previous.created_at if previous else event.at,
                updated_at=now,
                tool_version=__version__,
                action=event.action,
                source=event.source,
                repo=await anyio.to_thread.run_sync(repo_info, root),
                model=event.model,
            )
        doc.input = event.input or doc.input
        if event.model:
            doc.model = event.model
        entry = self._open[event.session_id] = _Open(doc, path)
        await self._write(entry)

    @staticmethod
    def _message(doc: SessionDoc, event: Message) -> None:
        if event.request_id is not None:
            # Re-ingesting a log replays its messages: keep each one once.
            for old in reversed(doc.messages):
                if old.request_id == event.request_id and old.role == event.role:
                    old.content = event.content
                    return
        doc.messages.append(
            MessageRecord(
                role=event.role,
                content=event.content,
                at=event.at,
                model=event.model,
                request_id=event.request_id,
            )
        )

    @staticmethod
    def _usage(doc: SessionDoc, event: UsageObserved) -> None:
        if event.request_id is None:
            return
        for message in reversed(doc.messages):
            if message.request_id != event.request_id:
                continue
            usage = message.usage
            if usage is None or not event.continues:
                message.usage = CallUsage(
                    known=event.known,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    total_tokens=event.total_tokens,
                    cached_prompt_tokens=event.cached_prompt_tokens,
                    reasoning_tokens=event.reasoning_tokens,
                )
            else:
                for field in CallUsage.__struct_fields__[1:]:
                    added = getattr(event, field)
                    if added is not None:
                        setattr(usage, field, (getattr(usage, field) or 0) + added)
            return

    async def _write(self, entry: _Open) -> None:
        entry.doc.updated_at = utcnow()
        data = _encoder.encode(entry.doc)
        entry.dirty = False
        started = entry.last_write = time.monotonic()
        try:
            await anyio.to_thread.run_sync(write_atomic, entry.path, data)
            # A long session's document grows with it: space the writes out
            # so rewriting it never takes more than a tenth of the time.
            cost = time.monotonic() - started
            entry.interval = max(WRITE_INTERVAL, WRITE_COST_FACTOR * cost)
        except OSError as exc:
            # The session goes on; the next write tries again.
            entry.dirty = True
            logger.error("cannot write session log %s: %s", entry.path, exc)
            raise

    async def aclose(self) -> None:
        """Write every session still open (the bus is shutting down)."""
        for entry in list(self._open.values()):
            if entry.doc.outcome.status == "running":
                entry.doc.outcome.status = "interrupted"
                entry.doc.outcome.error = ErrorInfo(
                    kind="interrupted", message="vizier stopped during the session"
                )
            await self._write(entry)
        self._open.clear()


def create(context: PluginContext) -> SessionLogWriter:
    """Entry-point factory."""
    return SessionLogWriter()
