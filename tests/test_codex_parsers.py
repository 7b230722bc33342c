"""The Codex parsers, run through the dedup stage and the ledger.

The real files under ``shared/data/real`` (next to the repository, or where
``VIZIER_REAL_DATA`` points) come with expected figures in ``expected.json``;
every one must come out exactly.  Small hand-written inputs cover errors,
unknown types and format detection.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subscribers.dedup import DedupStage
from vizierd.errors import InputError, UsageError
from vizierd.events import (
    AnyEvent,
    Message,
    Progress,
    SessionStarted,
    TokenUsage,
    UsageObserved,
)
from vizierd.ingest.base import Parser, TokenRow
from vizierd.ingest.codex import CodexExecParser, CodexRolloutParser
from vizierd.ingest.detect import FORMATS, detect_format, make_parser
from vizierd.ledger import Ledger

REAL = Path(
    os.environ.get("VIZIER_REAL_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
)
NO_REAL_DATA = f"real data not found at {REAL} (set VIZIER_REAL_DATA)"


def real_files(folder: str) -> list[Any]:
    """Names of the real files in ``folder``, or one skipped placeholder."""
    path = REAL / folder
    if not path.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_REAL_DATA))]
    return sorted(p.name for p in path.iterdir() if p.suffix == ".jsonl")


@cache
def expected() -> dict[str, Any]:
    files: dict[str, Any] = json.loads((REAL / "expected.json").read_text())["files"]
    return files


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


@dataclass
class Run:
    """What came out of the dedup stage and the ledger for one input."""

    usage: TokenUsage | None
    dropped: Counter[str]
    passed: list[AnyEvent] = field(default_factory=list)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.passed if isinstance(e, kind)]


def run(parser: Parser, lines: Iterable[bytes], sid: str = "session") -> Run:
    """Feed ``lines`` through ``parser``, then the dedup stage and a ledger."""
    dedup = DedupStage()
    ledger = Ledger()
    passed: list[AnyEvent] = []

    def publish(event: AnyEvent) -> None:
        event.session_id = sid
        out = dedup.process(event)
        if out is not None:
            result = ledger.process(out)
            passed.extend(result if isinstance(result, list) else [result])

    publish(SessionStarted(action="ingest", source=parser.meta.source))
    for number, line in enumerate(lines, 1):
        for event in parser.feed(number, line):
            publish(event)
    for event in parser.finish():
        publish(event)
    return Run(ledger.usage(sid), dedup.dropped, passed)


def assert_usage(usage: TokenUsage | None, want: dict[str, int | None]) -> None:
    assert usage is not None
    assert usage.known
    assert usage.unknown_calls == 0
    got = {
        "input_tokens": usage.prompt_total,
        "cached_input_tokens": usage.cached_input_total,
        "output_tokens": usage.completion_total,
        "reasoning_output_tokens": usage.reasoning_output_total,
        "total_tokens": usage.total,
    }
    assert got == want


def assert_unknown(usage: TokenUsage | None) -> None:
    assert usage is not None
    assert not usage.known
    assert (usage.calls, usage.unknown_calls) == (1, 1)
    assert (usage.prompt_total, usage.completion_total, usage.total) == (None,) * 3
    assert usage.cached_input_total is None
    assert usage.reasoning_output_total is None


# --- real rollout files ------------------------------------------------------


@pytest.mark.parametrize("name", real_files("codex-rollout"))
def test_rollout_counts_each_call_once(name: str) -> None:
    want = expected()[f"codex-rollout/{name}"]
    parser = CodexRolloutParser(name)

    result = run(parser, lines_of(REAL / "codex-rollout" / name))

    assert_usage(
        result.usage, want["usage_within_file_sum_of_last_token_usage_over_model_calls"]
    )
    assert result.usage is not None
    assert result.usage.calls == want["distinct_model_calls"]
    repeats = result.dropped["repeated"] + result.dropped["conflicting"]
    assert repeats == want["exact_reemits"] + want["non_advancing_changed_info_events"]
    assert len(parser.rows) == want["token_count_events"] - want["info_null_events"]
    assert parser.meta.external_id is not None
    assert parser.meta.external_id in name
    assert parser.meta.model in want["models"]
    assert parser.waiting_for_parent is None
    assert not parser.skipped


@pytest.mark.parametrize("name", real_files("codex-rollout"))
def test_rollout_messages_carry_model_and_line(name: str) -> None:
    parser = CodexRolloutParser(name)
    messages = [
        event
        for number, line in enumerate(lines_of(REAL / "codex-rollout" / name), 1)
        for event in parser.feed(number, line)
        if isinstance(event, Message)
    ]

    assert messages
    assert {m.role for m in messages} <= {"user", "assistant", "system"}
    thread = parser.meta.external_id
    assert all(
        m.request_id and m.request_id.startswith(f"{thread}:L") for m in messages
    )
    assistant = [m.content for m in messages if m.role == "assistant"]
    assert parser.last_assistant == (assistant[-1] if assistant else None)


# --- real fork families ------------------------------------------------------

FORKS = REAL / "codex-forks"
ARCHIVED = "codexbar__archived-fork-33ce-3869"
LIVE = "codexbar__live-fork-4d90-52bf"
SIBLINGS = "codexbar__missing-parent-siblings"
needs_forks = pytest.mark.skipif(not FORKS.is_dir(), reason=NO_REAL_DATA)


def parse_rollout(file: str, lookup: Any = None) -> tuple[CodexRolloutParser, Run]:
    parser = CodexRolloutParser(file, lookup)
    return parser, run(parser, lines_of(FORKS / file))


@needs_forks
@pytest.mark.parametrize("family", [ARCHIVED, LIVE])
def test_fork_parent_counts_its_own_calls(family: str) -> None:
    want = expected()[f"codex-forks/{family}__parent.jsonl"]

    parser, result = parse_rollout(f"{family}__parent.jsonl")

    assert_usage(result.usage, want["usage_sum_of_last_over_calls"])
    assert result.usage is not None
    assert result.usage.calls == want["calls"]
    assert len(parser.rows) == want["token_count_rows"]
    assert parser.meta.parent_id is None


@needs_forks
@pytest.mark.parametrize("family", [ARCHIVED, LIVE])
def test_fork_with_known_parent_counts_only_its_own_calls(family: str) -> None:
    want = expected()[f"codex-forks/{family}__child.jsonl"]
    parent, _ = parse_rollout(f"{family}__parent.jsonl")
    asked: list[str] = []

    def lookup(session: str) -> list[TokenRow] | None:
        asked.append(session)
        return parent.rows if session == parent.meta.external_id else None

    child, result = parse_rollout(f"{family}__child.jsonl", lookup)

    assert asked == [want["forked_from_id"]]
    assert child.replayed == want["replayed_prefix_rows"]
    assert result.dropped["replayed"] == want["replayed_prefix_rows"]
    assert_usage(result.usage, want["fork_own_usage"])
    assert result.usage is not None
    assert result.usage.calls == want["own_calls"]
    assert child.waiting_for_parent is None
    [progress] = result.of(Progress)
    assert progress.message == (
        f"{want['replayed_prefix_rows']} token rows replayed from parent session "
        f"{want['forked_from_id']}"
    )


@needs_forks
def test_first_own_row_repeating_the_replayed_total_is_not_counted() -> None:
    # The archived fork's first own row is total-only (9,148) under the total
    # its last replayed row set: the dedup stage must remember the replay.
    parent, _ = parse_rollout(f"{ARCHIVED}__parent.jsonl")

    _, result = parse_rollout(f"{ARCHIVED}__child.jsonl", lambda _: parent.rows)

    assert result.dropped["conflicting"] == 1
    assert result.dropped["repeated"] == 0


@needs_forks
@pytest.mark.parametrize(
    "file",
    [
        f"{ARCHIVED}__child.jsonl",
        f"{LIVE}__child.jsonl",
        f"{SIBLINGS}__sibling-a.jsonl",
        f"{SIBLINGS}__sibling-b.jsonl",
    ],
)
@pytest.mark.parametrize("has_lookup", [True, False])
def test_fork_with_unknown_parent_is_unknown(file: str, has_lookup: bool) -> None:
    want = expected()[f"codex-forks/{file}"]

    parser, result = parse_rollout(file, (lambda _: None) if has_lookup else None)

    assert_unknown(result.usage)
    assert parser.waiting_for_parent == want["forked_from_id"]
    assert len(parser.rows) == want["token_count_rows"]
    [usage] = result.of(UsageObserved)
    assert usage.request_id == f"{want['session_id']}#waiting-for-parent"
    [progress] = result.of(Progress)
    assert progress.phase == "fork"
    assert progress.message == f"waiting for parent session {want['forked_from_id']}"


@needs_forks
@pytest.mark.parametrize(
    ("sibling", "own_total"), [("sibling-a", 1_911_065), ("sibling-b", 3_093)]
)
def test_siblings_against_a_parent_built_from_their_shared_prefix(
    sibling: str, own_total: int
) -> None:
    want = expected()[f"codex-forks/{SIBLINGS}__{sibling}.jsonl"]
    b, _ = parse_rollout(f"{SIBLINGS}__sibling-b.jsonl")
    # The missing parent, rebuilt in memory: sibling-b's first 135 rows,
    # written (as a parent's are) before the forks were made.
    before_fork = datetime(2030, 1, 1, 12, tzinfo=UTC)
    parent = [
        TokenRow(
            last=row.last,
            total=row.total,
            at=(before_fork + timedelta(seconds=i)).isoformat(),
        )
        for i, row in enumerate(b.rows[:135])
    ]

    parser, result = parse_rollout(
        f"{SIBLINGS}__{sibling}.jsonl",
        lambda session: parent if session == "missing-parent-session" else None,
    )

    assert parser.replayed == 135
    assert_usage(result.usage, want["fork_own_usage"])
    assert result.usage is not None
    assert result.usage.total == own_total
    assert result.usage.calls == want["own_calls"]


# --- real exec streams -------------------------------------------------------


@pytest.mark.parametrize("name", real_files("codex-exec-json"))
def test_exec_stream_reports_the_final_running_total(name: str) -> None:
    want = expected()[f"codex-exec-json/{name}"]
    parser = CodexExecParser(name)

    result = run(parser, lines_of(REAL / "codex-exec-json" / name))

    assert parser.meta.external_id == want["thread_ids"][0]
    final = want["final_cumulative_usage"]
    if final is None:
        assert_unknown(result.usage)
        [usage] = result.of(UsageObserved)
        assert usage.request_id == f"{want['thread_ids'][0]}#no-usage"
        return
    assert_usage(
        result.usage,
        {
            "input_tokens": final["input_tokens"],
            "cached_input_tokens": final["cached_input_tokens"],
            "output_tokens": final["output_tokens"],
            "reasoning_output_tokens": None,
            "total_tokens": final["input_tokens"] + final["output_tokens"],
        },
    )
    assert result.usage is not None
    assert result.usage.calls == want["turn_completed_count"]
    assert parser.last_assistant
    assert not parser.skipped


# --- hand-written inputs: rollouts -------------------------------------------


def jl(*objects: object) -> list[bytes]:
    return [json.dumps(o).encode() for o in objects]


def meta(session: str = "s1", **extra: object) -> dict[str, object]:
    payload = {"id": session, "timestamp": "2030-01-01T12:00:00Z", **extra}
    return {
        "timestamp": "2030-01-01T12:00:00Z",
        "type": "session_meta",
        "payload": payload,
    }


def usage(i: int, c: int, o: int, r: int) -> dict[str, int]:
    return {
        "input_tokens": i,
        "cached_input_tokens": c,
        "output_tokens": o,
        "reasoning_output_tokens": r,
        "total_tokens": i + o,
    }


def token_count(
    last: dict[str, int] | None,
    total: dict[str, int] | None = None,
    at: str = "2030-01-01T12:00:01Z",
) -> dict[str, object]:
    info = (
        None if last is None else {"last_token_usage": last, "total_token_usage": total}
    )
    return {
        "timestamp": at,
        "type": "event_msg",
        "payload": {"type": "token_count", "info": info, "rate_limits": None},
    }


def feed_all(parser: Parser, lines: Iterable[bytes]) -> list[AnyEvent]:
    events = [e for n, line in enumerate(lines, 1) for e in parser.feed(n, line)]
    return events + list(parser.finish())


def test_rollout_observation_maps_last_usage_and_keys_on_the_total() -> None:
    first = usage(100, 40, 10, 3)
    second = usage(50, 20, 5, 1)
    lines = jl(
        meta(),
        {"type": "turn_context", "payload": {"model": "m-1"}},
        token_count(None),
        token_count(first, first),
        token_count(second, usage(150, 60, 15, 4)),
    )

    events = feed_all(CodexRolloutParser("log.jsonl"), lines)

    assert [e.request_id for e in events if isinstance(e, UsageObserved)] == [
        "s1#110",
        "s1#165",
    ]
    obs = events[1]
    assert isinstance(obs, UsageObserved)
    assert (obs.source, obs.scope, obs.model, obs.replay) == (
        "codex-rollout",
        "call",
        "m-1",
        False,
    )
    assert (
        obs.prompt_tokens,
        obs.cached_prompt_tokens,
        obs.completion_tokens,
        obs.reasoning_tokens,
        obs.total_tokens,
    ) == (50, 20, 5, 1, 55)
    assert obs.at == datetime(2030, 1, 1, 12, 0, 1, tzinfo=UTC)


def test_rollout_reemits_and_compaction_marker_are_dropped_downstream() -> None:
    a = usage(100, 0, 10, 0)
    b = usage(200, 100, 20, 5)
    total_b = usage(300, 100, 30, 5)
    marker = {**usage(0, 0, 0, 0), "total_tokens": 90_000}
    lines = jl(
        meta(),
        token_count(a, a),
        token_count(a, a),
        token_count(None),
        token_count(a, a),
        token_count(b, total_b),
        token_count(marker, total_b),
        token_count(b, total_b),
    )

    result = run(CodexRolloutParser("log.jsonl"), lines)

    assert result.usage is not None
    assert (result.usage.calls, result.usage.total) == (2, 330)
    assert result.dropped == Counter({"repeated": 3, "conflicting": 1})


def test_rollout_messages_and_roles() -> None:
    def item(role: str, *texts: str) -> dict[str, object]:
        content = [{"type": "input_text", "text": t} for t in texts]
        content.append({"type": "input_image", "image_url": "data:"})
        return {
            "timestamp": "2030-01-01T12:00:05Z",
            "type": "response_item",
            "payload": {"type": "message", "role": role, "content": content},
        }

    parser = CodexRolloutParser("log.jsonl")
    lines = jl(
        meta(),
        {"type": "turn_context", "payload": {"model": "m-2"}},
        item("developer", "be brief"),
        item("user", "hello", "there"),
        {"type": "response_item", "payload": {"type": "reasoning", "content": None}},
        {"type": "response_item", "payload": {"type": "function_call", "name": "x"}},
        item("assistant", "first"),
        item("assistant", "final answer"),
    )

    messages = [e for e in feed_all(parser, lines) if isinstance(e, Message)]

    assert [(m.role, m.content) for m in messages] == [
        ("system", "be brief"),
        ("user", "hello\nthere"),
        ("assistant", "first"),
        ("assistant", "final answer"),
    ]
    assert messages[1].request_id == "s1:L4"
    assert {m.model for m in messages} == {"m-2"}
    assert parser.last_assistant == "final answer"
    assert not parser.skipped


def test_rollout_meta_comes_from_the_first_session_meta() -> None:
    spawned = {"subagent": {"thread_spawn": {"parent_thread_id": "p-9", "depth": 1}}}
    parser = CodexRolloutParser("log.jsonl", lambda _: [])
    lines = jl(
        meta("child", cwd="/w", source=spawned),
        meta("p-9", cwd="/elsewhere"),
        {"type": "turn_context", "payload": {"model": "a"}},
        {"type": "turn_context", "payload": {"model": "b"}},
    )

    feed_all(parser, lines)

    assert parser.meta.external_id == "child"
    assert parser.meta.parent_id == "p-9"
    assert parser.meta.cwd == "/w"
    assert parser.meta.started_at == "2030-01-01T12:00:00Z"
    assert parser.meta.model == "b"


def test_fork_prefix_matches_by_value_and_only_parent_rows_before_the_fork() -> None:
    a, b, c = usage(10, 0, 1, 0), usage(20, 0, 2, 0), usage(30, 0, 3, 0)
    ta, tb, tc = a, usage(30, 0, 3, 0), usage(60, 0, 6, 0)
    parent = [
        TokenRow(
            last=(10, 0, 1, 0, 11), total=(10, 0, 1, 0, 11), at="2030-01-01T11:00Z"
        ),
        # Written after the fork was made: cannot have been copied into it.
        TokenRow(
            last=(20, 0, 2, 0, 22), total=(30, 0, 3, 0, 33), at="2030-01-01T13:00Z"
        ),
    ]
    lines = jl(
        meta("f", forked_from_id="p"),
        token_count(a, ta, at="2031-05-05T00:00:00Z"),
        token_count(b, tb),
        token_count(c, tc),
    )

    parser = CodexRolloutParser("fork.jsonl", lambda _: parent)
    result = run(parser, lines)

    assert parser.replayed == 1
    assert result.dropped["replayed"] == 1
    assert result.usage is not None
    assert (result.usage.calls, result.usage.total) == (2, 22 + 33)


def test_fork_with_a_known_parent_without_rows_counts_everything() -> None:
    a = usage(10, 0, 1, 0)
    parser = CodexRolloutParser("fork.jsonl", lambda _: [])

    result = run(parser, jl(meta("f", forked_from_id="p"), token_count(a, a)))

    assert result.usage is not None
    assert (result.usage.calls, result.usage.total) == (1, 11)
    assert parser.waiting_for_parent is None


def test_unknown_types_are_skipped_and_counted() -> None:
    lines = jl(
        meta(),
        {"type": "mystery", "payload": {}},
        {"type": "mystery", "payload": {}},
        {"payload": {}},
        {"type": "event_msg", "payload": {"type": "brand_new_event"}},
        {"type": "event_msg", "payload": {"type": "agent_reasoning", "text": "hm"}},
        {"type": "event_msg", "payload": {"type": "task_started"}},
        {"type": "compacted", "payload": {"message": ""}},
    )
    parser = CodexRolloutParser("log.jsonl")

    events = feed_all(parser, lines)

    assert parser.skipped == Counter(
        {"mystery": 2, "(no type)": 1, "event_msg/brand_new_event": 1}
    )
    [progress] = events
    assert isinstance(progress, Progress)
    assert (progress.kind, progress.phase) == ("ingest", "skipped")
    assert progress.message == "4 lines of unknown types skipped"
    assert progress.detail == "mystery: 2, (no type): 1, event_msg/brand_new_event: 1"


def test_blank_lines_are_ignored() -> None:
    assert feed_all(CodexRolloutParser("log.jsonl"), [b"", b"   ", b"\r"]) == []


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"{not json", "not JSON"),
        (b'{"type": "event_msg"} trailing', "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (b"42", "not a JSON object but int"),
        (b'{"type": 7}', "Expected `str`, got `int` - at `$.type`"),
        (b"\x00\x01\x02binary", "binary data (NUL bytes)"),
        (b"\xff\xfe\xfa{", "binary data (not UTF-8)"),
    ],
)
@pytest.mark.parametrize("parser_class", [CodexRolloutParser, CodexExecParser])
def test_unusable_lines_name_file_and_line(
    line: bytes, says: str, parser_class: type[Any]
) -> None:
    parser = parser_class("broken.jsonl")

    with pytest.raises(InputError) as caught:
        list(parser.feed(3, line))

    assert str(caught.value).startswith("broken.jsonl:3: ")
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("info", "says"),
    [
        ({"last_token_usage": usage(1, 0, 1, 0)}, "`total_token_usage` - at"),
        ({"total_token_usage": usage(1, 0, 1, 0)}, "`last_token_usage` - at"),
        (
            {
                "last_token_usage": {**usage(1, 0, 1, 0), "input_tokens": "1"},
                "total_token_usage": usage(1, 0, 1, 0),
            },
            "Expected `int`, got `str` - at `$.payload.info.last_token_usage.input",
        ),
        (
            {
                "last_token_usage": usage(1, 0, 1, 0),
                "total_token_usage": {**usage(1, 0, 1, 0), "output_tokens": 1.5},
            },
            "Expected `int`, got `float`",
        ),
        (
            {
                "last_token_usage": {"cached_input_tokens": 3},
                "total_token_usage": usage(1, 0, 1, 0),
            },
            "missing required field `input_tokens`",
        ),
        ("lots", "Expected `object | null`, got `str` - at `$.payload.info`"),
    ],
)
def test_token_count_of_the_wrong_shape_is_an_error(info: object, says: str) -> None:
    line = json.dumps(
        {"type": "event_msg", "payload": {"type": "token_count", "info": info}}
    ).encode()

    with pytest.raises(InputError) as caught:
        list(CodexRolloutParser("r.jsonl").feed(12, line))

    assert str(caught.value).startswith("r.jsonl:12: token_count: ")
    assert says in str(caught.value)


@pytest.mark.parametrize(
    "line",
    [
        {"type": "session_meta", "payload": {"timestamp": "x"}},
        {"type": "session_meta", "payload": "nope"},
        {"type": "turn_context", "payload": {"model": 5}},
        {"type": "event_msg"},
        {"type": "response_item", "payload": {"type": "message", "content": 3}},
    ],
)
def test_known_events_of_the_wrong_shape_are_errors(line: dict[str, object]) -> None:
    with pytest.raises(InputError, match=r"^r\.jsonl:2: "):
        list(CodexRolloutParser("r.jsonl").feed(2, json.dumps(line).encode()))


calls = st.lists(
    st.tuples(
        st.integers(1, 10**6),
        st.integers(0, 10**6),
        st.integers(0, 10**4),
        st.integers(0, 10**4),
        st.integers(1, 3),
    ),
    max_size=12,
)


@settings(derandomize=True, max_examples=60)
@given(calls)
def test_any_mix_of_calls_and_reemits_counts_each_call_once(
    spec: list[tuple[int, int, int, int, int]],
) -> None:
    lines = [json.dumps(meta()).encode()]
    running = usage(0, 0, 0, 0)
    for prompt, cached_raw, output, reasoning_raw, copies in spec:
        cached, reasoning = min(cached_raw, prompt), min(reasoning_raw, output)
        last = usage(prompt, cached, output, reasoning)
        running = {k: running[k] + last[k] for k in running}
        lines += jl(*[token_count(last, running)] * copies, token_count(None))

    result = run(CodexRolloutParser("r.jsonl"), lines)

    if not spec:
        assert result.usage is None
        return
    assert result.usage is not None
    assert result.usage.calls == len(spec)
    assert result.usage.total == running["total_tokens"]
    assert result.usage.prompt_total == running["input_tokens"]
    assert result.usage.cached_input_total == running["cached_input_tokens"]
    assert result.usage.reasoning_output_total == running["reasoning_output_tokens"]
    assert result.dropped["repeated"] == sum(c[4] - 1 for c in spec)


# --- hand-written inputs: exec streams ---------------------------------------


def test_exec_running_totals_become_per_turn_differences() -> None:
    lines = jl(
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "one"}},
        {
            "type": "turn.completed",
            "usage": {
                "input_tokens": 100,
                "cached_input_tokens": 50,
                "output_tokens": 10,
            },
        },
        {"type": "turn.started"},
        {"type": "item.updated", "item": {"type": "todo_list", "items": []}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "two"}},
        {
            "type": "turn.completed",
            "usage": {
                "input_tokens": 250,
                "cached_input_tokens": 150,
                "output_tokens": 30,
                "reasoning_output_tokens": 8,
            },
        },
    )
    parser = CodexExecParser("exec.jsonl")

    result = run(parser, lines)

    assert result.usage is not None
    assert (result.usage.calls, result.usage.prompt_total, result.usage.total) == (
        2,
        250,
        280,
    )
    assert (result.usage.prompt_delta, result.usage.cached_input_delta) == (150, 100)
    assert result.usage.reasoning_output_total == 8
    assert [m.content for m in result.of(Message)] == ["one", "two"]
    assert parser.last_assistant == "two"


def test_exec_unfinished_last_turn_is_an_unknown_call() -> None:
    lines = jl(
        {"type": "thread.started", "thread_id": "t-2"},
        {"type": "turn.started"},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 1}},
        {"type": "turn.started"},
        {"type": "turn.failed", "error": {"message": "stream disconnected"}},
    )

    result = run(CodexExecParser("exec.jsonl"), lines)

    assert result.usage is not None
    assert (result.usage.calls, result.usage.unknown_calls, result.usage.total) == (
        2,
        1,
        11,
    )
    [failure] = result.of(Progress)
    assert (failure.phase, failure.message) == ("turn failed", "stream disconnected")


def test_exec_unknown_types_are_counted_and_bad_usage_is_an_error() -> None:
    parser = CodexExecParser("exec.jsonl")
    events = feed_all(
        parser,
        jl(
            {"type": "thread.started", "thread_id": "t-3"},
            {"type": "thread.paused"},
            {"type": "error", "message": "reconnecting"},
        ),
    )

    assert parser.skipped == Counter({"thread.paused": 1})
    assert [type(e).__name__ for e in events] == [
        "Progress",
        "UsageObserved",
        "Progress",
    ]
    with pytest.raises(InputError, match=r"^exec\.jsonl:4: turn\.completed without"):
        list(parser.feed(4, b'{"type": "turn.completed"}'))
    with pytest.raises(InputError, match=r"`\$\.usage\.output_tokens`"):
        list(
            parser.feed(
                5,
                b'{"type":"turn.completed","usage":{"input_tokens":1,"output_tokens":-1}}',
            )
        )


# --- format detection --------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (
            b'{"timestamp":"t","type":"session_meta","payload":{"id":"x"}}',
            "codex-rollout",
        ),
        (b'{"type":"event_msg","payload":{"type":"token_count"}}', "codex-rollout"),
        (b'{"type":"thread.started","thread_id":"x"}', "codex-exec"),
        (b'{"type":"turn.started"}', "codex-exec"),
        (b'{"type":"item.completed","item":{}}', "codex-exec"),
        (b'{"id":"c","object":"chat.completion","choices":[]}', "openai-chat"),
        (b'data: {"id":"c","object":"chat.completion.chunk"}', "openai-chat"),
        (b": OPENROUTER PROCESSING", "openai-chat"),
        (b': PING\n\ndata: {"object":"chat.completion.chunk"}', "openai-chat"),
        (b'{"id":"r","object":"response","output":[]}', "openai-responses"),
        (b'{"type":"response.completed","response":{}}', "openai-responses"),
        (b"event: response.created\ndata: {}", "openai-responses"),
        (b'data: {"type":"response.created","response":{}}', "openai-responses"),
        (b'\xef\xbb\xbf\n\n{"type":"turn.started"}', "codex-exec"),
    ],
)
def test_detect_format(head: bytes, fmt: str) -> None:
    assert detect_format(head, "in.log") == fmt


@pytest.mark.parametrize(
    "head",
    [
        b"interactions:",
        b"hello world",
        b'{"type":"session_meta"}',
        b'{"object":"list"}',
        b"[1,2,3]",
        b"\x00\x00\x00binary",
    ],
)
def test_detect_format_refuses_what_it_cannot_tell(head: bytes) -> None:
    with pytest.raises(InputError) as caught:
        detect_format(head, "in.log")

    message = str(caught.value)
    assert message.startswith(("in.log: cannot tell", "in.log:1: cannot tell"))
    assert all(fmt in message for fmt in FORMATS)
    assert "--format" in message


def test_detect_format_of_empty_input() -> None:
    with pytest.raises(InputError, match=r"^in\.log: the input is empty"):
        detect_format(b" \n\n", "in.log")


@needs_forks
@pytest.mark.parametrize(
    ("folder", "fmt"),
    [
        ("codex-rollout", "codex-rollout"),
        ("codex-forks", "codex-rollout"),
        ("codex-exec-json", "codex-exec"),
    ],
)
def test_detect_format_on_real_files(folder: str, fmt: str) -> None:
    for path in (REAL / folder).iterdir():
        assert detect_format(path.read_bytes().split(b"\n", 1)[0], path.name) == fmt


def test_make_parser() -> None:
    rows: list[TokenRow] = []
    rollout = make_parser("codex-rollout", "a.jsonl", lambda _: rows)
    assert isinstance(rollout, CodexRolloutParser)
    assert isinstance(make_parser("codex-exec", "b.jsonl"), CodexExecParser)
    with pytest.raises(UsageError, match="unknown input format 'yaml'"):
        make_parser("yaml", "c.yaml")


@pytest.mark.parametrize("fmt", ["openai-chat", "openai-responses"])
def test_make_parser_for_openai_formats(fmt: str) -> None:
    if importlib.util.find_spec("vizierd.ingest.openai") is None:
        with pytest.raises(InputError, match="not available"):
            make_parser(fmt, "d.jsonl")
    else:
        parser = make_parser(fmt, "d.jsonl")
        assert hasattr(parser, "feed")
        assert hasattr(parser, "finish")
