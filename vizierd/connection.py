"""One client connection of the daemon, and the event streams pushed to it.

:class:`Connection` is the writing end of a connection: frames from the
requests running on it go out whole, one at a time, and once the peer is
gone nothing more is written.  :class:`ClientStream` (the events of the
sessions a request runs) and :class:`WatchStream` (what ``vizier watch``
sees) are bus subscribers that push events on a connection.
"""

from __future__ import annotations

import contextvars

import anyio
import msgspec
from anyio.abc import SocketStream

from vizierd.bus import Subscription
from vizierd.events import (
    AnyEvent,
    Outcome,
    OutcomeDoc,
    Progress,
    SessionEnded,
    SubscriberFailed,
)
from vizierd.protocol import MAX_FRAME, Failure, Pushed, frame
from vizierd.running import SessionEnds

__all__ = [
    "ClientStream",
    "Connection",
    "WatchStream",
    "current_stream",
    "peer_refusal",
]

#: Seconds to deliver a Failure to a peer that is being turned away.
REFUSAL_TIMEOUT = 1.0
#: Bytes read (and dropped) from a refused peer before closing on it.
_REFUSAL_READ = 1 << 20

_encoder = msgspec.json.Encoder()

# The client stream of the request running in the current task.  Sessions a
# request starts indirectly (a Codex fork recomputed when its parent arrives)
# publish from the request's task, so their events find their way too.
current_stream: contextvars.ContextVar[ClientStream] = contextvars.ContextVar(
    "vizier_client_stream"
)


def peer_refusal(uid: int | None, own_uid: int) -> str | None:
    """Return why a peer with ``uid`` is refused, or ``None`` to let it in.

    Only the daemon's own user may connect.  A peer whose uid cannot be
    told (no ``SO_PEERCRED`` on this platform) is let in: the socket's mode
    (0600) and its directory (0700) already keep other users out.
    """
    if uid is None or uid == own_uid:
        return None
    return f"peer uid {uid} is not the daemon's uid {own_uid}"


class Connection:
    """One client connection: its stream, its running requests, its writer."""

    def __init__(self, stream: SocketStream, number: int) -> None:
        self.stream = stream
        self.number = number
        self.alive = True
        self.closed = anyio.Event()
        self.requests: dict[int, anyio.CancelScope] = {}
        self.subscriptions: list[Subscription] = []
        self._lock = anyio.Lock()
        self._sending: anyio.CancelScope | None = None

    async def send(self, message: object) -> bool:
        """Send one message; return False once the connection is gone."""
        return await self.send_frame(frame(message))

    async def send_frame(self, data: bytes) -> bool:
        """Send one encoded frame whole; return False once the connection is gone.

        Frames from the request tasks of one connection never interleave.
        """
        async with self._lock:
            if not self.alive:
                return False
            with anyio.CancelScope() as scope:
                self._sending = scope
                try:
                    await self.stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self.alive = False
                finally:
                    self._sending = None
            if scope.cancelled_caught:
                self.alive = False
            return self.alive

    async def refuse(self, failure: Failure) -> None:
        """Send ``failure`` with a short deadline; the caller then closes.

        Closing a Unix socket with unread input resets the connection, and
        the peer may then lose the failure before reading it: so what the
        peer sent is read and discarded until it closes too (or a deadline).
        """
        with anyio.move_on_after(REFUSAL_TIMEOUT):
            if await self.send(failure):
                try:
                    await self.stream.send_eof()
                    left = _REFUSAL_READ
                    while left > 0:
                        left -= len(await self.stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
        self.alive = False

    def gone(self) -> None:
        """Stop writing: the peer left, broke the protocol, or the daemon stops."""
        self.alive = False
        self.closed.set()
        if self._sending is not None:
            self._sending.cancel()

    def cancel_requests(self) -> None:
        """Cancel every request running on this connection."""
        for scope in list(self.requests.values()):
            scope.cancel()


def _pushed(request_id: int, event: AnyEvent) -> bytes:
    data = _encoder.encode(event)
    if len(data) > MAX_FRAME - 1024:
        # The client refuses frames this large; the event itself is accounted
        # and kept in the session log, so the client is only told about it.
        note = Progress(
            session_id=event.session_id,
            seq=event.seq,
            kind="stream",
            phase="skipped",
            message=f"a {type(event).__struct_config__.tag} event too large to show",
            detail=f"{len(data):,} bytes; it is in the session log",
        )
        data = _encoder.encode(note)
    return frame(Pushed(id=request_id, event=msgspec.Raw(data)))


class ClientStream:
    """Pushes the events of one request's sessions to its client.

    Subscribed with ``block``: a client that reads slowly holds up only the
    sessions it runs.  Once the client is gone, events are consumed and not
    sent, so the sessions finish (interrupted) without waiting for it.
    """

    def __init__(self, conn: Connection, request_id: int, ends: SessionEnds) -> None:
        self.name = f"client-{conn.number}.{request_id}"
        self.conn = conn
        self.request_id = request_id
        #: The sessions this request runs.
        self.ids: set[str] = set()
        #: Those of them still running: a later run of the same session (by
        #: another command) is not this request's to show.
        self._live: set[str] = set()
        #: Outcomes seen, for the reply of a request that was interrupted.
        self.outcomes: list[OutcomeDoc] = []
        self._ends = ends

    def started(self, session_id: str) -> None:
        """Note a session of this request, before its first event."""
        self.ids.add(session_id)
        self._live.add(session_id)
        self._ends.expect(session_id)

    def accepts(self, event: AnyEvent) -> bool:
        """Return whether ``event`` belongs to this request's sessions."""
        sid = event.session_id
        if sid is None:
            return isinstance(event, SubscriberFailed)
        if sid in self._live:
            if isinstance(event, SessionEnded):
                self._live.discard(sid)
            return True
        if current_stream.get(None) is self:
            self.started(sid)
            return True
        return False

    async def handle(self, event: AnyEvent) -> None:
        """Push ``event`` to the client (or only note its outcome, once gone)."""
        if isinstance(event, Outcome):
            self.outcomes.append(event.outcome)
        if self.conn.alive:
            await self.conn.send_frame(_pushed(self.request_id, event))


class WatchStream:
    """Pushes every event (optionally of one session) to a ``watch`` client.

    Subscribed with ``drop_oldest``: a watcher never slows a session.  When
    events were dropped for it, it is told how many before the next event.
    """

    def __init__(self, conn: Connection, request_id: int, prefix: str | None):
        self.name = f"watch-{conn.number}.{request_id}"
        self.conn = conn
        self.request_id = request_id
        self.prefix = prefix
        self.subscription: Subscription | None = None
        self._reported = 0

    def accepts(self, event: AnyEvent) -> bool:
        """Return whether ``event`` is one this watcher asked for."""
        if self.prefix is None:
            return True
        sid = event.session_id
        return sid is not None and sid.startswith(self.prefix)

    async def handle(self, event: AnyEvent) -> None:
        """Push ``event``, after a note of any events dropped since the last."""
        if not self.conn.alive:
            return
        sub = self.subscription
        if sub is not None and sub.dropped > self._reported:
            count = sub.dropped - self._reported
            self._reported = sub.dropped
            note = Progress(
                kind="watch",
                phase="dropped",
                message=f"{count} events dropped: this watcher fell behind",
                detail=f"{sub.dropped} dropped in all",
            )
            await self.conn.send_frame(_pushed(self.request_id, note))
        await self.conn.send_frame(_pushed(self.request_id, event))
