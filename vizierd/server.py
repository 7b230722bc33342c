"""The daemon's socket server: connections, requests and the events pushed back.

Each connection is served by its own task.  It must open with a hello (within
a deadline, so an idle connection cannot hold a slot) whose protocol version
matches; then the client sends requests, each with an id, and each runs in a
task of its own:

* ``ingest`` and ``ask`` run their sessions through :mod:`vizierd.service`,
  exactly as ``--no-daemon`` does.  A per-request subscription (``block``:
  nothing is lost) pushes every event of those sessions to the client, so a
  slow client slows only its own sessions.  A :class:`Reply` with the
  outcomes follows the last pushed event.
* ``watch`` pushes every event (or those of one session) until the client
  goes away; it drops the oldest when the client falls behind and says so.
* ``status``, ``stop``, ``cancel`` and the queries are answered directly.

Whatever a peer sends (garbage, a truncated or oversized frame, bad JSON, an
unknown message) is answered with a :class:`Failure` or a closed connection,
never with a crash: the daemon keeps serving everyone else.
"""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketListener, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from vizierd import __version__, service
from vizierd.connection import (
    ClientStream,
    Connection,
    WatchStream,
    current_stream,
    peer_refusal,
)
from vizierd.errors import VizierError
from vizierd.events import OutcomeDoc
from vizierd.pipeline import Pipeline
from vizierd.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    AskRequest,
    CancelRequest,
    ClientMessage,
    DaemonStatus,
    Failure,
    Hello,
    IngestRequest,
    Reply,
    StatusRequest,
    StopRequest,
    WatchRequest,
    Welcome,
    decode_client,
    peer_uid,
    read_length,
)
from vizierd.running import RunningSessions, SessionEnds

PACKAGE_PATH = str(Path(__file__).resolve().parent)


def preload() -> None:
    """Import what requests will need, once, in a worker thread.

    A daemon outlives the installation it was started from: importing
    everything up front keeps a reinstall from pulling modules out from
    under it, and makes the first ``ask`` as quick as the next.
    """
    import vizierd.backends.openai_backend
    import vizierd.queries
    import vizierd.tables  # noqa: F401


__all__ = ["Server"]

logger = logging.getLogger(__name__)

#: Seconds a new connection has to send its hello.
HELLO_TIMEOUT = 5.0
#: A connection running no request is closed after this many idle seconds.
IDLE_TIMEOUT = float(os.environ.get("VIZIER_IDLE_TIMEOUT", "60"))
#: Connections served at once; more are refused with a Failure.
MAX_CONNECTIONS = 256
#: Seconds running requests get to end cleanly when the daemon stops.
STOP_GRACE = 5.0
#: Seconds a reply waits for the session log and the journal to catch up.
DURABLE_WAIT = 60.0

_id_only = msgspec.json.Decoder(dict[str, Any])


class Server:
    """Serves clients on a listening socket with one pipeline.

    ``serve`` returns once :meth:`request_stop` was called and every
    connection is closed; the caller then closes the pipeline, which drains
    the bus and writes every session log.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        running: RunningSessions,
        ends: SessionEnds,
        *,
        socket_path: Path,
        hello_timeout: float = HELLO_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.pipeline = pipeline
        self.running = running
        self.ends = ends
        self.socket_path = socket_path
        self.hello_timeout = hello_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.stop_grace = stop_grace
        self.started_at = datetime.now(UTC)
        self._clock = time.monotonic()
        self._own_uid = os.getuid()
        self._connections: set[Connection] = set()
        self._numbers = 0
        self._stop = anyio.Event()
        self._requests = 0
        self._no_requests = anyio.Event()
        self._no_requests.set()

    # --- lifecycle ---------------------------------------------------------

    def request_stop(self) -> None:
        """Ask :meth:`serve` to stop accepting and shut down gracefully."""
        self._stop.set()

    async def serve(self, listener: SocketListener) -> None:
        """Accept connections until asked to stop; then end every connection.

        Running requests are cancelled (their sessions end ``interrupted``)
        and get ``stop_grace`` seconds to send their replies; connections
        still busy after that are cut.
        """
        async with anyio.create_task_group() as connections:
            async with anyio.create_task_group() as accepting:
                accepting.start_soon(self._accept, listener, connections)
                await self._stop.wait()
                accepting.cancel_scope.cancel()
            await listener.aclose()
            logger.info("stopped accepting connections")

            for conn in list(self._connections):
                conn.cancel_requests()
            with anyio.move_on_after(self.stop_grace):
                await self._no_requests.wait()
            for conn in list(self._connections):
                await self._cut(conn)
            connections.cancel_scope.cancel()

    async def _cut(self, conn: Connection) -> None:
        conn.gone()
        for sub in list(conn.subscriptions):
            # Releases a session blocked on this client's full queue.
            await self.pipeline.bus.unsubscribe(sub, drain=False)

    async def _accept(self, listener: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: wait a little rather than spin.
                logger.warning("accept failed: %s", exc)
                await anyio.sleep(0.1)
                continue
            self._numbers += 1
            tg.start_soon(self._connection, stream, self._numbers)

    # --- one connection ------------------------------------------------------

    async def _connection(self, stream: SocketStream, number: int) -> None:
        conn = Connection(stream, number)
        try:
            refusal = self._admission(stream)
            if refusal is not None:
                kind, reason = refusal
                logger.info("connection %d refused: %s", number, reason)
                message = f"the daemon refused the connection: {reason}"
                await conn.refuse(
                    Failure(id=0, kind=kind, message=message, exit_code=3)
                )
                return
            self._connections.add(conn)
            async with anyio.create_task_group() as tg:
                await self._converse(conn, tg)
                conn.gone()
                conn.cancel_requests()
        except Exception:
            logger.exception("connection %d failed", number)
        finally:
            conn.gone()
            self._connections.discard(conn)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            logger.debug("connection %d closed", number)

    def _admission(self, stream: SocketStream) -> tuple[str, str] | None:
        """Return (kind, reason) when a new connection is refused, else None."""
        if len(self._connections) >= self.max_connections:
            return "busy", (
                f"too many connections ({self.max_connections} at once); "
                "try again later"
            )
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        try:
            reason = peer_refusal(peer_uid(raw), self._own_uid)
        except OSError as exc:
            reason = f"cannot tell the peer's uid ({exc})"
        return None if reason is None else ("permission", reason)

    async def _converse(self, conn: Connection, tg: TaskGroup) -> None:
        """Read the hello, then requests, until the peer leaves or errs."""
        reader = BufferedByteReceiveStream(conn.stream)
        try:
            with anyio.fail_after(self.hello_timeout):
                hello = await self._read(conn, reader)
        except TimeoutError:
            logger.info("connection %d sent no hello in time: closed", conn.number)
            await conn.refuse(
                Failure(
                    id=0,
                    kind="protocol",
                    message=f"no hello within {self.hello_timeout:g} s",
                    exit_code=3,
                )
            )
            return
        if not await self._welcome(conn, hello):
            return

        while True:
            # A connection with nothing running must not hold one of the
            # limited places for ever: idle for IDLE_TIMEOUT, it is closed.
            idle = self.idle_timeout if not conn.requests else math.inf
            with anyio.move_on_after(idle) as waiting:
                message = await self._read(conn, reader)
            if waiting.cancelled_caught:
                logger.info("connection %d idle: closed", conn.number)
                return
            if message is None:
                return
            if isinstance(message, Failure):
                await conn.send(message)
                continue
            await self._dispatch(conn, message, tg)

    async def _welcome(self, conn: Connection, hello: object) -> bool:
        if hello is None:
            return False
        if not isinstance(hello, Hello):
            message = "the first message must be a hello"
            if isinstance(hello, Failure):
                message = f"{hello.message} (the first message must be a hello)"
            await conn.refuse(
                Failure(id=0, kind="protocol", message=message, exit_code=3)
            )
            return False
        if hello.version != PROTOCOL_VERSION:
            message = (
                f"protocol version mismatch: the client speaks version "
                f"{hello.version}, this daemon speaks version {PROTOCOL_VERSION}; "
                "restart the daemon (vizier daemon restart) or upgrade the client"
            )
            logger.info("connection %d refused: %s", conn.number, message)
            await conn.refuse(
                Failure(id=0, kind="version", message=message, exit_code=3)
            )
            return False
        return await conn.send(
            Welcome(
                version=PROTOCOL_VERSION,
                daemon_pid=os.getpid(),
                tool_version=__version__,
                package_path=PACKAGE_PATH,
            )
        )

    async def _read(
        self, conn: Connection, reader: BufferedByteReceiveStream
    ) -> ClientMessage | Failure | None:
        """Return the next message, a Failure to answer, or None to close.

        A frame that cannot be read whole (oversized, truncated, the peer
        gone) closes the connection; one that was read but does not decode
        is answered and the connection goes on, since the framing is intact.
        """
        try:
            header = await reader.receive_exactly(4)
            length = read_length(header)
            if length > MAX_FRAME:
                logger.info(
                    "connection %d: frame of %d bytes refused", conn.number, length
                )
                await conn.refuse(
                    Failure(
                        id=0,
                        kind="protocol",
                        message=(
                            f"frame of {length:,} bytes is over the limit of "
                            f"{MAX_FRAME:,} bytes"
                        ),
                        exit_code=3,
                    )
                )
                return None
            body = await reader.receive_exactly(length)
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
        ):
            return None
        try:
            return decode_client(body)
        except msgspec.ValidationError as exc:
            return Failure(
                id=_request_id(body), kind="protocol", message=f"bad message: {exc}"
            )
        except msgspec.DecodeError as exc:
            return Failure(id=0, kind="protocol", message=f"bad JSON: {exc}")

    async def _dispatch(
        self, conn: Connection, message: ClientMessage, tg: TaskGroup
    ) -> None:
        if isinstance(message, Hello):
            await conn.send(
                Failure(id=0, kind="protocol", message="hello was already received")
            )
        elif isinstance(message, CancelRequest):
            scope = conn.requests.get(message.target)
            if scope is not None:
                scope.cancel()
            await conn.send(
                Reply(id=message.id, result={"cancelled": scope is not None})
            )
        elif isinstance(message, StatusRequest):
            await conn.send(Reply(id=message.id, result=self.status()))
        elif isinstance(message, StopRequest):
            logger.info("stop requested by connection %d", conn.number)
            await conn.send(Reply(id=message.id, result={"pid": os.getpid()}))
            self.request_stop()
        elif message.id in conn.requests:
            await conn.send(
                Failure(
                    id=message.id,
                    kind="protocol",
                    message=f"request {message.id} is already running",
                )
            )
        elif self._stop.is_set():
            await conn.send(
                Failure(
                    id=message.id,
                    kind="daemon",
                    message="the daemon is stopping",
                    exit_code=3,
                )
            )
        else:
            scope = conn.requests[message.id] = anyio.CancelScope()
            if not self._requests:
                self._no_requests = anyio.Event()
            self._requests += 1
            tg.start_soon(self._request, conn, message, scope)

    # --- requests -------------------------------------------------------------

    async def _request(
        self, conn: Connection, req: Any, scope: anyio.CancelScope
    ) -> None:
        logger.debug("connection %d: %s request %d", conn.number, _kind(req), req.id)
        try:
            if isinstance(req, IngestRequest | AskRequest):
                await self._sessions(conn, req, scope)
            elif isinstance(req, WatchRequest):
                await self._watch(conn, req, scope)
            else:
                with scope:
                    result = await service.run_query(self.pipeline, req)
                if not scope.cancelled_caught:
                    await conn.send(Reply(id=req.id, result=result))
        except VizierError as exc:
            await conn.send(
                Failure(
                    id=req.id, kind=exc.kind, message=str(exc), exit_code=exc.exit_code
                )
            )
        except Exception as exc:
            logger.exception("%s request %d failed", _kind(req), req.id)
            await conn.send(
                Failure(
                    id=req.id,
                    kind="internal",
                    message=f"internal error in the daemon: {type(exc).__name__}: "
                    f"{exc}",
                )
            )
        finally:
            conn.requests.pop(req.id, None)
            self._requests -= 1
            if not self._requests:
                self._no_requests.set()

    async def _sessions(
        self,
        conn: Connection,
        req: IngestRequest | AskRequest,
        scope: anyio.CancelScope,
    ) -> None:
        stream = ClientStream(conn, req.id, self.ends)
        bus = self.pipeline.bus
        sub = bus.subscribe(
            stream, policy="block", timeout=math.inf, accepts=stream.accepts
        )
        conn.subscriptions.append(sub)
        outcomes: list[OutcomeDoc] | None = None
        token = current_stream.set(stream)
        try:
            with scope:
                if isinstance(req, IngestRequest):
                    outcomes = await service.run_ingest_request(
                        self.pipeline, req, on_start=stream.started
                    )
                else:
                    outcome = await service.run_ask_request(
                        self.pipeline, req, on_start=stream.started
                    )
                    outcomes = [outcome]
        finally:
            current_stream.reset(token)
            try:
                # What the reply says was accounted is on disk first, and
                # every event of the request's sessions reaches the client
                # before the reply does.
                with anyio.move_on_after(DURABLE_WAIT) as waiting:
                    await self.ends.wait(stream.ids)
                if waiting.cancelled_caught:
                    logger.warning(
                        "request %d: the session log or journal is %g s behind",
                        req.id,
                        DURABLE_WAIT,
                    )
                await sub.wait_drained()
            finally:
                with anyio.CancelScope(shield=True):
                    await bus.unsubscribe(sub, drain=False)
                conn.subscriptions.remove(sub)
        await conn.send(
            Reply(id=req.id, outcomes=stream.outcomes if outcomes is None else outcomes)
        )

    async def _watch(
        self, conn: Connection, req: WatchRequest, scope: anyio.CancelScope
    ) -> None:
        watcher = WatchStream(conn, req.id, req.session)
        bus = self.pipeline.bus
        sub = watcher.subscription = bus.subscribe(
            watcher, policy="drop_oldest", timeout=math.inf, accepts=watcher.accepts
        )
        conn.subscriptions.append(sub)
        try:
            with scope:
                await conn.closed.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await bus.unsubscribe(sub, drain=False)
            conn.subscriptions.remove(sub)
        await conn.send(Reply(id=req.id))

    # --- status ---------------------------------------------------------------

    def status(self) -> DaemonStatus:
        """Return what ``vizier daemon status`` shows."""
        stats = self.pipeline.stats()
        return DaemonStatus(
            pid=os.getpid(),
            started_at=self.started_at.isoformat().replace("+00:00", "Z"),
            uptime_s=round(time.monotonic() - self._clock, 3),
            socket=str(self.socket_path),
            state_dir=str(self.pipeline.state_dir),
            protocol_version=PROTOCOL_VERSION,
            tool_version=__version__,
            connections=len(self._connections),
            running=sorted(self.running.running),
            done=self.running.done,
            subscribers=stats["subscribers"],
            dedup_dropped=stats["dedup_dropped"],
        )


def _kind(req: object) -> str:
    return type(req).__name__.removesuffix("Request").lower()


def _request_id(body: bytes) -> int:
    """Return the ``id`` a message that failed validation carried, else 0."""
    try:
        value = _id_only.decode(body).get("id")
    except msgspec.DecodeError:
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
