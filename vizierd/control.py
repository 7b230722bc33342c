"""``vizier daemon start|stop|status|restart``: the daemon's life, from a client.

Like the rest of the client side, this imports only the standard library,
msgspec and vizier's protocol-side modules; the daemon itself is imported
only by ``start --foreground``, which runs it in this process.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import msgspec

from vizierd.client import (
    ANSWER_WAIT,
    STOP_WAIT,
    NotAnswering,
    connect_once,
    start_and_wait,
)
from vizierd.errors import DaemonUnavailable, ProtocolError, UsageError
from vizierd.protocol import DaemonStatus, Failure, Reply, StatusRequest, StopRequest
from vizierd.render import Renderer

__all__ = ["format_status", "run"]


def run(args: argparse.Namespace, renderer: Renderer, path: Path) -> int:
    """Run one ``vizier daemon`` command against the socket ``path``.

    Returns the exit code: 0, or 3 from ``status`` when no daemon runs.
    Raises :class:`VizierError` (exit code 3) when the daemon cannot be
    started, reached or stopped.
    """
    command = args.daemon_command
    if command == "start":
        if getattr(args, "foreground", False):
            from vizierd.daemon import run_daemon

            return run_daemon(path)
        return _start(path, renderer)
    if command == "stop":
        return _stop(path, renderer)
    if command == "restart":
        _stop(path, renderer)
        return _start(path, renderer)
    if command == "status":
        return _status(path, renderer)
    raise UsageError(f"unknown daemon command {command}")


def _say(renderer: Renderer, line: str) -> None:
    renderer.stdout.write(line + "\n")
    renderer.stdout.flush()


def _start(path: Path, renderer: Renderer) -> int:
    try:
        conn = connect_once(path)
        verb = "is already running"
    except NotAnswering:
        conn = start_and_wait(path)
        verb = "started"
    with conn:
        pid = conn.welcome.daemon_pid if conn.welcome else "?"
    _say(renderer, f"vizierd {verb} (pid {pid}, socket {path})")
    return 0


def _stop(path: Path, renderer: Renderer) -> int:
    try:
        conn = connect_once(path)
    except NotAnswering:
        _say(renderer, f"vizierd is not running (socket {path})")
        return 0
    with conn:
        pid = conn.welcome.daemon_pid if conn.welcome else "?"
        conn.send(StopRequest(id=1))
        try:
            conn.receive(time.monotonic() + ANSWER_WAIT)
        except DaemonUnavailable:
            pass  # it may close before its reply reaches us
    deadline = time.monotonic() + STOP_WAIT
    delay = 0.01
    while os.path.lexists(path):
        now = time.monotonic()
        if now >= deadline:
            raise DaemonUnavailable(
                f"the daemon (pid {pid}) did not stop within {STOP_WAIT:g} s"
            )
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.25)
    _say(renderer, f"vizierd stopped (pid {pid})")
    return 0


def _status(path: Path, renderer: Renderer) -> int:
    try:
        conn = connect_once(path)
    except NotAnswering:
        raise DaemonUnavailable(f"vizierd is not running (socket {path})") from None
    with conn:
        conn.send(StatusRequest(id=1))
        while True:
            message = conn.receive(time.monotonic() + ANSWER_WAIT)
            if isinstance(message, Failure):
                raise DaemonUnavailable(message.message)
            if isinstance(message, Reply) and message.id == 1:
                break
    if renderer.json:
        renderer.stdout.write(msgspec.json.encode(message.result).decode() + "\n")
        renderer.stdout.flush()
        return 0
    try:
        status = msgspec.convert(message.result, DaemonStatus)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"the daemon sent a bad status: {exc}") from exc
    _say(renderer, format_status(status))
    return 0


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f}s"


def format_status(status: DaemonStatus) -> str:
    """Return ``vizier daemon status`` as text a person reads."""
    from vizierd.tables import format_table

    lines = [
        f"vizierd {status.tool_version} is running",
        f"  pid          {status.pid}",
        f"  uptime       {_duration(status.uptime_s)} (since {status.started_at})",
        f"  socket       {status.socket}",
        f"  state dir    {status.state_dir}",
        f"  protocol     version {status.protocol_version}",
        f"  connections  {status.connections}",
        f"  sessions     {len(status.running)} running, {status.done:,} done",
    ]
    for sid in status.running[:20]:
        lines.append(f"    running: {sid}")
    if len(status.running) > 20:
        lines.append(f"    … and {len(status.running) - 20} more")
    rows = [
        [
            s.get("name"),
            s.get("state"),
            s.get("policy"),
            s.get("queued"),
            s.get("handled"),
            s.get("failures"),
            s.get("dropped"),
        ]
        for s in status.subscribers
    ]
    headers = ["subscriber", "state", "policy", "queued", "handled", "failures"]
    lines.append("")
    lines.append(format_table([*headers, "dropped"], rows))
    dropped = status.dedup_dropped
    lines.append(
        "dedup drops: "
        + (", ".join(f"{k}={v:,}" for k, v in sorted(dropped.items())) or "none")
    )
    return "\n".join(lines)
