"""The thin client: a ``vizier`` command talking to the daemon over its socket.

It connects (starting the daemon when none answers), says hello, sends one
request and renders what comes back: each pushed event through the same
:class:`~vizierd.render.Renderer` the in-process stderr printer uses, so the
output is the same bytes either way, then the reply.  Ctrl-C asks the daemon
to cancel the request, and the session ends ``interrupted``.

Only the standard library, msgspec and vizier's protocol-side modules are
imported here, so a command starts about as fast as Python itself.  Sockets
are plain blocking ones; nothing here is async.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from vizierd import __version__
from vizierd.errors import DaemonUnavailable, ProtocolError, UsageError
from vizierd.events import OutcomeDoc, decode_event
from vizierd.paths import socket_path
from vizierd.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    AskRequest,
    CancelRequest,
    DaemonMessage,
    Failure,
    Hello,
    IngestRequest,
    Pushed,
    Reply,
    WatchRequest,
    Welcome,
    decode_daemon,
    frame,
    peer_uid,
    read_length,
)
from vizierd.render import Renderer

__all__ = [
    "Connection",
    "NotAnswering",
    "connect",
    "connect_once",
    "daemon_command",
    "exit_code",
    "run_remote",
    "start_and_wait",
]

#: Seconds to wait for a daemon that is starting.
START_WAIT = 10.0
#: Seconds to wait for a stopping daemon to remove its socket.
STOP_WAIT = 20.0
#: Seconds to wait for the daemon's answer to a hello or a status request.
ANSWER_WAIT = 10.0
#: Seconds to wait, after Ctrl-C, for the interrupted session's last events.
CANCEL_WAIT = 5.0


class NotAnswering(Exception):
    """Nothing (yet) answers on the socket: refused, missing, or cut.

    Raised by :func:`connect_once`; :func:`connect` turns it into a start.
    """


class _Interrupts:
    """Turns Ctrl-C into a flag checked where no data can be half-read.

    The default handler raises ``KeyboardInterrupt`` wherever the program
    happens to be, which may be between receiving bytes and keeping them.
    Here the handler only counts, and a wakeup socket makes a waiting
    ``select`` return at once, where the count is checked.
    """

    def __init__(self) -> None:
        self.count = 0
        self.wakeup: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._old_handler: Any = None
        self._old_fd = -1

    def __enter__(self) -> _Interrupts:
        wakeup, writer = socket.socketpair()
        wakeup.setblocking(False)
        writer.setblocking(False)
        try:
            self._old_fd = signal.set_wakeup_fd(
                writer.fileno(), warn_on_full_buffer=False
            )
        except ValueError:
            # Not the main thread: Ctrl-C stays a plain KeyboardInterrupt.
            wakeup.close()
            writer.close()
            return self
        self.wakeup, self._writer = wakeup, writer
        self._old_handler = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.wakeup is None or self._writer is None:
            return
        signal.signal(signal.SIGINT, self._old_handler)
        signal.set_wakeup_fd(self._old_fd)
        self.wakeup.close()
        self._writer.close()

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` once for each Ctrl-C not yet seen."""
        if self.wakeup is not None:
            try:
                while self.wakeup.recv(64):
                    pass
            except BlockingIOError:
                pass
        if self.count:
            self.count -= 1
            raise KeyboardInterrupt


class Connection:
    """One connection to the daemon, after a successful hello."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path
        self.welcome: Welcome | None = None
        self.interrupts: _Interrupts | None = None
        self._buffer = bytearray()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def send(self, message: object) -> None:
        """Send one message.

        Raises :class:`UsageError` for a message over the frame limit and
        :class:`DaemonUnavailable` when the daemon has gone.
        """
        data = frame(message)
        if len(data) - 4 > MAX_FRAME:
            raise UsageError(
                f"the request is too large to send to the daemon "
                f"({(len(data) - 4) / 2**20:.1f} MiB; the limit is "
                f"{MAX_FRAME // 2**20} MiB): name a file instead of piping "
                "stdin, or use --no-daemon"
            )
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise DaemonUnavailable(
                f"lost the connection to the daemon at {self.path}: {exc.strerror}"
            ) from exc

    def receive(self, deadline: float | None = None) -> DaemonMessage:
        """Return the next message from the daemon.

        Raises :class:`DaemonUnavailable` when the connection closes or the
        ``deadline`` (a ``time.monotonic()`` value) passes,
        :class:`ProtocolError` for a frame that does not decode, and
        ``KeyboardInterrupt`` for a Ctrl-C, only between whole frames'
        worth of reads.
        """
        header = self._take(4, deadline)
        length = read_length(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"the daemon sent a frame of {length:,} bytes")
        body = self._take(length, deadline)
        try:
            return decode_daemon(body)
        except ValueError as exc:  # msgspec's DecodeError and ValidationError
            raise ProtocolError(f"the daemon sent a bad message: {exc}") from exc

    def _take(self, size: int, deadline: float | None) -> bytes:
        buffer = self._buffer
        while len(buffer) < size:
            self._wait(deadline)
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError as exc:
                raise DaemonUnavailable(
                    f"lost the connection to the daemon: {exc.strerror}"
                ) from exc
            if not chunk:
                raise DaemonUnavailable("the daemon closed the connection")
            buffer += chunk
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def _wait(self, deadline: float | None) -> None:
        interrupts = self.interrupts
        waiting: list[socket.socket] = [self.sock]
        if interrupts is not None and interrupts.wakeup is not None:
            waiting.append(interrupts.wakeup)
        while True:
            if interrupts is not None:
                interrupts.check()
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise DaemonUnavailable(
                    f"the daemon at {self.path} did not answer in time"
                )
            readable, _, _ = select.select(waiting, [], [], timeout)
            if self.sock in readable:
                if interrupts is not None:
                    interrupts.check()
                return


# --- connecting and starting ----------------------------------------------------


def connect_once(path: Path) -> Connection:
    """Connect to a daemon and say hello; return the connection.

    Raises :class:`NotAnswering` when nothing answers, and
    :class:`DaemonUnavailable` (or its kin) for a daemon that refuses.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(ANSWER_WAIT)
        sock.connect(str(path))
        sock.settimeout(None)
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as exc:
        sock.close()
        raise NotAnswering(str(exc)) from exc
    except OSError as exc:
        sock.close()
        raise DaemonUnavailable(
            f"cannot connect to the daemon at {path}: {exc.strerror or exc}"
        ) from exc

    conn = Connection(sock, path)
    try:
        uid = peer_uid(sock)
        if uid is not None and uid != os.getuid():
            raise DaemonUnavailable(
                f"the daemon at {path} runs as uid {uid}, not as you "
                f"(uid {os.getuid()}); refusing to talk to it"
            )
        conn.send(Hello(version=PROTOCOL_VERSION, pid=os.getpid()))
        try:
            answer = conn.receive(time.monotonic() + ANSWER_WAIT)
        except DaemonUnavailable as exc:
            raise NotAnswering(str(exc)) from exc
        if isinstance(answer, Failure):
            raise DaemonUnavailable(answer.message)
        if not isinstance(answer, Welcome):
            raise ProtocolError("the daemon did not answer the hello")
        conn.welcome = answer
        _warn_if_other_install(answer)
        return conn
    except BaseException:
        conn.close()
        raise


def _warn_if_other_install(welcome: Welcome) -> None:
    """Say so when the daemon runs code from another installation than ours.

    It goes on working (it loaded everything it needs at start), but it is
    not the version this command belongs to until it is restarted.
    """
    ours = str(Path(__file__).resolve().parent)
    theirs = welcome.package_path
    if (theirs and theirs != ours) or welcome.tool_version != __version__:
        sys.stderr.write(
            f"vizier: warning: the running daemon (pid {welcome.daemon_pid}) is "
            f"vizier {welcome.tool_version} from {theirs or 'elsewhere'}; this "
            f"command is vizier {__version__} from {ours}: run "
            "`vizier daemon restart` to use this one\n"
        )


def _autostart_disabled() -> bool:
    value = os.environ.get("VIZIER_NO_AUTOSTART", "").strip().lower()
    return value not in ("", "0", "false", "no")


def connect(path: Path, *, autostart: bool = True) -> Connection:
    """Return a connection to the daemon at ``path``, starting one if needed.

    Raises :class:`DaemonUnavailable` when none answers and none could be
    started (or ``VIZIER_NO_AUTOSTART`` is set).
    """
    try:
        return connect_once(path)
    except NotAnswering:
        pass
    if not autostart:
        raise DaemonUnavailable(f"the daemon is not running (socket {path})")
    if _autostart_disabled():
        raise DaemonUnavailable(
            f"cannot reach the daemon at {path} (VIZIER_NO_AUTOSTART is set)"
        )
    return start_and_wait(path)


def start_and_wait(path: Path) -> Connection:
    """Start a detached daemon and wait, with backoff, until it answers.

    Raises :class:`DaemonUnavailable` when it fails to start or does not
    answer within :data:`START_WAIT` seconds.
    """
    import subprocess

    env = dict(os.environ)
    # The daemon gets API keys with each request, never from its environment.
    env.pop("OPENAI_API_KEY", None)
    for name in ("VIZIER_STATE_DIR", "VIZIER_CONFIG_DIR"):
        if env.get(name):
            env[name] = os.path.abspath(env[name])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vizierd.daemon",
            "--detached",
            "--socket",
            os.path.abspath(path),
        ],
        cwd="/",
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    try:
        return _wait_for(path, proc, proc.stderr)
    finally:
        proc.stderr.close()


def _wait_for(path: Path, proc: Any, errors: IO[bytes]) -> Connection:
    deadline = time.monotonic() + START_WAIT
    delay = 0.01
    while True:
        try:
            return connect_once(path)
        except NotAnswering:
            pass
        code = proc.poll()
        if code:
            # The daemon wrote why on stderr before exiting.
            lines = errors.read().decode(errors="replace").strip().splitlines()
            reason = lines[-1].removeprefix("vizierd: ") if lines else f"exit {code}"
            raise DaemonUnavailable(f"the daemon could not start: {reason}")
        now = time.monotonic()
        if now >= deadline:
            raise DaemonUnavailable(
                f"started the daemon, but nothing answered at {path} within "
                f"{START_WAIT:g} s; see daemon.log in its state directory"
            )
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.25)


# --- running a request ------------------------------------------------------------


def exit_code(outcomes: list[OutcomeDoc]) -> int:
    """Return the exit code of a command that ran these sessions.

    130 when any was interrupted, else the highest of their codes (0 for
    none), as ``--no-daemon`` does.
    """
    codes = [o.exit_code for o in outcomes]
    if 130 in codes or any(o.status == "interrupted" for o in outcomes):
        return 130
    return max(codes, default=0)


def run_remote(
    request: Any, renderer: Renderer, args: argparse.Namespace, socket_path: Path
) -> int:
    """Run ``request`` in the daemon, rendering what it sends; return the exit code.

    Raises :class:`DaemonUnavailable` when the daemon cannot be reached or
    started, or goes away mid-request.
    """
    with connect(socket_path) as conn, _Interrupts() as interrupts:
        conn.interrupts = interrupts
        if isinstance(request, WatchRequest):
            return _watch(conn, request, renderer)
        conn.send(request)
        return _follow(conn, request, renderer)


def _follow(conn: Connection, request: Any, renderer: Renderer) -> int:
    """Render pushed events until the reply; Ctrl-C cancels the request."""
    deadline: float | None = None
    while True:
        try:
            message = conn.receive(deadline)
        except KeyboardInterrupt:
            if deadline is not None:
                return 130
            try:
                conn.send(CancelRequest(id=request.id + 1, target=request.id))
            except DaemonUnavailable:
                return 130
            deadline = time.monotonic() + CANCEL_WAIT
            continue
        except DaemonUnavailable:
            if deadline is not None:
                return 130
            raise

        if isinstance(message, Welcome) or message.id not in (request.id, 0):
            continue
        if isinstance(message, Pushed):
            renderer.feed(decode_event(message.event))
        elif isinstance(message, Reply):
            if deadline is not None:
                return 130
            if isinstance(request, IngestRequest | AskRequest):
                return exit_code(message.outcomes)
            from vizierd.tables import print_result

            print_result(request, message.result, renderer)
            return 0
        elif isinstance(message, Failure):
            renderer.error(message.message)
            return 130 if deadline is not None else message.exit_code


def _watch(conn: Connection, request: WatchRequest, renderer: Renderer) -> int:
    """Render every pushed event until Ctrl-C (exit 130) or the daemon stops (3).

    With ``--json`` each event is printed as the JSON line it arrived as.
    Otherwise the rendered lines are the command's result, so they all go
    to stdout, the progress lines too.
    """
    conn.send(request)
    out = renderer.stdout
    as_json = renderer.json
    renderer = Renderer(out, out, verbosity=max(renderer.verbosity, 0))
    while True:
        try:
            message = conn.receive()
        except KeyboardInterrupt:
            return 130
        if isinstance(message, Pushed):
            if as_json:
                out.write(bytes(message.event).decode() + "\n")
                out.flush()
            else:
                renderer.feed(decode_event(message.event))
                renderer.outcomes.clear()
        elif isinstance(message, Failure):
            renderer.error(message.message)
            return message.exit_code
        elif isinstance(message, Reply):
            # A watch ends only when the daemon stops.
            renderer.error("the daemon stopped")
            return 3


# --- vizier daemon ... ------------------------------------------------------------


def daemon_command(args: argparse.Namespace, renderer: Renderer) -> int:
    """Run ``vizier daemon start|stop|status|restart``; return the exit code.

    ``start --foreground`` runs the daemon in this process.  Raises
    :class:`VizierError` (exit code 3) when the daemon cannot be started,
    reached or stopped.
    """
    from vizierd import control

    return control.run(args, renderer, socket_path())
