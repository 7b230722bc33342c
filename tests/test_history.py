"""`vizier usage` and `vizier sessions`, from the journal and its summary index.

Everything runs through the real `vizier` command (`--no-daemon`, and through
a real daemon where one is built), on the real Codex rollouts of
``shared/data/real``: the figures must be exactly those of expected.json,
whichever way they are grouped.  Per-day figures come from a small oracle
over the same files (a call is a token_count whose total advanced, dated by
its own timestamp).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, Env, expected, real_data
from vizierd.errors import AmbiguousSession, SessionNotFound, UsageError
from vizierd.queries import parse_when
from vizierd.queries import resolve_session as resolve

FIELDS = ("prompt", "cached_input", "completion", "reasoning_output", "total")
CODEX_FIELDS = dict(
    zip(
        FIELDS,
        (
            "input_tokens",
            "cached_input_tokens",
            "output_tokens",
            "reasoning_output_tokens",
            "total_tokens",
        ),
        strict=True,
    )
)
HAS_DAEMON = (REPO / "vizierd" / "server.py").is_file() and (
    REPO / "vizierd" / "client.py"
).is_file()


# --- the real files and what they must add up to -------------------------------


def rollouts() -> list[Path]:
    return sorted((real_data() / "codex-rollout").glob("*.jsonl"))


def thread_id(path: Path) -> str:
    first = json.loads(path.read_text().splitlines()[0])
    return str(first["payload"]["id"])


def within_file(path: Path) -> dict[str, int]:
    """expected.json's usage inside one rollout, in usage-row field names."""
    figures = expected()[f"codex-rollout/{path.name}"][
        "usage_within_file_sum_of_last_token_usage_over_model_calls"
    ]
    return {field: figures[name] for field, name in CODEX_FIELDS.items()}


def calls_in(path: Path) -> list[tuple[datetime, dict[str, int]]]:
    """The oracle: (time, usage) of each call, a token_count whose total advanced."""
    calls = []
    last_total = None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        payload = record.get("payload") or {}
        if record.get("type") != "event_msg" or payload.get("type") != "token_count":
            continue
        info = payload.get("info")
        if not info:
            continue
        if info["total_token_usage"] != last_total:
            last_total = info["total_token_usage"]
            at = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
            usage = info["last_token_usage"]
            calls.append((at, {f: usage[n] for f, n in CODEX_FIELDS.items()}))
    return calls


def by_day(paths: list[Path], offset: timedelta) -> dict[str, dict[str, int]]:
    days: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for path in paths:
        for at, usage in calls_in(path):
            day = (at + offset).date().isoformat()
            days[day]["calls"] += 1
            for field, value in usage.items():
                days[day][field] += value
    return {day: dict(v) for day, v in days.items()}


def summed(figures: list[dict[str, int]]) -> dict[str, int]:
    return {f: sum(x[f] for x in figures) for f in FIELDS}


def tokens(row: dict[str, Any]) -> dict[str, int]:
    return {f: row[f] for f in FIELDS}


def usage_json(env: Env, *args: str, extra_env: dict[str, str] | None = None) -> Any:
    result = env.run("--no-daemon", "usage", "--json", *args, extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def ingested(env: Env) -> Env:
    """The env, with every real Codex rollout ingested once."""
    result = env.run("--no-daemon", "ingest", "-q", *map(str, rollouts()))
    assert result.returncode == 0, result.stderr
    return env


# --- usage ---------------------------------------------------------------------


def test_oracle_agrees_with_expected_json() -> None:
    for path in rollouts():
        calls = calls_in(path)
        assert summed([u for _, u in calls]) == within_file(path), path.name
        assert (
            len(calls)
            == expected()[f"codex-rollout/{path.name}"]["distinct_model_calls"]
        )


def test_usage_total_is_the_sum_of_the_rollouts(ingested: Env) -> None:
    report = usage_json(ingested, "--utc")
    total = report["total"]
    want = summed([within_file(p) for p in rollouts()])
    assert tokens(total) == want
    assert total["calls"] == sum(len(calls_in(p)) for p in rollouts())
    assert total["unknown_calls"] == 0
    assert report["sessions"] == len(rollouts())
    assert report["warnings"] == [] and report["damage"] == []
    # Cached and reasoning are parts of prompt and completion, never added.
    assert total["total"] == total["prompt"] + total["completion"]


def test_usage_by_day_in_utc(ingested: Env) -> None:
    report = usage_json(ingested, "--utc", "--by", "day")
    want = by_day(rollouts(), timedelta(0))
    got = {row["day"]: row for row in report["rows"]}
    assert sorted(got) == sorted(want)
    for day, figures in want.items():
        assert got[day]["calls"] == figures["calls"], day
        assert tokens(got[day]) == {f: figures[f] for f in FIELDS}, day
    # The same days and totals ccusage prints for these files.
    assert {d: r["total"] for d, r in got.items()} == {
        "2026-01-02": 22_774,
        "2026-02-23": 2_100_424,
        "2026-02-24": 6_176_501,
        "2026-05-11": 6_064_954,
    }


def test_usage_days_follow_the_local_time_zone(ingested: Env) -> None:
    # India is UTC+05:30: a half-hour zone cuts days inside an hour.
    report = usage_json(ingested, "--by", "day", extra_env={"TZ": "Asia/Kolkata"})
    assert report["time_zone"] == "Asia/Kolkata"
    want = by_day(rollouts(), timedelta(hours=5, minutes=30))
    got = {row["day"]: tokens(row) for row in report["rows"]}
    assert got == {day: {f: v[f] for f in FIELDS} for day, v in want.items()}
    assert got != {
        day: {f: v[f] for f in FIELDS}
        for day, v in by_day(rollouts(), timedelta(0)).items()
    }


def test_usage_by_source_session_and_model(ingested: Env) -> None:
    want = summed([within_file(p) for p in rollouts()])

    source = usage_json(ingested, "--by", "source")
    assert [r["source"] for r in source["rows"]] == ["codex-rollout"]
    assert tokens(source["rows"][0]) == want

    sessions = usage_json(ingested, "--by", "session")
    got = {r["session"]: tokens(r) for r in sessions["rows"]}
    assert got == {f"codex-{thread_id(p)}": within_file(p) for p in rollouts()}

    models = usage_json(ingested, "--by", "model")
    per_model: dict[str, list[dict[str, int]]] = defaultdict(list)
    for path in rollouts():
        (model,) = expected()[f"codex-rollout/{path.name}"]["models"]
        per_model[model].append(within_file(path))
    assert {r["model"]: tokens(r) for r in models["rows"]} == {
        m: summed(f) for m, f in per_model.items()
    }


def test_usage_table_is_aligned_with_separators(ingested: Env) -> None:
    result = ingested.run("--no-daemon", "usage", "--utc")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("days in UTC; ")
    header, *rows, rule, total = lines[1:]
    assert header.split() == [
        "day",
        "calls",
        "unknown",
        "prompt",
        "cached",
        "completion",
        "reasoning",
        "total",
    ]
    assert set(rule.replace(" ", "")) == {"-"}
    want = summed([within_file(p) for p in rollouts()])
    assert total.split() == [
        "total",
        f"{sum(len(calls_in(p)) for p in rollouts()):,}",
        "0",
        *(f"{want[f]:,}" for f in FIELDS),
    ]
    # Numbers are right-aligned: every line ends in the same column.
    assert len({len(line) for line in [header, *rows, rule, total]}) == 1


def test_since_and_until_cut_by_date_and_time(ingested: Env) -> None:
    one_day = usage_json(
        ingested, "--utc", "--since", "2026-02-23", "--until", "2026-02-24"
    )
    assert [r["day"] for r in one_day["rows"]] == ["2026-02-23"]
    assert one_day["total"]["total"] == 2_100_424

    calls = [
        (at, u)
        for p in rollouts()
        for at, u in calls_in(p)
        if datetime(2026, 2, 23, 13, tzinfo=UTC)
        <= at
        < datetime(2026, 2, 24, tzinfo=UTC)
    ]
    afternoon = usage_json(
        ingested, "--utc", "--since", "2026-02-23T13:00", "--until", "2026-02-24"
    )
    assert afternoon["total"]["total"] == sum(u["total"] for _, u in calls)

    # Ages count back from now; these calls are all older than a week.
    recent = usage_json(ingested, "--since", "7d")
    assert recent["rows"] == [] and recent["total"]["calls"] == 0


def test_unknown_usage_shows_as_unknown_not_zero(env: Env) -> None:
    truncated = (
        real_data()
        / "codex-exec-json"
        / "agentcmd__stream-output-multi-1.truncated.jsonl"
    )
    result = env.run("--no-daemon", "ingest", "-q", str(truncated))
    assert result.returncode == 0, result.stderr

    report = usage_json(env, "--by", "source")
    (row,) = report["rows"]
    assert row["calls"] == 1 and row["unknown_calls"] == 1
    assert tokens(row) == {f: None for f in FIELDS}

    table = env.run("--no-daemon", "usage", "--by", "source").stdout.splitlines()
    cells = next(line for line in table if line.startswith("codex-exec")).split()
    assert cells == ["codex-exec", "1", "1", "—", "—", "—", "—", "—"]


@pytest.mark.skipif(
    not HAS_DAEMON, reason="the daemon (server.py, client.py) is not built"
)
def test_usage_through_the_daemon_matches(env: Env, daemon: Any) -> None:
    daemon.start()
    result = daemon.run("ingest", "-q", *map(str, rollouts()))
    assert result.returncode == 0, result.stderr
    answer = daemon.run("usage", "--json", "--utc")
    assert answer.returncode == 0, answer.stderr
    report = json.loads(answer.stdout)
    assert tokens(report["total"]) == summed([within_file(p) for p in rollouts()])
    want = by_day(rollouts(), timedelta(0))
    assert {r["day"]: r["total"] for r in report["rows"]} == {
        d: v["total"] for d, v in want.items()
    }
    # The same journal, read in process, says the same.
    assert usage_json(env, "--utc") == report


# --- the index and the journal -------------------------------------------------


def test_ingesting_again_replaces_never_adds(ingested: Env) -> None:
    before = usage_json(ingested, "--by", "session")
    result = ingested.run("--no-daemon", "ingest", "-q", *map(str, rollouts()))
    assert result.returncode == 0, result.stderr
    assert usage_json(ingested, "--by", "session") == before
    sessions = json.loads(
        ingested.run("--no-daemon", "sessions", "list", "--json").stdout
    )
    assert {s["runs"] for s in sessions["sessions"]} == {2}


def test_index_rebuilt_from_the_journal_says_the_same(ingested: Env) -> None:
    before = usage_json(ingested, "--by", "session")
    summary = ingested.state / "summary.jsonl"
    summary.unlink()
    assert usage_json(ingested, "--by", "session") == before
    assert summary.is_file()

    # An index that belongs to another journal is not trusted either.
    lines = summary.read_text().splitlines()
    header = json.loads(lines[0])
    header["journal_ino"] += 1
    summary.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert usage_json(ingested, "--by", "session") == before
    assert (
        json.loads(summary.read_text().splitlines()[0])["journal_ino"]
        != header["journal_ino"]
    )

    # Nor one whose offsets run past the end of the journal (a journal cut
    # short or replaced in place): its lines are not merged back either.
    lines = summary.read_text().splitlines()
    bogus = json.loads(lines[-1])
    bogus["upto"] = 10**12
    bogus["buckets"][0][6] += 1_000_000
    summary.write_text("\n".join([*lines, json.dumps(bogus)]) + "\n")
    assert usage_json(ingested, "--by", "session") == before
    assert str(10**12) not in summary.read_text()


def test_a_session_ingested_from_scratch_replaces_its_old_figures(
    ingested: Env,
) -> None:
    # Without its session log, the session starts over: dedup state and
    # totals are gone, so every call is reported again, once.
    before = usage_json(ingested, "--by", "session")
    for log in ingested.sessions():
        log.unlink()
    result = ingested.run("--no-daemon", "ingest", "-q", *map(str, rollouts()))
    assert result.returncode == 0, result.stderr
    assert usage_json(ingested, "--by", "session") == before
    (ingested.state / "summary.jsonl").unlink()
    assert usage_json(ingested, "--by", "session") == before


def test_a_torn_last_line_is_ignored_quietly(ingested: Env) -> None:
    before = usage_json(ingested)
    journal = ingested.state / "journal.jsonl"
    with journal.open("ab") as f:
        f.write(b'{"type":"usage.report","id":"torn","session_id":"codex-')
    after = usage_json(ingested)
    assert after == before

    (ingested.state / "summary.jsonl").unlink()
    result = ingested.run("--no-daemon", "usage", "--json")
    assert json.loads(result.stdout) == before
    assert "warning" not in result.stderr


def test_a_torn_line_in_the_middle_is_reported(env: Env) -> None:
    first, second = rollouts()[:2]
    assert env.run("--no-daemon", "ingest", "-q", str(first)).returncode == 0
    journal = env.state / "journal.jsonl"
    torn_line = journal.read_bytes().count(b"\n") + 1
    with journal.open("ab") as f:
        f.write(b'{"type":"usage.report","id":"torn","session_id":"codex-')
    # The next writer starts a fresh line: the torn one is now in the middle.
    assert env.run("--no-daemon", "ingest", "-q", str(second)).returncode == 0

    result = env.run("--no-daemon", "usage", "--json")
    report = json.loads(result.stdout)
    assert tokens(report["total"]) == summed([within_file(first), within_file(second)])
    assert [d["line"] for d in report["damage"]] == [torn_line]
    assert f"journal line {torn_line} is damaged" in result.stderr

    table = env.run("--no-daemon", "usage")
    assert f"vizier: warning: journal line {torn_line} is damaged" in table.stderr
    # A rebuilt index finds the same line, and keeps reporting it.
    (env.state / "summary.jsonl").unlink()
    assert [d["line"] for d in usage_json(env)["damage"]] == [torn_line]
    assert [d["line"] for d in usage_json(env)["damage"]] == [torn_line]


def test_a_corrupt_line_in_the_middle_is_reported_with_its_number(
    ingested: Env,
) -> None:
    journal = ingested.state / "journal.jsonl"
    lines = journal.read_bytes().split(b"\n")
    number = next(
        i for i, line in enumerate(lines, start=1) if b'"type":"usage.report"' in line
    )
    lost = json.loads(lines[number - 1])
    lines[number - 1] = lines[number - 1][:30] + b"\x00garbage"
    journal.write_bytes(b"\n".join(lines))
    (ingested.state / "summary.jsonl").unlink()

    result = ingested.run("--no-daemon", "usage", "--json", "--by", "session")
    report = json.loads(result.stdout)
    assert [d["line"] for d in report["damage"]] == [number]
    reason = report["damage"][0]["reason"]
    assert report["warnings"] == [
        f"journal line {number} is damaged and was skipped ({reason})"
    ]
    assert f"warning: journal line {number} is damaged" in result.stderr
    # Exactly the lost report is missing, nothing else.
    rows = {r["session"]: r for r in report["rows"]}
    by_id = {f"codex-{thread_id(p)}": within_file(p) for p in rollouts()}
    damaged = lost["session_id"]
    assert rows[damaged]["total"] == by_id[damaged]["total"] - lost["delta_total"]
    assert all(tokens(rows[s]) == by_id[s] for s in by_id if s != damaged)


# --- sessions ------------------------------------------------------------------


def test_sessions_list_newest_first(ingested: Env) -> None:
    result = ingested.run("--no-daemon", "sessions", "list", "--json")
    assert result.returncode == 0, result.stderr
    sessions = json.loads(result.stdout)["sessions"]
    assert [s["started"] for s in sessions] == sorted(
        (s["started"] for s in sessions), reverse=True
    )
    by_id = {s["id"]: s for s in sessions}
    for path in rollouts():
        entry = by_id[f"codex-{thread_id(path)}"]
        assert entry["total"] == within_file(path)["total"]
        assert entry["action"] == "ingest" and entry["source"] == "codex-rollout"
        assert entry["status"] == "ok"
        assert Path(entry["path"]).is_file()

    table = ingested.run("--no-daemon", "sessions", "list").stdout.splitlines()
    assert table[0].split() == [
        "id",
        "action",
        "source",
        "started",
        "status",
        "model",
        "total",
        "path",
    ]
    assert [line.split()[0] for line in table[1:]] == [s["id"] for s in sessions]


def test_sessions_show_takes_a_unique_prefix(ingested: Env) -> None:
    path = next(p for p in rollouts() if "13-19-38" in p.name)
    sid = f"codex-{thread_id(path)}"
    result = ingested.run("--no-daemon", "sessions", "show", sid[:16])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"session        {sid}" in text
    assert f"total={within_file(path)['total']:,}" in text
    assert "usage reports (1)" in text and "messages (" in text
    assert "dedup drops" in text

    shown = json.loads(
        ingested.run("--no-daemon", "sessions", "show", sid[:16], "--json").stdout
    )
    assert shown["session"]["id"] == sid
    log = shown["log"]
    assert log["error"] is None
    assert log["usage_reports"][-1]["total"] == within_file(path)["total"]
    assert log["outcome"]["status"] == "ok"
    assert all(len(m["content"]) <= 500 for m in log["messages"])


@pytest.fixture(
    params=[
        pytest.param("in-process"),
        pytest.param(
            "daemon",
            marks=pytest.mark.skipif(
                not HAS_DAEMON, reason="the daemon (server.py, client.py) is not built"
            ),
        ),
    ]
)
def vizier(request: pytest.FixtureRequest, ingested: Env) -> Any:
    """Run `vizier` on the ingested env, in process or through a daemon."""
    if request.param == "in-process":
        return lambda *args: ingested.run("--no-daemon", *args)
    daemon = request.getfixturevalue("daemon")
    daemon.start()

    def run(*args: str) -> Any:
        result = daemon.run(*args)
        result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
        return result

    return run


def test_sessions_show_ambiguous_and_unknown_ids(vizier: Any) -> None:
    ambiguous = vizier("sessions", "show", "codex-0")
    assert ambiguous.returncode == 2
    assert "is ambiguous" in ambiguous.stderr
    assert "codex-019c8a4d-8f45-7010-8b5d-7fad920aa6f9" in ambiguous.stderr
    assert "Traceback" not in ambiguous.stderr

    unknown = vizier("sessions", "show", "nosuchsession")
    assert unknown.returncode == 2
    assert "no session has an id starting with 'nosuchsession'" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    shown = vizier("sessions", "show", "codex-019c8a7")
    assert shown.returncode == 0, shown.stderr
    assert "codex-019c8a70-dda7-7f33-98ea-f30553347322" in shown.stdout


def test_bad_since_and_empty_ranges_are_usage_errors(vizier: Any) -> None:
    bad = vizier("usage", "--since", "last tuesday")
    assert bad.returncode == 2
    assert "--since 'last tuesday'" in bad.stderr
    assert "Traceback" not in bad.stderr

    empty = vizier("usage", "--since", "2026-12-02", "--until", "2026-12-01")
    assert empty.returncode == 2
    assert "is not before" in empty.stderr


def test_resolve_session() -> None:
    ids = ["codex-aaa1", "codex-aaa2", "codex-bbb", "20261201T100000-0a"]
    assert resolve(ids, "codex-b") == "codex-bbb"
    assert resolve(ids, "codex-aaa1") == "codex-aaa1"
    with pytest.raises(AmbiguousSession, match="codex-aaa1, codex-aaa2"):
        resolve(ids, "codex-aa")
    with pytest.raises(SessionNotFound, match="ids containing it: codex-bbb"):
        resolve(ids, "bbb")
    with pytest.raises(SessionNotFound):
        resolve(ids, "")
    # An id that is also the start of another is still itself.
    assert resolve(["ab", "abc"], "ab") == "ab"


# --- --since and --until -------------------------------------------------------

NOW = datetime(2026, 12, 3, 17, 40, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "offset", "want"),
    [
        ("2026-12-01", 0, datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01", 3600, datetime(2026, 11, 30, 23, tzinfo=UTC)),
        ("2026-12-01", -5 * 3600, datetime(2026, 12, 1, 5, tzinfo=UTC)),
        ("2026-12-01T10:00", 0, datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00", 19800, datetime(2026, 12, 1, 4, 30, tzinfo=UTC)),
        ("2026-12-01 10:00:30", 0, datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)),
        ("2026-12-01T10:00Z", 7200, datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00+02:00", 0, datetime(2026, 12, 1, 8, tzinfo=UTC)),
        ("30m", 0, NOW - timedelta(minutes=30)),
        ("12h", 3600, NOW - timedelta(hours=12)),
        ("7d", 0, NOW - timedelta(days=7)),
        ("2w", 0, NOW - timedelta(weeks=2)),
        ("7d ago", 0, NOW - timedelta(days=7)),
        (" 12H ", 0, NOW - timedelta(hours=12)),
        ("today", 0, datetime(2026, 12, 3, tzinfo=UTC)),
        ("today", 10 * 3600, datetime(2026, 12, 3, 14, tzinfo=UTC)),
        ("yesterday", 0, datetime(2026, 12, 2, tzinfo=UTC)),
    ],
)
def test_parse_when(text: str, offset: int, want: datetime) -> None:
    got = parse_when(text, now=NOW, tz_offset_s=offset)
    assert got == want
    assert got.tzinfo is not None


@pytest.mark.parametrize(
    "text", ["", "7", "7y", "-7d", "2026-13-01", "2026-12-01T25:00", "next week", "d7"]
)
def test_parse_when_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--until"):
        parse_when(text, now=NOW, tz_offset_s=0, option="--until")


def test_no_journal_yet_gives_an_empty_table(env: Env) -> None:
    assert not (env.state / "journal.jsonl").exists()
    report = usage_json(env)
    assert report["rows"] == [] and report["total"]["calls"] == 0
    assert report["total"]["total"] == 0
    assert env.run("--no-daemon", "sessions", "list").stdout.strip() == (
        "no sessions recorded yet"
    )


# --- the index, piece by piece -------------------------------------------------


def _events(sid: str, reports: int) -> list[Any]:
    from vizierd.events import UsageObserved, UsageReport

    out: list[Any] = []
    base = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    for n in range(1, reports + 1):
        at = base + timedelta(minutes=10 * n)
        out.append(
            UsageObserved(
                session_id=sid, at=at, source="test", request_id=f"r{n}", model="m1"
            )
        )
        out.append(
            UsageReport(
                session_id=sid,
                prompt_total=100 * n,
                completion_total=10 * n,
                total=110 * n,
                prompt_delta=100,
                completion_delta=10,
                delta_total=110,
                calls=n,
                unknown_calls=0,
                known=True,
            )
        )
    return out


@pytest.mark.anyio
async def test_a_running_session_is_read_from_the_journal_tail(tmp_path: Path) -> None:
    from subscribers.journal import Journal
    from vizierd.events import SessionEnded, SessionStarted
    from vizierd.history import load_index

    journal = Journal(tmp_path)
    await journal.handle(SessionStarted(session_id="s1", action="ask", source="test"))
    for event in _events("s1", 3):
        await journal.handle(event)

    # Only the run's first line is in the index; the rest is in the journal.
    assert (tmp_path / "summary.jsonl").read_text().count("\n") == 2
    index = load_index(tmp_path, save=False)
    (seg,) = index.by_session["s1"]
    assert not seg.final and seg.status == "running"
    assert sum(b.total or 0 for b in seg.buckets) == 330
    # Calls are bucketed by the time of their observation, not of the write.
    assert sorted({b.start for b in seg.buckets}) == [
        int(datetime(2026, 11, 2, h, m, tzinfo=UTC).timestamp())
        for h, m in ((9, 0), (9, 15), (9, 30))
    ]

    await journal.handle(SessionEnded(session_id="s1", status="ok"))
    await journal.aclose()
    (seg,) = load_index(tmp_path, save=False).by_session["s1"]
    assert seg.final and seg.status == "ok"
    assert sum(b.calls for b in seg.buckets) == 3


@pytest.mark.anyio
async def test_a_journal_without_its_index_is_indexed_by_the_next_reader(
    tmp_path: Path,
) -> None:
    from subscribers.journal import Journal
    from vizierd.events import SessionEnded, SessionStarted
    from vizierd.history import load_index

    (tmp_path / "journal.jsonl").write_text("")
    journal = Journal(tmp_path)
    await journal.handle(SessionStarted(session_id="a", action="ask", source="test"))
    (tmp_path / "summary.jsonl").unlink()
    # With the journal no longer empty, the writer leaves the index missing
    # rather than start one that would not know this session.
    await journal.handle(SessionEnded(session_id="a", status="ok"))
    await journal.handle(SessionStarted(session_id="b", action="ask", source="test"))
    for event in _events("b", 2):
        await journal.handle(event)
    assert not (tmp_path / "summary.jsonl").exists()

    index = load_index(tmp_path)
    assert sorted(index.by_session) == ["a", "b"]
    assert (tmp_path / "summary.jsonl").exists()
    # The writer appends again now that there is an index, and says all.
    await journal.handle(SessionEnded(session_id="b", status="ok"))
    await journal.aclose()
    (seg,) = load_index(tmp_path, save=False).by_session["b"]
    assert seg.final and sum(b.total or 0 for b in seg.buckets) == 220


def test_a_rewrite_keeps_lines_appended_meanwhile(tmp_path: Path) -> None:
    from vizierd import history
    from vizierd.summary import SegmentBuilder

    def segment(sid: str) -> bytes:
        builder = SegmentBuilder.start(
            session_id=sid,
            segment=f"{sid}-1",
            at=datetime(2026, 11, 2, tzinfo=UTC),
            offset=0,
            action="ask",
            source="test",
            model=None,
            path="",
            project_root="",
            input=None,
            resume=None,
        )
        builder.ended(datetime(2026, 11, 2, tzinfo=UTC), "ok")
        return builder.line()

    journal = tmp_path / "journal.jsonl"
    journal.write_text("")
    ino = journal.stat().st_ino
    assert history.append_summary(tmp_path, [segment("a")], create_for=ino, sync=False)
    index = history.load_index(tmp_path, save=False)
    # Another writer appends while this reader holds its copy …
    assert history.append_summary(tmp_path, [segment("b")], create_for=None, sync=False)
    # … and a compaction from the older copy keeps it.
    history._write(tmp_path, index, journal.stat(), None)
    assert sorted(history.load_index(tmp_path).by_session) == ["a", "b"]


def test_the_benchmark_journal_and_its_index_agree(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_journal", REPO / "bench" / "make_journal.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    state = tmp_path / "state"
    counts = module.make_journal(state, sessions=60, events=3_000)
    assert counts["sessions"] == 60

    from vizierd.queries import usage_report

    for by in ("day", "model", "session", "source"):
        indexed = usage_report(state, by=by, utc=True)
        (state / "summary.jsonl").unlink()
        rebuilt = usage_report(state, by=by, utc=True)
        assert indexed == rebuilt, by
    assert rebuilt["total"]["calls"] == counts["calls"]
    assert rebuilt["total"]["total"] == counts["total_tokens"]


def test_days_follow_daylight_saving_of_a_named_zone(env: Env) -> None:
    # 04:30 UTC on 1 July is 00:30 in New York (EDT, UTC-4), though New York
    # is UTC-5 in winter: the day must come from the zone, not an offset.
    usage = {
        "input_tokens": 10,
        "cached_input_tokens": 0,
        "output_tokens": 5,
        "reasoning_output_tokens": 0,
        "total_tokens": 15,
    }
    lines = [
        {
            "timestamp": "2026-07-01T04:30:00Z",
            "type": "session_meta",
            "payload": {"id": "0199d570-0000-7000-8000-000000000001"},
        },
        {
            "timestamp": "2026-07-01T04:30:05Z",
            "type": "event_msg",
            "payload": {
                "type": "token_count",
                "info": {"total_token_usage": usage, "last_token_usage": usage},
            },
        },
    ]
    path = env.root / "summer.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert env.run("--no-daemon", "ingest", "-q", str(path)).returncode == 0

    for zone in ("America/New_York", "Europe/Berlin"):
        result = env.run(
            "--no-daemon",
            "usage",
            "--json",
            "--since",
            "2026-07-01",
            extra_env={"TZ": zone},
        )
        doc = json.loads(result.stdout)
        assert doc["time_zone"] == zone
        assert [row["day"] for row in doc["rows"]] == ["2026-07-01"], zone
