"""Which sessions the daemon is running, kept on disk so a crash can be undone.

A session log says ``running`` from its first write to its last.  When the
daemon dies in between (``kill -9``, a power cut), nothing would ever say
otherwise, so the daemon keeps one small marker file per running session in
``<state dir>/running/`` and, when it starts, marks every session a marker
still names as ``interrupted``.

The marker is created by a stage, before any subscriber sees the
``session.started`` event, so no session log can say ``running`` without
a marker.  It is removed only after the session-log writer has written the
session's last document, so a crash in between leaves a marker for a
session that ended; recovery finds the log already ended and leaves it be.
Reading the journal instead would find the same sessions, but costs a read
of the whole journal on every start.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from vizierd.atomic import write_atomic
from vizierd.bus import Subscription
from vizierd.errors import VizierError
from vizierd.events import AnyEvent, ErrorInfo, SessionEnded, SessionStarted, utcnow
from vizierd.sessions import load_session_doc

__all__ = ["Durable", "Marker", "RunningSessions", "SessionEnds", "recover"]

logger = logging.getLogger(__name__)

#: What a recovered session's error says.
CRASH_MESSAGE = "the daemon stopped during the session (it crashed or was killed)"


class Marker(msgspec.Struct, kw_only=True):
    """The content of one marker file."""

    session_id: str
    path: str
    pid: int


def _marker_name(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


class RunningSessions:
    """A stage that keeps a marker file for each running session.

    It also counts what ``vizier daemon status`` shows: the sessions running
    now and how many have ended.  Creating the marker is a small synchronous
    file write on the event loop; it has to happen before any subscriber
    sees the session start, and a stage is the only place that runs then.
    """

    name = "running-sessions"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        #: session id -> how many runs of it are going (two clients may
        #: ingest the same file at once).
        self.running: dict[str, int] = {}
        self.done = 0
        self._encoder = msgspec.json.Encoder()
        #: Set when nothing writes session logs: markers go at the end event.
        self.release_on_end = False

    def process(self, event: AnyEvent) -> AnyEvent:
        """Note starts and ends; return ``event`` unchanged."""
        sid = event.session_id
        if sid is None:
            return event
        if isinstance(event, SessionStarted):
            self.running[sid] = self.running.get(sid, 0) + 1
            marker = Marker(session_id=sid, path=event.path, pid=os.getpid())
            try:
                self._write(sid, self._encoder.encode(marker))
            except OSError as exc:
                logger.error("cannot write running marker of %s: %s", sid, exc)
        elif isinstance(event, SessionEnded) and sid in self.running:
            left = self.running[sid] - 1
            if left:
                self.running[sid] = left
            else:
                del self.running[sid]
            self.done += 1
            if self.release_on_end:
                self.release(sid)
        return event

    def _write(self, session_id: str, data: bytes) -> None:
        path = self.folder / _marker_name(session_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def release(self, session_id: str) -> None:
        """Remove the marker of ``session_id`` unless a run of it is going."""
        if session_id in self.running:
            return
        try:
            (self.folder / _marker_name(session_id)).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot remove running marker of %s: %s", session_id, exc)


class Durable:
    """Wraps a subscriber that must lose nothing, to tell when it is done.

    Once the wrapped subscriber has handled a session's ``session.ended``
    (successfully or not), it has handled every event of that session: a
    subscriber sees events in publish order.  Every attribute the bus reads
    (``policy``, ``capacity``, ``timeout``, ``accepts``, ``aclose``) comes
    from the wrapped subscriber.
    """

    def __init__(
        self, inner: Any, ends: SessionEnds, on_end: Callable[[str], None] | None
    ) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.subscription: Subscription | None = None
        self._ends = ends
        self._on_end = on_end

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def serving(self) -> bool:
        """Whether the subscriber still takes events (not quarantined)."""
        sub = self.subscription
        return sub is None or sub.state == "running"

    async def handle(self, event: AnyEvent) -> None:
        """Pass ``event`` on; note when a session's end has been handled.

        ``on_end`` runs only when the end was handled without an error.
        """
        sid = event.session_id
        if not isinstance(event, SessionEnded) or sid is None:
            await self.inner.handle(event)
            return
        try:
            await self.inner.handle(event)
            if self._on_end is not None:
                self._on_end(sid)
        finally:
            # Handled or failed, it is done with the session: a reply
            # waiting for it must not wait forever.
            self._ends.handled(self, sid)


class _Waiter:
    __slots__ = ("done", "left")

    def __init__(self, left: set[Durable]) -> None:
        self.left = left
        self.done = anyio.Event()
        if not left:
            self.done.set()


class SessionEnds:
    """Tells when every durable subscriber has handled a session's end.

    The daemon answers a request only then, so what a client is told was
    accounted is already in the session log and the journal.  Two runs of
    one session at the same time share a waiter, released by the first end.
    """

    def __init__(self) -> None:
        self.durable: list[Durable] = []
        self._waiting: dict[str, _Waiter] = {}

    def wrap(self, subscriber: Any, on_end: Callable[[str], None] | None) -> Durable:
        """Return ``subscriber`` wrapped, to be subscribed in its place."""
        durable = Durable(subscriber, self, on_end)
        self.durable.append(durable)
        return durable

    def expect(self, session_id: str) -> None:
        """Start tracking ``session_id``: call it before the session starts."""
        if session_id not in self._waiting:
            serving = {d for d in self.durable if d.serving}
            self._waiting[session_id] = _Waiter(serving)

    def handled(self, durable: Durable, session_id: str) -> None:
        """Note that ``durable`` has handled the end of ``session_id``."""
        waiter = self._waiting.get(session_id)
        if waiter is not None:
            waiter.left.discard(durable)
            if not waiter.left:
                waiter.done.set()

    async def wait(self, session_ids: Iterable[str]) -> None:
        """Return once every durable subscriber has handled these sessions' ends.

        Stops tracking them, also when cancelled.  A subscriber quarantined
        meanwhile never handles the end: bound the wait with a deadline.
        """
        ids = list(session_ids)
        try:
            for sid in ids:
                waiter = self._waiting.get(sid)
                if waiter is not None:
                    await waiter.done.wait()
        finally:
            for sid in ids:
                self._waiting.pop(sid, None)


def recover(folder: Path) -> list[str]:
    """Mark every session a marker in ``folder`` names as ``interrupted``.

    Each marker left by a daemon that is gone is read; if its session log
    still says ``running``, the log is rewritten (atomically) with status
    ``interrupted`` and an error saying the daemon stopped.  Call it only
    while holding the state directory's lock: every marker then belongs to
    a daemon that is gone.  Returns the ids of the sessions marked; never
    raises for a damaged marker or log (each is logged and skipped).
    """
    if not folder.is_dir():
        return []
    marked: list[str] = []
    decoder = msgspec.json.Decoder(Marker)
    for entry in sorted(folder.iterdir()):
        try:
            marker = decoder.decode(entry.read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            logger.warning("ignoring damaged running marker %s: %s", entry, exc)
            entry.unlink(missing_ok=True)
            continue
        try:
            doc = load_session_doc(Path(marker.path)) if marker.path else None
        except VizierError as exc:
            logger.warning("cannot recover session %s: %s", marker.session_id, exc)
            doc = None
        if doc is not None and doc.outcome.status == "running":
            doc.outcome.status = "interrupted"
            doc.outcome.exit_code = 130
            doc.outcome.error = ErrorInfo(kind="interrupted", message=CRASH_MESSAGE)
            doc.updated_at = utcnow()
            try:
                write_atomic(Path(marker.path), msgspec.json.encode(doc))
            except OSError as exc:
                logger.error("cannot rewrite session log %s: %s", marker.path, exc)
                continue
            marked.append(marker.session_id)
            logger.info(
                "session %s was left running by a crash: marked interrupted",
                marker.session_id,
            )
        entry.unlink(missing_ok=True)
    return marked
