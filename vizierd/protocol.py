"""The wire protocol between ``vizier`` commands and the daemon.

A frame is a 4-byte big-endian length followed by one msgspec-JSON message.
Every message is a Struct in one tagged union (tag field ``type``).  A
connection opens with :class:`Hello` / :class:`Welcome`; after that the
client sends requests carrying an ``id``, and the daemon answers with
:class:`Pushed` events (for the sessions the request runs or watches), then
one :class:`Reply` or :class:`Failure` carrying the same ``id``.

This module imports only the standard library, msgspec and the event types,
because the thin client imports it on every command.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any, Literal

import msgspec

from vizierd.events import OutcomeDoc

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "AskRequest",
    "CancelRequest",
    "ClientMessage",
    "DaemonMessage",
    "DaemonStatus",
    "Failure",
    "Hello",
    "IngestRequest",
    "PluginsRequest",
    "Pushed",
    "Reply",
    "SessionsRequest",
    "StatusRequest",
    "StopRequest",
    "UsageRequest",
    "WatchRequest",
    "Welcome",
    "decode_client",
    "decode_daemon",
    "frame",
    "peer_uid",
    "read_length",
]

PROTOCOL_VERSION = 1
#: Frames larger than this are refused before anything is read of them.
MAX_FRAME = 16 * 1024 * 1024

_HEADER = struct.Struct(">I")


class Hello(msgspec.Struct, tag="hello", kw_only=True):
    """The first frame a client sends."""

    version: int
    client: str = "vizier"
    pid: int | None = None


class Welcome(msgspec.Struct, tag="welcome", kw_only=True):
    """The daemon's answer to a matching :class:`Hello`."""

    version: int
    daemon_pid: int
    tool_version: str
    #: Where the daemon's code was loaded from, so a client can tell a
    #: daemon left running by another installation.
    package_path: str = ""


class AskRequest(msgspec.Struct, tag="ask", kw_only=True):
    """Run ``vizier ask``.

    The client resolves configuration in its own environment and sends it,
    so a daemon started from another shell never answers with stale
    settings.  ``api_key`` is held in memory only and never written.
    """

    id: int
    cwd: str
    prompt: str
    model: str
    api_key: str | None = None
    base_url: str | None = None
    system: str | None = None
    session: str | None = None
    api: Literal["chat", "responses"] = "chat"
    stream: bool = True
    timeout: float | None = None
    max_retries: int | None = None
    client_pid: int | None = None

    def __repr__(self) -> str:
        # Keep the key out of every log line and traceback that shows us.
        return f"AskRequest(id={self.id}, model={self.model!r}, api={self.api!r})"


class IngestRequest(msgspec.Struct, tag="ingest", kw_only=True):
    """Ingest inputs, one session each.

    ``paths`` are absolute file paths; ``data`` carries stdin's bytes;
    ``codex_home`` asks for a backfill of every rollout under it.
    """

    id: int
    cwd: str
    format: str = "auto"
    paths: list[str] = msgspec.field(default_factory=list)
    data: bytes | None = None
    codex_home: str | None = None
    follow: bool = False
    client_pid: int | None = None


class StatusRequest(msgspec.Struct, tag="status", kw_only=True):
    """``vizier daemon status``; the reply's ``result`` is a :class:`DaemonStatus`."""

    id: int


class StopRequest(msgspec.Struct, tag="stop", kw_only=True):
    """Stop the daemon gracefully; it replies first, then shuts down."""

    id: int


class PluginsRequest(msgspec.Struct, tag="plugins", kw_only=True):
    id: int


class UsageRequest(msgspec.Struct, tag="usage", kw_only=True):
    id: int
    by: str = "day"
    since: str | None = None
    until: str | None = None
    utc: bool = False
    tz_offset_s: int | None = None
    #: The client's time zone by name (``Europe/Berlin``), when it knows it.
    tz_name: str | None = None


class SessionsRequest(msgspec.Struct, tag="sessions", kw_only=True):
    """``sessions list`` (``show`` unset) or ``sessions show ID``."""

    id: int
    show: str | None = None


class WatchRequest(msgspec.Struct, tag="watch", kw_only=True):
    id: int
    session: str | None = None


class CancelRequest(msgspec.Struct, tag="cancel", kw_only=True):
    """Cancel the running request ``target`` (the client was interrupted)."""

    id: int
    target: int


class Pushed(msgspec.Struct, tag="event", kw_only=True):
    """An event of a session the request ``id`` runs or watches.

    ``event`` is the event's own JSON, passed through undecoded.
    """

    id: int
    event: msgspec.Raw


class Reply(msgspec.Struct, tag="reply", kw_only=True):
    """The final answer to request ``id``."""

    id: int
    result: Any = None
    outcomes: list[OutcomeDoc] = msgspec.field(default_factory=list)


class Failure(msgspec.Struct, tag="failure", kw_only=True):
    """Request ``id`` failed (``id`` 0: the connection itself did)."""

    id: int
    kind: str
    message: str
    exit_code: int = 1


class DaemonStatus(msgspec.Struct, kw_only=True):
    """What ``vizier daemon status`` shows.

    ``running`` lists the sessions running now; ``done`` counts the sessions
    that ended since the daemon started.  ``subscribers`` holds each
    subscription's counters (name, state, policy, queued, handled, failures,
    dropped, last_error), client streams and watchers included.
    """

    pid: int
    started_at: str
    uptime_s: float
    socket: str
    state_dir: str
    protocol_version: int
    tool_version: str
    connections: int
    running: list[str] = msgspec.field(default_factory=list)
    done: int = 0
    subscribers: list[dict[str, Any]] = msgspec.field(default_factory=list)
    dedup_dropped: dict[str, int] = msgspec.field(default_factory=dict)


ClientMessage = (
    Hello
    | AskRequest
    | IngestRequest
    | StatusRequest
    | StopRequest
    | PluginsRequest
    | UsageRequest
    | SessionsRequest
    | WatchRequest
    | CancelRequest
)
DaemonMessage = Welcome | Pushed | Reply | Failure

_encoder = msgspec.json.Encoder()
_client_decoder = msgspec.json.Decoder(ClientMessage)
_daemon_decoder = msgspec.json.Decoder(DaemonMessage)


def frame(message: object) -> bytes:
    """Return ``message`` encoded as one length-prefixed frame."""
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def read_length(header: bytes) -> int:
    """Return the body length a 4-byte frame header announces."""
    (length,) = _HEADER.unpack(header)
    return int(length)


def decode_client(body: bytes) -> ClientMessage:
    """Decode a frame body sent by a client.

    Raises :class:`msgspec.DecodeError` (bad JSON) or
    :class:`msgspec.ValidationError` (unknown type, bad field).
    """
    return _client_decoder.decode(body)


def decode_daemon(body: bytes) -> DaemonMessage:
    """Decode a frame body sent by the daemon; raises like :func:`decode_client`."""
    return _daemon_decoder.decode(body)


def peer_uid(sock: socket.socket) -> int | None:
    """Return the uid of the process at the other end of a Unix socket.

    Both ends check it: the daemon serves only its own user, and a client
    talks only to a daemon of its own user.  Uses ``SO_PEERCRED`` on Linux
    and ``LOCAL_PEERCRED`` on macOS and the BSDs; returns ``None`` where
    neither exists.  Raises :class:`OSError` when the socket cannot be asked.
    """
    if hasattr(socket, "SO_PEERCRED"):
        creds = sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        # struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; ... }
        sol_local, local_peercred = 0, 1
        creds = sock.getsockopt(sol_local, local_peercred, 76)
        _version, uid = struct.unpack_from("Ii", creds)
        return int(uid)
    return None
