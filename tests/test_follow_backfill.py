"""`vizier ingest --codex-home` (backfill) and `vizier ingest --follow`.

Both run through the real `vizier --no-daemon` command.  The backfill reads
a Codex home built in a temporary folder from the real rollouts and forks
(``sessions/YYYY/MM/DD/rollout-….jsonl`` and ``archived_sessions/``); the
follow reads a file that the test writes while it is being read, and waits
for what it expects by polling with a deadline, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers import VIZIER, Env, expected, real_data

T = TypeVar("T")

FIELDS = ("prompt", "cached_input", "completion", "reasoning_output", "total")
CODEX = ("input_tokens", "cached_input_tokens", "output_tokens")
CODEX += ("reasoning_output_tokens", "total_tokens")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def as_row(figures: dict[str, int]) -> dict[str, int]:
    return dict(zip(FIELDS, (figures[name] for name in CODEX), strict=True))


def first_meta(path: Path) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(path.read_text().splitlines()[0])["payload"]
    return payload


# --- the Codex home ------------------------------------------------------------


def rollout_name(path: Path) -> str:
    """``rollout-<time>-<id>.jsonl``, as Codex names it, from a real file."""
    meta = first_meta(path)
    stamp = meta["timestamp"][:19].replace(":", "-")
    return f"rollout-{stamp}-{meta['id']}.jsonl"


def place(home: Path, folder: str, source: Path, data: str | None = None) -> Path:
    stamp = first_meta(source)["timestamp"]
    target = home / folder
    if folder == "sessions":
        target = target / stamp[:4] / stamp[5:7] / stamp[8:10]
    target.mkdir(parents=True, exist_ok=True)
    out = target / rollout_name(source)
    out.write_text(source.read_text() if data is None else data)
    return out


@pytest.fixture
def codex_home(env: Env) -> tuple[Path, dict[str, dict[str, int] | None]]:
    """A Codex home in the test's folder; returns it and each session's usage.

    Live and archived sessions, a parent (archived) with its fork (live),
    two forks whose parent is missing, and one rollout both live and
    archived: the archived copy is an older, shorter one, so counting it
    instead of the live one would show.
    """
    real = real_data()
    home = env.root / "codex-home"
    want: dict[str, dict[str, int] | None] = {}

    rollouts = sorted((real / "codex-rollout").glob("*.jsonl"))
    for number, path in enumerate(rollouts):
        place(home, "archived_sessions" if number % 3 == 2 else "sessions", path)
        figures = expected()[f"codex-rollout/{path.name}"]
        usage = figures["usage_within_file_sum_of_last_token_usage_over_model_calls"]
        want[f"codex-{first_meta(path)['id']}"] = as_row(usage)
    both = rollouts[0]  # live, above
    lines = both.read_text().splitlines(keepends=True)
    place(home, "archived_sessions", both, "".join(lines[: len(lines) // 3]))

    forks = real / "codex-forks"
    parent = forks / "codexbar__archived-fork-33ce-3869__parent.jsonl"
    child = forks / "codexbar__archived-fork-33ce-3869__child.jsonl"
    place(home, "archived_sessions", parent)
    place(home, "sessions", child)
    family = expected()
    want["codex-parent-session"] = as_row(
        family[f"codex-forks/{parent.name}"]["usage_sum_of_last_over_calls"]
    )
    want["codex-child-session"] = as_row(
        family[f"codex-forks/{child.name}"]["fork_own_usage"]
    )
    for sibling in ("sibling-a", "sibling-b"):
        place(
            home,
            "sessions",
            forks / f"codexbar__missing-parent-siblings__{sibling}.jsonl",
        )
        # Its parent is missing: its usage cannot be told from the replay.
        want[f"codex-{sibling}-session"] = None
    return home, want


def session_logs(env: Env) -> dict[str, Any]:
    logs = {}
    for path in env.sessions():
        doc = json.loads(path.read_text())
        logs[doc["id"]] = doc
    return logs


def usage_by_session(env: Env) -> dict[str, Any]:
    result = env.run("--no-daemon", "usage", "--json", "--by", "session")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_backfill_counts_every_session_once(
    env: Env, codex_home: tuple[Path, dict[str, dict[str, int] | None]]
) -> None:
    home, want = codex_home
    result = env.run("--no-daemon", "ingest", "--codex-home", str(home))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(" complete; session=") == len(want)

    logs = session_logs(env)
    assert sorted(logs) == sorted(want)
    for sid, figures in want.items():
        usage = logs[sid]["outcome"]["token_usage"]
        if figures is None:
            assert usage["total"] is None and usage["unknown_calls"] == usage["calls"]
            assert logs[sid]["waiting_for_parent"] == "missing-parent-session"
        else:
            got = {
                "prompt": usage["prompt_total"],
                "cached_input": usage["cached_input_total"],
                "completion": usage["completion_total"],
                "reasoning_output": usage["reasoning_output_total"],
                "total": usage["total"],
            }
            assert got == figures, sid

    report = usage_by_session(env)
    rows = {r["session"]: r for r in report["rows"]}
    for sid, figures in want.items():
        if figures is None:
            assert rows[sid]["total"] is None and rows[sid]["unknown_calls"] == 1
        else:
            assert {f: rows[sid][f] for f in FIELDS} == figures, sid
    assert report["total"]["total"] == sum(f["total"] for f in want.values() if f)


def test_backfill_twice_gives_identical_totals(
    env: Env, codex_home: tuple[Path, dict[str, dict[str, int] | None]]
) -> None:
    home, _ = codex_home

    def totals() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        # Totals, not deltas: a backfill that adds nothing reports +0.
        logs = {
            sid: None
            if doc["outcome"]["token_usage"] is None
            else {
                k: v
                for k, v in doc["outcome"]["token_usage"].items()
                if "delta" not in k
            }
            for sid, doc in session_logs(env).items()
        }
        by_day = env.run("--no-daemon", "usage", "--json", "--utc").stdout
        return logs, usage_by_session(env), json.loads(by_day)

    assert (
        env.run("--no-daemon", "ingest", "-q", "--codex-home", str(home)).returncode
        == 0
    )
    first = totals()
    again = env.run("--no-daemon", "ingest", "-q", "--codex-home", str(home))
    assert again.returncode == 0, again.stderr
    second = totals()
    assert second == first

    # And the index rebuilt from the journal of both runs agrees.
    (env.state / "summary.jsonl").unlink()
    assert totals() == first


def test_a_file_both_live_and_archived_counts_the_live_one(
    env: Env, codex_home: tuple[Path, dict[str, dict[str, int] | None]]
) -> None:
    home, want = codex_home
    archived = sorted((home / "archived_sessions").glob("*.jsonl"))
    live_names = {p.name for p in (home / "sessions").rglob("*.jsonl")}
    (shared,) = [p for p in archived if p.name in live_names]
    sid = f"codex-{first_meta(shared)['id']}"

    assert (
        env.run("--no-daemon", "ingest", "-q", "--codex-home", str(home)).returncode
        == 0
    )
    doc = session_logs(env)[sid]
    assert doc["input"].startswith(str(home / "sessions"))
    figures = want[sid]
    assert figures is not None
    assert doc["outcome"]["token_usage"]["total"] == figures["total"]


def test_a_folder_that_is_not_a_codex_home_is_refused(env: Env) -> None:
    result = env.run("--no-daemon", "ingest", "--codex-home", str(env.root))
    assert result.returncode == 1
    assert "not a Codex home" in result.stderr


# --- follow ----------------------------------------------------------------------


def journal_total(env: Env, session_id: str) -> int | None:
    """The session's total in the last usage report the journal holds."""
    try:
        data = (env.state / "journal.jsonl").read_text()
    except FileNotFoundError:
        return None
    total = None
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if event.get("type") == "usage.report" and event["session_id"] == session_id:
            total = event["total"]
    return total


def read_position(pid: int, path: Path) -> int | None:
    """How far process ``pid`` has read ``path`` (Linux ``/proc``), else None."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            if Path(os.readlink(fd)) != path:
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("pos:"):
                return int(line.split()[1])
    return None


def calls(lines: list[str]) -> Iterator[tuple[int, int]]:
    """(index, total tokens) of each line that is a call: its total advanced."""
    last = None
    for i, line in enumerate(lines):
        payload = json.loads(line).get("payload") or {}
        info = payload.get("info") if payload.get("type") == "token_count" else None
        if info and info["total_token_usage"] != last:
            last = info["total_token_usage"]
            yield i, info["last_token_usage"]["total_tokens"]


def test_follow_reads_a_growing_file_and_stops_cleanly(env: Env) -> None:
    (source,) = (real_data() / "codex-rollout").glob("*T20-34-25-019c8bfe*.jsonl")
    name = source.name
    figures = expected()[f"codex-rollout/{name}"]
    want = figures["usage_within_file_sum_of_last_token_usage_over_model_calls"]
    sid = f"codex-{first_meta(source)['id']}"
    lines = source.read_text().splitlines(keepends=True)
    made = list(calls(lines))
    first_cut = made[2][0] + 1
    first_total = sum(total for _, total in made[:3])
    split = made[3][0]

    live = env.root / "live.jsonl"
    live.write_text("".join(lines[:first_cut]))
    proc = subprocess.Popen(
        [*VIZIER, "--no-daemon", "ingest", "--follow", str(live)],
        cwd=env.project,
        env={**os.environ, **env.environ()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def total_is(value: int) -> Callable[[], bool]:
            def check() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"vizier exited early: {proc.communicate()}")
                return journal_total(env, sid) == value

            return check

        # The usage of the first part is accounted while the file is open.
        wait_for(total_is(first_total), "the calls of the first part")

        # A line written in two pieces: the follower reads the first piece
        # (its read position reaches the end of the file) before the second.
        with live.open("a") as f:
            f.write("".join(lines[first_cut:split]))
            f.flush()
            piece = lines[split]
            f.write(piece[: len(piece) // 2])
            f.flush()
            size = live.stat().st_size
            position = read_position(proc.pid, live)
            assert position is not None or not sys.platform.startswith("linux")
            if position is not None:
                wait_for(
                    lambda: (read_position(proc.pid, live) or 0) >= size,
                    "the follower to read the first piece",
                )
            f.write(piece[len(piece) // 2 :])
            f.write("".join(lines[split + 1 :]))
            f.flush()

        wait_for(total_is(want["total_tokens"]), "every call")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 130, err
    assert out == ""
    assert err.splitlines()[-1].startswith(f"ingest interrupted; session={sid} ")
    (log,) = env.sessions()
    doc = json.loads(log.read_text())
    usage = doc["outcome"]["token_usage"]
    assert doc["outcome"]["status"] == "interrupted"
    assert usage["total"] == want["total_tokens"]
    assert usage["prompt_total"] == want["input_tokens"]
    assert usage["cached_input_total"] == want["cached_input_tokens"]
    assert usage["calls"] == figures["distinct_model_calls"]
    assert doc["dedup"]["dropped"]["repeated"] == figures["exact_reemits"]

    # The history has it too, once.
    rows = usage_by_session(env)["rows"]
    assert [(r["session"], r["total"]) for r in rows] == [(sid, want["total_tokens"])]
    shown = env.run("--no-daemon", "sessions", "list", "--json")
    (entry,) = json.loads(shown.stdout)["sessions"]
    assert entry["status"] == "interrupted"


def test_a_killed_follow_keeps_what_was_journaled(env: Env) -> None:
    (source,) = (real_data() / "codex-rollout").glob("*T20-34-25-019c8bfe*.jsonl")
    sid = f"codex-{first_meta(source)['id']}"
    lines = source.read_text().splitlines(keepends=True)
    made = list(calls(lines))
    live = env.root / "live.jsonl"
    live.write_text("".join(lines[: made[1][0] + 1]))
    proc = subprocess.Popen(
        [*VIZIER, "--no-daemon", "ingest", "-q", "--follow", str(live)],
        cwd=env.project,
        env={**os.environ, **env.environ()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        two_calls = made[0][1] + made[1][1]
        wait_for(lambda: journal_total(env, sid) == two_calls, "two calls journaled")
    finally:
        proc.kill()
        proc.wait()

    # Nothing ended the run: the index reads it back from the journal.
    rows = usage_by_session(env)["rows"]
    assert [(r["session"], r["calls"], r["total"]) for r in rows] == [
        (sid, 2, two_calls)
    ]
    listed = env.run("--no-daemon", "sessions", "list", "--json").stdout
    (entry,) = json.loads(listed)["sessions"]
    assert entry["status"] == "running"

    # Once something marks the session log interrupted (the daemon does, on
    # its next start), the list says so too.
    (log,) = env.sessions()
    doc = json.loads(log.read_text())
    doc["outcome"]["status"] = "interrupted"
    log.write_text(json.dumps(doc))
    listed = env.run("--no-daemon", "sessions", "list", "--json").stdout
    assert json.loads(listed)["sessions"][0]["status"] == "interrupted"
