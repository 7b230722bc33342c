"""The daemon's life: checks, locks and the socket, then serving until stopped.

:func:`run_daemon` runs ``vizierd`` in this process.  Before it listens it

1. creates the socket's directory (0700) and refuses one that is writable by
   group or others or owned by another user;
2. takes two locks, held for the daemon's life: one next to the socket (one
   daemon per socket) and one in the state directory (one daemon per journal
   and per set of session markers);
3. replaces a stale socket a crashed daemon left behind (a connect probe is
   refused) and never one a live daemon answers on;
4. marks the sessions a crash left ``running`` as ``interrupted``;
5. binds the socket with mode 0600 and writes the pid file.

SIGTERM and SIGINT stop it gracefully: it stops accepting, interrupts the
running sessions, drains the bus (with a deadline), writes every session
log and removes the socket and the pid file.

``python -m vizierd.daemon --detached`` is how a client starts the daemon in
the background: its log then goes to ``<state dir>/daemon.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import logging.handlers
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
from anyio.abc import SocketListener

from vizierd import __version__
from vizierd.errors import (
    AlreadyRunning,
    DaemonUnavailable,
    UnsafeDirectory,
    VizierError,
)
from vizierd.paths import socket_path, state_dir
from vizierd.pipeline import Pipeline
from vizierd.running import Durable, RunningSessions, SessionEnds, recover
from vizierd.server import HELLO_TIMEOUT, MAX_CONNECTIONS, Server, preload

__all__ = [
    "LOG_NAME",
    "PID_NAME",
    "check_socket_dir",
    "main",
    "run_daemon",
]

logger = logging.getLogger(__name__)

LOG_NAME = "daemon.log"
PID_NAME = "vizierd.pid"
LOCK_NAME = "vizierd.lock"
#: The daemon's log is rotated at this size, keeping three old files.
LOG_MAX_BYTES = 5 * 1024 * 1024


# --- checks and files ---------------------------------------------------------


def check_socket_dir(folder: Path) -> None:
    """Create ``folder`` (mode 0700) if needed and check that it is private.

    Raises :class:`UnsafeDirectory` when it is owned by another user or
    writable by group or others, and :class:`DaemonUnavailable` when it
    cannot be created.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        raise DaemonUnavailable(f"cannot create the socket directory: {exc}") from exc
    uid = os.getuid()
    if info.st_uid != uid:
        raise UnsafeDirectory(
            f"the socket directory {folder} belongs to uid {info.st_uid}, not to "
            f"you (uid {uid}); refusing to start: set VIZIER_SOCKET to a path in "
            "a directory of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        raise UnsafeDirectory(
            f"the socket directory {folder} is writable by group or others "
            f"(mode {mode:04o}); refusing to start: chmod 700 it or set "
            "VIZIER_SOCKET to a path in a private directory"
        )


def _lock(path: Path, what: str, hint: str = "") -> int:
    """Take the lock file ``path`` for this process's life; return its fd.

    Raises :class:`AlreadyRunning` naming the holder's pid when another
    process holds it; with a ``hint`` (the lock is not the socket's, so the
    other daemon will not answer this client) a plain
    :class:`DaemonUnavailable` that says what to do instead.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        message = f"another vizierd (pid {holder}) is already running on {what}"
        if hint:
            raise DaemonUnavailable(f"{message}: {hint}") from None
        raise AlreadyRunning(message) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _reclaim(path: Path) -> None:
    """Remove a stale socket at ``path``; never one a live daemon answers on.

    Raises :class:`AlreadyRunning` when something answers, and
    :class:`DaemonUnavailable` when ``path`` is not a socket.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise DaemonUnavailable(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)
        logger.info("removed the stale socket %s left by a daemon that is gone", path)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DaemonUnavailable(f"cannot probe the socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise AlreadyRunning(f"a daemon is already answering on {path}")


def _bind(path: Path) -> socket.socket:
    """Return a socket listening at ``path`` with mode 0600.

    Raises :class:`DaemonUnavailable` when it cannot be bound.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the socket private from the moment it exists; the
    # chmod after is for file systems that ignore it.
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise DaemonUnavailable(f"cannot listen on {path}: {exc}") from exc
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def _daemon_files(sock_path: Path, state: Path) -> Iterator[socket.socket]:
    """Hold the locks, the socket and the pid file; remove them on exit."""
    check_socket_dir(sock_path.parent)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    fds: list[int] = []
    sock: socket.socket | None = None
    bound: int | None = None
    pid_file = state / PID_NAME
    try:
        fds.append(_lock(sock_path.with_name(sock_path.name + ".lock"), str(sock_path)))
        fds.append(
            _lock(
                state / LOCK_NAME,
                f"the state directory {state}",
                "a second daemon needs its own VIZIER_STATE_DIR as well as its "
                "own socket",
            )
        )
        _reclaim(sock_path)
        recover(state / "running")
        sock = _bind(sock_path)
        bound = sock_path.stat().st_ino
        pid_file.write_text(f"{os.getpid()}\n")
        yield sock
    finally:
        if sock is not None:
            sock.close()
            with contextlib.suppress(OSError):
                # Only our own socket: never one a successor bound meanwhile.
                if sock_path.stat().st_ino == bound:
                    sock_path.unlink()
            pid_file.unlink(missing_ok=True)
        for fd in fds:
            os.close(fd)


# --- logging ------------------------------------------------------------------

_SECRETS = re.compile(
    r"(?i)((?:authorization|api[_-]?key)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)"
    r"[^\s\"',}]+"
    r"|\bsk-[A-Za-z0-9_\-]{8,}"
)


class _RedactingFormatter(logging.Formatter):
    """Keeps API keys and authorization headers out of the daemon's log.

    Redacts the whole formatted record, tracebacks included.
    """

    def format(self, record: logging.LogRecord) -> str:
        return _SECRETS.sub(_hide, super().format(record))


def _hide(match: re.Match[str]) -> str:
    prefix = match.group(1)
    return f"{prefix}[redacted]" if prefix else "[redacted]"


def _setup_logging(state: Path, detached: bool) -> None:
    handler: logging.Handler
    if detached:
        handler = logging.handlers.RotatingFileHandler(
            state / LOG_NAME, maxBytes=LOG_MAX_BYTES, backupCount=3
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers = [handler]
    level = os.environ.get("VIZIER_LOG_LEVEL", "INFO").upper()
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    # HTTP client libraries may log request headers at DEBUG.
    for name in ("openai", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- running ------------------------------------------------------------------


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


async def _serve(
    sock: socket.socket, sock_path: Path, state: Path, ready: Callable[[], None]
) -> None:
    pipeline = Pipeline("daemon", state)
    running = RunningSessions(state / "running")
    pipeline.bus.stages.append(running)
    # Subscribers that must lose nothing (the session log, the journal) are
    # wrapped so a reply can wait for them; a session's running marker goes
    # only once the session log has written its end.
    ends = SessionEnds()
    subscribers = pipeline.plugins.subscribers
    for i, subscriber in enumerate(subscribers):
        if getattr(subscriber, "policy", "block") == "block":
            log = subscriber.name == "session-log"
            subscribers[i] = ends.wrap(subscriber, running.release if log else None)
    running.release_on_end = not any(s.name == "session-log" for s in subscribers)

    async with pipeline:
        for sub in pipeline.bus.subscriptions:
            if isinstance(sub.subscriber, Durable):
                sub.subscriber.subscription = sub
        listener = await SocketListener.from_socket(sock)
        server = Server(
            pipeline,
            running,
            ends,
            socket_path=sock_path,
            hello_timeout=_env_float("VIZIER_HELLO_TIMEOUT", HELLO_TIMEOUT),
            max_connections=int(_env_float("VIZIER_MAX_CONNECTIONS", MAX_CONNECTIONS)),
        )
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for signum in sigs:
                        logger.info(
                            "%s received: stopping", signal.Signals(signum).name
                        )
                        server.request_stop()

            tg.start_soon(on_signals)
            logger.info(
                "vizierd %s started: pid %d, socket %s, state %s",
                __version__,
                os.getpid(),
                sock_path,
                state,
            )
            ready()
            tg.start_soon(anyio.to_thread.run_sync, preload)
            await server.serve(listener)
            tg.cancel_scope.cancel()
        logger.info("draining the event bus and writing session logs")
    logger.info("vizierd stopped")


def run_daemon(
    sock_path: Path | None = None,
    *,
    detached: bool = False,
    ready: Callable[[], None] | None = None,
) -> int:
    """Run the daemon in this process until it is stopped; return 0.

    ``ready`` is called once the daemon accepts connections.  Raises
    :class:`UnsafeDirectory`, :class:`AlreadyRunning` or
    :class:`DaemonUnavailable` (each with exit code 3) when it cannot start.
    """
    sock_path = (sock_path or socket_path()).absolute()
    state = state_dir().absolute()
    os.umask(0o077)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    _setup_logging(state, detached)
    with _daemon_files(sock_path, state) as sock:
        anyio.run(_serve, sock, sock_path, state, ready or (lambda: None))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m vizierd.daemon``; return the exit code.

    With ``--detached`` the daemon logs to ``<state dir>/daemon.log``; a
    start-up error is one line on stderr (the starting client shows it),
    and finding another daemon already running is success.
    """
    parser = argparse.ArgumentParser(prog="vizierd")
    parser.add_argument("--socket", metavar="PATH", help="the socket to listen on")
    parser.add_argument("--detached", action="store_true", help="log to daemon.log")
    args = parser.parse_args(argv)
    path = Path(args.socket) if args.socket else None

    def ready() -> None:
        # The starting client reads stderr until it closes: from here on
        # nothing is written there.
        if args.detached:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)

    try:
        return run_daemon(path, detached=args.detached, ready=ready)
    except AlreadyRunning as exc:
        logger.info("not starting: %s", exc)
        if args.detached:
            return 0
        sys.stderr.write(f"vizierd: {exc}\n")
        return exc.exit_code
    except VizierError as exc:
        if args.detached:
            logger.error("cannot start: %s", exc)
        sys.stderr.write(f"vizierd: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the module under its own name, so its loggers are named properly.
    from vizierd.daemon import main as _main

    sys.exit(_main())
