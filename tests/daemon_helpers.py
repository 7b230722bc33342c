"""Helpers for the daemon tests: a real daemon in a subprocess, raw socket talk,
and small Codex rollout files written on the spot.

Every wait polls with a deadline; nothing sleeps a fixed time to wait for
something to happen.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import VIZIER, Env
from vizierd.protocol import (
    PROTOCOL_VERSION,
    DaemonMessage,
    Hello,
    Reply,
    StatusRequest,
    Welcome,
    decode_daemon,
    frame,
    read_length,
)

T = TypeVar("T")

#: ``vizier daemon start --foreground``, as a test runs it.
VIZIERD = [*VIZIER, "daemon", "start", "--foreground"]


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# --- raw protocol ---------------------------------------------------------------


def raw_connect(path: Path, timeout: float = 10.0) -> socket.socket:
    """Return a socket connected to ``path`` (no hello sent)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def send(sock: socket.socket, message: object) -> None:
    sock.sendall(frame(message))


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def receive(sock: socket.socket) -> DaemonMessage | None:
    """Return the next message, or None once the daemon closed the connection."""
    header = _exactly(sock, 4)
    if header is None:
        return None
    body = _exactly(sock, read_length(header))
    if body is None:
        return None
    return decode_daemon(body)


def receive_all(sock: socket.socket) -> list[DaemonMessage]:
    """Return every message until the daemon closes the connection."""
    messages = []
    while (message := receive(sock)) is not None:
        messages.append(message)
    return messages


def hello(sock: socket.socket) -> Welcome:
    send(sock, Hello(version=PROTOCOL_VERSION, pid=os.getpid()))
    answer = receive(sock)
    assert isinstance(answer, Welcome), answer
    return answer


def status(path: Path) -> dict[str, Any]:
    """Ask the daemon at ``path`` for its status over a fresh connection."""
    with raw_connect(path) as sock:
        hello(sock)
        send(sock, StatusRequest(id=7))
        answer = receive(sock)
    assert isinstance(answer, Reply) and answer.id == 7, answer
    result: dict[str, Any] = answer.result
    return result


def answers(path: Path) -> bool:
    """Return whether a daemon at ``path`` completes a hello."""
    try:
        with raw_connect(path, timeout=2) as sock:
            send(sock, Hello(version=PROTOCOL_VERSION))
            return isinstance(receive(sock), Welcome)
    except OSError:
        return False


# --- a daemon -------------------------------------------------------------------


@dataclass
class Daemon:
    """A socket in a short private directory, and the daemons run on it."""

    env: Env
    socket_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @classmethod
    def make(cls, env: Env) -> Daemon:
        # Unix socket paths are limited to about 107 bytes.
        return cls(env, Path(tempfile.mkdtemp(prefix="vz", dir="/tmp")))

    @property
    def socket(self) -> Path:
        return self.socket_dir / "d.sock"

    @property
    def pid_file(self) -> Path:
        return self.env.state / "vizierd.pid"

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a daemon or client of this test (no autostart)."""
        return {
            **os.environ,
            **self.env.environ(),
            "VIZIER_SOCKET": str(self.socket),
            "VIZIER_NO_AUTOSTART": "1",
            **(extra or {}),
        }

    def spawn(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``vizier daemon start --foreground``; do not wait for it."""
        log = self.env.root / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                VIZIERD,
                cwd=self.env.root,
                env=self.environ(extra_env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def start(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a daemon and wait until it answers."""
        proc = self.spawn(extra_env)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with {proc.returncode}: {self.log()}"
                )
            return answers(self.socket)

        wait_for(ready, "the daemon to answer")
        return proc

    def log(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real ``vizier`` command against this daemon."""
        return subprocess.run(
            [*VIZIER, *args],
            cwd=cwd or self.env.project,
            env=self.environ(extra_env),
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def popen(
        self, *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``vizier`` against this daemon; stdout and stderr are pipes."""
        proc = subprocess.Popen(
            [*VIZIER, *args],
            cwd=self.env.project,
            env=self.environ(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        """Stop every process this test started, and any daemon it autostarted."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        ours = {proc.pid for proc in self.procs}
        for pid_file in (self.pid_file, self.socket_dir / "d.sock.lock"):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid not in ours:
                stop_pid(pid)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid`` (not a child of ours), wait for it to go, then SIGKILL it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # an exited process nobody reaped yet
            return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True

    try:
        wait_for(gone, f"pid {pid} to exit", timeout)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)


# --- Codex rollouts -------------------------------------------------------------

#: One model call: (input, cached input, output, reasoning output).
Call = tuple[int, int, int, int]


def _usage(call: Sequence[int]) -> dict[str, int]:
    inp, cached, out, reasoning = call
    return {
        "input_tokens": inp,
        "cached_input_tokens": cached,
        "output_tokens": out,
        "reasoning_output_tokens": reasoning,
        "total_tokens": inp + out,
    }


def _rate_limits(used: float) -> dict[str, Any]:
    return {
        "limit_id": "codex",
        "primary": {"used_percent": used, "window_minutes": 300, "resets_at": 1},
        "secondary": {"used_percent": 1.0, "window_minutes": 10080, "resets_at": 2},
    }


def _line(kind: str, payload: dict[str, Any], n: int) -> str:
    stamp = f"2026-02-23T11:{n // 60 % 60:02d}:{n % 60:02d}.000Z"
    return json.dumps({"timestamp": stamp, "type": kind, "payload": payload})


def rollout_head(thread_id: str, model: str = "gpt-5-codex") -> list[str]:
    """Return the first lines of a rollout: session_meta, turn_context, a prompt."""
    return [
        _line(
            "session_meta",
            {
                "id": thread_id,
                "timestamp": "2026-02-23T11:00:00.000Z",
                "cwd": "/work/project",
                "originator": "codex_cli_rs",
                "cli_version": "0.104.0",
                "source": "cli",
                "model_provider": "openai",
            },
            0,
        ),
        _line(
            "turn_context",
            {"cwd": "/work/project", "model": model, "approval_policy": "never"},
            1,
        ),
        _line(
            "response_item",
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "fix the build"}],
            },
            2,
        ),
        _line(
            "event_msg", {"type": "token_count", "info": None, "rate_limits": None}, 3
        ),
    ]


def rollout_calls(calls: Sequence[Call], start: Call = (0, 0, 0, 0)) -> list[str]:
    """Return the token_count lines of ``calls``, each followed by a re-emit.

    ``start`` is the running total before the first of them.
    """
    lines = []
    total = list(start)
    for n, call in enumerate(calls):
        total = [a + b for a, b in zip(total, call, strict=True)]
        info = {
            "total_token_usage": _usage(total),
            "last_token_usage": _usage(call),
            "model_context_window": 258400,
        }
        for used in (2.0, 3.0):  # the re-emit differs only in its rate limits
            payload = {"type": "token_count", "info": info}
            payload["rate_limits"] = _rate_limits(used)
            lines.append(_line("event_msg", payload, 10 + n))
        lines.append(
            _line(
                "response_item",
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": f"step {n} done"}],
                },
                10 + n,
            )
        )
    return lines


def write_rollout(path: Path, thread_id: str, calls: Sequence[Call]) -> Path:
    """Write a complete small rollout file; return its path."""
    lines = rollout_head(thread_id) + rollout_calls(calls)
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_usage(calls: Sequence[Call]) -> dict[str, int]:
    """Return the totals a rollout of ``calls`` must come out with."""
    return {
        "prompt_total": sum(c[0] for c in calls),
        "cached_input_total": sum(c[1] for c in calls),
        "completion_total": sum(c[2] for c in calls),
        "reasoning_output_total": sum(c[3] for c in calls),
        "total": sum(c[0] + c[2] for c in calls),
        "calls": len(calls),
    }


def run_python(code: str, *, user: int | None = None, timeout: float = 30) -> Any:
    """Run ``code`` in a fresh interpreter (as ``user`` via setpriv)."""
    command = [sys.executable, "-c", code]
    if user is not None:
        command = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--clear-groups",
            *command,
        ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


class Output:
    """A subprocess's pipe, read without blocking, with deadlines."""

    def __init__(self, pipe: Any) -> None:
        self.fd: int = pipe.fileno()
        os.set_blocking(self.fd, False)
        self.data = b""
        self.eof = False

    def _read(self, deadline: float) -> None:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise AssertionError(f"timed out; output so far: {self.data!r}")
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if readable:
            chunk = os.read(self.fd, 1 << 16)
            self.data += chunk
            self.eof = not chunk

    def until(self, needle: bytes, count: int = 1, timeout: float = 15) -> bytes:
        """Read until ``needle`` was seen ``count`` times; return all read."""
        deadline = time.monotonic() + timeout
        while self.data.count(needle) < count:
            if self.eof:
                raise AssertionError(f"output ended before {needle!r}: {self.data!r}")
            self._read(deadline)
        return self.data

    def rest(self, timeout: float = 15) -> bytes:
        """Read to the end; return all read."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._read(deadline)
        return self.data
