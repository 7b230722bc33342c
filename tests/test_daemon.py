"""The daemon and its thin client, end to end: a real ``vizierd`` in a
subprocess, the real ``vizier`` command, real sockets and files.

Covered: the same output with and without the daemon; concurrent clients
with exact totals; kill -9 and recovery; hostile frames; one daemon per
socket; stale sockets; unsafe directories; the hello deadline; other users;
SIGTERM; Ctrl-C; watch; autostart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import (
    VIZIERD,
    Daemon,
    Output,
    answers,
    expected_usage,
    hello,
    raw_connect,
    receive,
    receive_all,
    rollout_calls,
    rollout_head,
    run_python,
    send,
    status,
    wait_for,
    write_rollout,
)
from tests.helpers import Env
from vizierd.connection import peer_refusal
from vizierd.events import (
    Outcome,
    Progress,
    SessionEnded,
    SessionStarted,
    decode_event,
)
from vizierd.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    CancelRequest,
    Failure,
    Hello,
    IngestRequest,
    Pushed,
    Reply,
    StatusRequest,
    WatchRequest,
    Welcome,
    peer_uid,
)

CALLS = [(1000, 800, 50, 10), (1200, 1000, 70, 0), (1500, 1100, 20, 5)]
THREAD = "019c0000-0000-7000-8000-00000000000{}"


def session_doc(project: Path, session_id: str) -> dict[str, Any] | None:
    path = project / ".vizier" / "sessions" / session_id / "session.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return doc


def usage_of(doc: dict[str, Any]) -> dict[str, int]:
    return {key: doc[key] for key in expected_usage(CALLS)}


# --- the same output either way -----------------------------------------------


def _normalized(stdout: bytes) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in stdout.splitlines()]
    for doc in docs:
        doc["started_at"] = doc["elapsed_ms"] = doc["session"]["path"] = None
    return docs


@pytest.mark.parametrize(
    "flags", [[], ["-v"], ["-q"], ["--json"]], ids=["plain", "-v", "-q", "--json"]
)
def test_output_is_the_same_with_and_without_the_daemon(
    daemon: Daemon, tmp_path: Path, flags: list[str]
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    first = write_rollout(inputs / "a.jsonl", THREAD.format(1), CALLS)
    second = write_rollout(inputs / "b.jsonl", THREAD.format(2), CALLS[:2])
    broken = inputs / "broken.jsonl"
    broken.write_text('{"type": "session_meta", "payload": {"id": "x"}}\nnot json\n')
    args = ["ingest", *flags, str(first), str(second), str(broken)]

    (tmp_path / "local").mkdir()
    local = Env.make(tmp_path / "local")
    in_process = local.run("--no-daemon", *args)
    daemon.start()
    remote = daemon.run(*args)

    assert remote.returncode == in_process.returncode == 1
    assert remote.stderr.decode() == in_process.stderr
    if "--json" in flags:
        assert _normalized(remote.stdout) == _normalized(in_process.stdout.encode())
    else:
        assert remote.stdout.decode() == in_process.stdout == ""
    assert b"ingest complete; session=codex-" in remote.stderr or "-q" in flags


def test_two_commands_at_once(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    files = [
        write_rollout(tmp_path / f"{n}.jsonl", THREAD.format(n), CALLS) for n in (1, 2)
    ]
    procs = [daemon.popen("ingest", "--json", "-q", str(f)) for f in files]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        (doc,) = _normalized(out)
        assert usage_of(doc["token_usage"]) == expected_usage(CALLS)


def test_fifty_concurrent_clients_add_up_exactly(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    expected: dict[str, dict[str, int]] = {}
    procs = []
    for n in range(50):
        calls = [
            (1000 + n, 500 + n, 10 + n, n),
            (2000 + 3 * n, 1000, 20, 0),
            (700, 600 - n, 5 + 2 * n, 1),
        ]
        thread = f"019c0000-0000-7000-8000-{n:012d}"
        path = write_rollout(tmp_path / f"r{n}.jsonl", thread, calls)
        expected[f"codex-{thread}"] = expected_usage(calls)
        procs.append(daemon.popen("ingest", "--json", "-q", str(path)))

    seen = {}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        (doc,) = json.loads(b"[" + out.strip() + b"]")
        assert doc["status"] == "ok"
        seen[doc["session"]["id"]] = doc

    assert seen.keys() == expected.keys()
    for sid, want in expected.items():
        got = {k: seen[sid]["token_usage"][k] for k in want}
        assert got == want, sid
        log = session_doc(daemon.env.project, sid)
        assert log is not None and log["outcome"]["status"] == "ok"
        assert {k: log["outcome"]["token_usage"][k] for k in want} == want
    state = status(daemon.socket)
    assert state["done"] == 50 and state["running"] == []
    assert sum(state["dedup_dropped"].values()) >= 150  # every re-emit


# --- sessions cut short ---------------------------------------------------------


def _follow(daemon: Daemon, path: Path, thread: str) -> tuple[Any, Output, str]:
    """Start ``ingest --follow`` on a rollout that has only its head so far."""
    path.write_text("\n".join(rollout_head(thread)) + "\n")
    client = daemon.popen("ingest", "--follow", str(path))
    sid = f"codex-{thread}"

    def running() -> bool:
        doc = session_doc(daemon.env.project, sid)
        return doc is not None and doc["outcome"]["status"] == "running"

    wait_for(running, "the followed session to start")
    return client, Output(client.stderr), sid


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


def test_ctrl_c_interrupts_only_its_own_session(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    followed = tmp_path / "live.jsonl"
    client, stderr, sid = _follow(daemon, followed, THREAD.format(1))
    _append(followed, rollout_calls(CALLS[:1]))
    stderr.until(b"[usage] token-usage")

    # Another command runs to completion while the first one is running.
    other = write_rollout(tmp_path / "other.jsonl", THREAD.format(2), CALLS)
    done = daemon.run("ingest", "-q", "--json", str(other))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["token_usage"]["total"] == 3840

    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=15) == 130
    err = stderr.rest().decode()
    assert f"ingest interrupted; session={sid} (tokens: prompt=1000" in err
    doc = session_doc(daemon.env.project, sid)
    assert doc is not None
    assert doc["outcome"]["status"] == "interrupted"
    assert doc["outcome"]["token_usage"]["total"] == 1050
    wait_for(lambda: status(daemon.socket)["running"] == [], "the session to end")


def test_a_client_that_goes_away_interrupts_its_session(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    followed = tmp_path / "live.jsonl"
    client, stderr, sid = _follow(daemon, followed, THREAD.format(1))
    _append(followed, rollout_calls(CALLS[:1]))
    stderr.until(b"[usage] token-usage")

    client.kill()
    client.wait(timeout=10)

    def interrupted() -> bool:
        doc = session_doc(daemon.env.project, sid)
        return doc is not None and doc["outcome"]["status"] == "interrupted"

    wait_for(interrupted, "the session of the vanished client to end")

    def forgotten() -> bool:
        subs = status(daemon.socket)["subscribers"]
        return not any(s["name"].startswith("client-") for s in subs)

    wait_for(forgotten, "the vanished client's stream to go")
    state = status(daemon.socket)
    assert state["running"] == [] and state["done"] == 1


def test_kill_9_leaves_valid_logs_and_the_next_daemon_recovers(
    daemon: Daemon, tmp_path: Path
) -> None:
    first = daemon.start()
    followed = tmp_path / "live.jsonl"
    client, stderr, sid = _follow(daemon, followed, THREAD.format(1))
    _append(followed, rollout_calls(CALLS[:2]))
    stderr.until(b"[usage] token-usage", count=2)
    journal = daemon.env.state / "journal.jsonl"
    wait_for(
        lambda: journal.read_bytes().count(b'"type":"usage.report"') >= 2,
        "the reports to reach the journal",
    )

    def saved_total() -> bool:
        doc = session_doc(daemon.env.project, sid)
        usage = doc and doc["outcome"]["token_usage"]
        return bool(usage) and usage["total"] == 2320

    wait_for(saved_total, "the session log to hold the first two calls")

    first.kill()
    first.wait(timeout=10)
    assert client.wait(timeout=15) == 3
    assert b"the daemon closed the connection" in stderr.rest()

    logs = list((daemon.env.project / ".vizier").rglob("session.json"))
    assert logs
    for log in logs:
        json.loads(log.read_bytes())  # whole and valid, never torn
    cut = session_doc(daemon.env.project, sid)
    assert cut is not None and cut["outcome"]["status"] == "running"
    assert journal.read_bytes().count(b'"type":"usage.report"') >= 2

    daemon.start()  # reclaims the socket the killed daemon left behind
    recovered = session_doc(daemon.env.project, sid)
    assert recovered is not None
    assert recovered["outcome"]["status"] == "interrupted"
    assert "daemon stopped" in recovered["outcome"]["error"]["message"]
    assert recovered["usage_reports"] == cut["usage_reports"]
    assert list((daemon.env.state / "running").iterdir()) == []
    assert "stale socket" in daemon.log()

    # The cut session saved its totals but not its dedup state: ingesting the
    # whole file again recounts it from scratch, never on top of the cut run.
    first_two = tuple(sum(c[i] for c in CALLS[:2]) for i in range(4))
    _append(followed, rollout_calls(CALLS[2:], start=first_two))  # type: ignore[arg-type]
    again = daemon.run("ingest", "--json", "-q", str(followed))
    assert again.returncode == 0, again.stderr
    usage = json.loads(again.stdout)["token_usage"]
    assert (usage["total"], usage["calls"]) == (3840, 3)


def test_sigterm_stops_gracefully(daemon: Daemon, tmp_path: Path) -> None:
    proc = daemon.start()
    assert daemon.pid_file.read_text().strip() == str(proc.pid)
    followed = tmp_path / "live.jsonl"
    client, stderr, sid = _follow(daemon, followed, THREAD.format(1))
    _append(followed, rollout_calls(CALLS[:1]))
    stderr.until(b"[usage] token-usage")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not daemon.socket.exists()
    assert not daemon.pid_file.exists()
    assert client.wait(timeout=15) == 130
    assert f"ingest interrupted; session={sid}".encode() in stderr.rest()
    doc = session_doc(daemon.env.project, sid)
    assert doc is not None and doc["outcome"]["status"] == "interrupted"
    assert doc["outcome"]["token_usage"]["total"] == 1050
    assert list((daemon.env.state / "running").iterdir()) == []
    log = daemon.log()
    assert "SIGTERM received: stopping" in log and "vizierd stopped" in log


# --- what a peer may send ---------------------------------------------------------


def _frame_raw(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _answered_or_closed(sock: socket.socket) -> list[Any]:
    messages = receive_all(sock)
    assert all(isinstance(m, Failure) for m in messages), messages
    return messages


def test_hostile_frames_never_stop_the_daemon(daemon: Daemon) -> None:
    daemon.start()

    with raw_connect(daemon.socket) as sock:  # garbage
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (failure,) = _answered_or_closed(sock)
        assert "over the limit" in failure.message
    assert status(daemon.socket)["pid"]

    with raw_connect(daemon.socket) as sock:  # truncated frame, then gone
        sock.sendall(struct.pack(">I", 100) + b'{"type": "hel')
        sock.shutdown(socket.SHUT_WR)
        assert _answered_or_closed(sock) == []
    assert status(daemon.socket)["pid"]

    with raw_connect(daemon.socket) as sock:  # announces 2 GiB
        sock.sendall(struct.pack(">I", 2**31))
        (failure,) = _answered_or_closed(sock)
        assert f"{MAX_FRAME:,}" in failure.message and failure.exit_code == 3
    assert status(daemon.socket)["pid"]

    with raw_connect(daemon.socket) as sock:  # bad JSON, unknown type, then on
        hello(sock)
        sock.sendall(_frame_raw(b"{not json"))
        bad = receive(sock)
        assert isinstance(bad, Failure) and "bad JSON" in bad.message
        sock.sendall(_frame_raw(b'{"type": "launch-missiles", "id": 5}'))
        unknown = receive(sock)
        assert isinstance(unknown, Failure) and unknown.id == 5
        assert "bad message" in unknown.message
        sock.sendall(_frame_raw(b""))
        assert isinstance(receive(sock), Failure)
        send(sock, StatusRequest(id=6))
        still = receive(sock)
        assert isinstance(still, Reply) and still.id == 6

    with raw_connect(daemon.socket) as sock:  # a request before the hello
        send(sock, StatusRequest(id=1))
        (failure,) = _answered_or_closed(sock)
        assert "hello" in failure.message

    with raw_connect(daemon.socket) as sock:  # another protocol version
        send(sock, Hello(version=PROTOCOL_VERSION + 41))
        (failure,) = _answered_or_closed(sock)
        assert f"version {PROTOCOL_VERSION + 41}" in failure.message
        assert f"version {PROTOCOL_VERSION};" in failure.message
        assert failure.exit_code == 3

    assert status(daemon.socket)["pid"]
    result = daemon.run("daemon", "status")
    assert result.returncode == 0, result.stderr
    assert b"is running" in result.stdout


def test_an_idle_connection_is_closed_after_the_hello_deadline(
    daemon: Daemon,
) -> None:
    daemon.start({"VIZIER_HELLO_TIMEOUT": "0.3"})
    with raw_connect(daemon.socket) as idle:
        assert status(daemon.socket)["pid"]  # others are served meanwhile
        (failure,) = _answered_or_closed(idle)
        assert "no hello within 0.3 s" in failure.message
    assert status(daemon.socket)["pid"]


def test_too_many_connections_are_refused(daemon: Daemon) -> None:
    daemon.start({"VIZIER_MAX_CONNECTIONS": "2"})
    first, second = raw_connect(daemon.socket), raw_connect(daemon.socket)
    hello(first)
    hello(second)
    with raw_connect(daemon.socket) as third:
        (failure,) = _answered_or_closed(third)
        assert "too many connections" in failure.message
    first.close()
    wait_for(lambda: answers(daemon.socket), "a free connection slot")
    second.close()


# --- one daemon per socket, and only a safe one -------------------------------------


def test_a_second_daemon_on_the_same_socket_refuses_to_start(
    daemon: Daemon, tmp_path: Path
) -> None:
    first = daemon.start()
    same = subprocess.run(
        VIZIERD, env=daemon.environ(), capture_output=True, timeout=30
    )
    assert same.returncode == 3
    assert b"already running" in same.stderr
    assert len(same.stderr.strip().splitlines()) == 1

    other_state = daemon.environ({"VIZIER_STATE_DIR": str(tmp_path / "other")})
    other = subprocess.run(VIZIERD, env=other_state, capture_output=True, timeout=30)
    assert other.returncode == 3
    assert f"already running on {daemon.socket}".encode() in other.stderr
    assert first.poll() is None and answers(daemon.socket)


def test_a_live_socket_is_never_stolen(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(daemon.socket))
        listener.listen()
        proc = daemon.spawn()
        assert proc.wait(timeout=30) == 3
        assert "already answering" in daemon.log()
        assert daemon.socket.exists()


def test_a_stale_socket_is_replaced(daemon: Daemon) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(daemon.socket))
    stale.close()  # the file stays; nothing listens: a crashed daemon's
    daemon.start()
    assert status(daemon.socket)["pid"]
    assert "removed the stale socket" in daemon.log()


def test_a_socket_directory_others_can_write_is_refused(daemon: Daemon) -> None:
    daemon.socket_dir.chmod(0o777)
    proc = daemon.spawn()
    assert proc.wait(timeout=30) == 3
    lines = daemon.log().strip().splitlines()
    assert len(lines) == 1
    assert "writable by group or others (mode 0777); refusing to start" in lines[0]
    assert not daemon.socket.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory away")
def test_a_socket_directory_of_another_user_is_refused(daemon: Daemon) -> None:
    os.chown(daemon.socket_dir, 65534, 65534)
    proc = daemon.spawn()
    assert proc.wait(timeout=30) == 3
    assert "belongs to uid 65534" in daemon.log()


def test_the_socket_and_its_directory_are_private(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.socket.stat().st_mode & 0o777 == 0o600
    assert daemon.socket_dir.stat().st_mode & 0o777 == 0o700


# --- other users --------------------------------------------------------------------


def test_peer_uid_check() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert peer_uid(left) == os.getuid()
    assert peer_refusal(os.getuid(), os.getuid()) is None
    assert peer_refusal(None, os.getuid()) is None
    refusal = peer_refusal(65534, 1000)
    assert refusal is not None and "peer uid 65534" in refusal and "1000" in refusal


_AS_NOBODY = """
import json, socket, struct, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect(sys.argv[1])
body = json.dumps({"type": "hello", "version": %d}).encode()
sock.sendall(struct.pack(">I", len(body)) + body)
data = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
print(data[4:].decode())
"""


def _can_switch_user() -> str | None:
    if os.getuid() != 0:
        return "tests are not running as root: cannot act as another user"
    if shutil.which("setpriv") is None:
        return "setpriv is not installed: cannot act as another user"
    probe = run_python("import os; print(os.getuid())", user=65534)
    if probe.returncode != 0 or probe.stdout.strip() != "65534":
        return f"cannot run Python as uid 65534 here: {probe.stderr.strip()}"
    return None


def test_a_connection_from_another_user_is_refused(daemon: Daemon) -> None:
    reason = _can_switch_user()
    if reason:
        pytest.skip(reason)
    daemon.start()
    # Open the way on purpose: the check must hold even when modes do not.
    daemon.socket_dir.chmod(0o711)
    daemon.socket.chmod(0o666)
    code = _AS_NOBODY % PROTOCOL_VERSION
    result = run_python(
        f"import sys; sys.argv.append({str(daemon.socket)!r})\n{code}", user=65534
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["type"] == "failure" and answer["kind"] == "permission"
    assert f"peer uid 65534 is not the daemon's uid {os.getuid()}" in answer["message"]
    assert re.search(r"connection \d+ refused: .*peer uid 65534", daemon.log())
    assert status(daemon.socket)["pid"]


# --- the client ---------------------------------------------------------------------


def test_no_autostart_and_no_daemon_is_exit_3(daemon: Daemon, tmp_path: Path) -> None:
    path = write_rollout(tmp_path / "r.jsonl", THREAD.format(1), CALLS)
    result = daemon.run("ingest", str(path))
    assert result.returncode == 3
    assert result.stderr.decode() == (
        f"vizier: cannot reach the daemon at {daemon.socket} "
        "(VIZIER_NO_AUTOSTART is set)\n"
    )
    assert not daemon.socket.exists()


def test_a_command_starts_the_daemon_when_none_answers(
    daemon: Daemon, tmp_path: Path
) -> None:
    path = write_rollout(tmp_path / "r.jsonl", THREAD.format(1), CALLS)
    result = daemon.run(
        "ingest", "--json", "-q", str(path), extra_env={"VIZIER_NO_AUTOSTART": ""}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token_usage"]["total"] == 3840
    assert answers(daemon.socket)
    assert (daemon.env.state / "daemon.log").read_text().count("started: pid") == 1

    stopped = daemon.run("daemon", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(b"vizierd stopped (pid ")
    assert not daemon.socket.exists() and not daemon.pid_file.exists()


def test_daemon_start_status_stop(daemon: Daemon) -> None:
    started = daemon.run("daemon", "start")
    assert started.returncode == 0, started.stderr
    assert re.match(rb"vizierd started \(pid \d+, socket ", started.stdout)
    again = daemon.run("daemon", "start")
    assert again.returncode == 0 and b"already running" in again.stdout

    text = daemon.run("daemon", "status")
    assert text.returncode == 0, text.stderr
    for part in (b"pid", b"uptime", b"socket", b"protocol", b"sessions", b"dedup"):
        assert part in text.stdout
    as_json = daemon.run("daemon", "status", "--json")
    state = json.loads(as_json.stdout)
    assert state["protocol_version"] == PROTOCOL_VERSION
    assert state["socket"] == str(daemon.socket)
    assert {s["name"] for s in state["subscribers"]} >= {"journal", "session-log"}

    restarted = daemon.run("daemon", "restart")
    assert restarted.returncode == 0, restarted.stderr
    assert b"vizierd stopped" in restarted.stdout
    assert b"vizierd started" in restarted.stdout
    assert (
        json.loads(daemon.run("daemon", "status", "--json").stdout)["pid"]
        != (state["pid"])
    )
    assert daemon.run("daemon", "stop").returncode == 0
    gone = daemon.run("daemon", "status")
    assert gone.returncode == 3 and b"not running" in gone.stderr


def test_watch_shows_other_commands_events(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    watcher = daemon.popen("watch", "--json")

    def watching() -> bool:
        subs = status(daemon.socket)["subscribers"]
        return any(s["name"].startswith("watch-") for s in subs)

    wait_for(watching, "the watcher to subscribe")
    path = write_rollout(tmp_path / "r.jsonl", THREAD.format(1), CALLS)
    assert daemon.run("ingest", "-q", str(path)).returncode == 0

    out = Output(watcher.stdout)
    out.until(b'"type":"session.ended"')
    events = [json.loads(line) for line in out.data.split(b"\n")[:-1]]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "session.started" and "usage.report" in kinds
    assert kinds.count("usage.report") == 3
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(timeout=15) == 130


def test_requests_on_one_connection_run_concurrently_and_cancel(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    followed = tmp_path / "live.jsonl"
    thread = THREAD.format(1)
    followed.write_text("\n".join(rollout_head(thread)) + "\n")
    request = IngestRequest(
        id=1, cwd=str(daemon.env.project), paths=[str(followed)], follow=True
    )
    with raw_connect(daemon.socket) as sock:
        hello(sock)
        send(sock, request)
        first = receive(sock)
        assert isinstance(first, Pushed) and first.id == 1
        assert isinstance(decode_event(first.event), SessionStarted)

        send(sock, StatusRequest(id=2))  # answered while request 1 runs
        while not isinstance(answer := receive(sock), Reply):
            pass
        assert answer.id == 2 and answer.result["running"] == [f"codex-{thread}"]

        send(sock, CancelRequest(id=3, target=1))
        messages = receive_all_until(sock, lambda m: isinstance(m, Reply) and m.id == 1)
    replies = {m.id: m for m in messages if isinstance(m, Reply)}
    assert replies[3].result == {"cancelled": True}
    (outcome,) = replies[1].outcomes
    assert outcome.status == "interrupted" and outcome.exit_code == 130
    kinds = [type(decode_event(m.event)) for m in messages if isinstance(m, Pushed)]
    assert kinds[-2:] == [Outcome, SessionEnded]


def receive_all_until(sock: socket.socket, last: Any) -> list[Any]:
    messages: list[Any] = []
    while True:
        message = receive(sock)
        assert message is not None, messages
        messages.append(message)
        if last(message):
            return messages


def test_a_watcher_that_falls_behind_is_told_what_it_missed(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    calls = [(100 + n, 50, 10, 1) for n in range(6000)]
    big = write_rollout(tmp_path / "big.jsonl", THREAD.format(1), calls)
    with raw_connect(daemon.socket, timeout=60) as watcher:
        hello(watcher)
        send(watcher, WatchRequest(id=1))
        wait_for(
            lambda: any(
                s["name"].startswith("watch-")
                for s in status(daemon.socket)["subscribers"]
            ),
            "the watcher to subscribe",
        )
        # The watcher reads nothing meanwhile, and never slows the ingest.
        done = daemon.run("ingest", "-q", "--json", str(big))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["token_usage"]["calls"] == 6000

        notes = []
        while True:
            message = receive(watcher)
            assert isinstance(message, Pushed)
            event = decode_event(message.event)
            if isinstance(event, Progress) and event.kind == "watch":
                notes.append(event)
            if isinstance(event, SessionEnded):
                break
    assert notes and notes[0].phase == "dropped"
    assert re.match(r"\d+ events dropped", notes[0].message)
    state = status(daemon.socket)
    assert not any(s["name"].startswith("watch-") for s in state["subscribers"])


def test_queries_are_answered_through_the_daemon(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    path = write_rollout(tmp_path / "r.jsonl", THREAD.format(1), CALLS)
    assert daemon.run("ingest", "-q", str(path)).returncode == 0
    for args in (["plugins"], ["usage", "--by", "model"], ["sessions", "list"]):
        result = daemon.run(*args, "--json")
        assert result.returncode == 0, (args, result.stderr)
        json.loads(result.stdout)
    plugins = json.loads(daemon.run("plugins", "--json").stdout)
    assert {s["name"] for s in plugins["subscribers"]} >= {"journal", "session-log"}
    missing = daemon.run("sessions", "show", "no-such-session")
    assert missing.returncode == 2 and missing.stderr.startswith(b"vizier: ")


def test_the_same_session_ingested_at_once_is_counted_once(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    path = write_rollout(tmp_path / "same.jsonl", THREAD.format(7), CALLS)
    procs = [daemon.popen("ingest", "--json", "-q", str(path)) for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0, 0], results
    for stdout, stderr in results:
        (doc,) = [json.loads(line) for line in stdout.splitlines()]
        assert doc["token_usage"]["total"] == 3840
        assert stderr == b""
    saved = session_doc(daemon.env.project, f"codex-{THREAD.format(7)}")
    assert saved is not None
    assert saved["outcome"]["token_usage"]["total"] == 3840
    assert saved["outcome"]["token_usage"]["calls"] == 3


def test_an_idle_connection_after_hello_is_closed(daemon: Daemon) -> None:
    daemon.start(extra_env={"VIZIER_IDLE_TIMEOUT": "0.5"})
    sock = raw_connect(daemon.socket)
    send(sock, Hello(version=PROTOCOL_VERSION))
    assert isinstance(receive(sock), Welcome)
    # Nothing more is sent: the daemon closes the connection by itself.
    sock.settimeout(15)
    assert sock.recv(1) == b""
    sock.close()
    assert status(daemon.socket)["pid"]
