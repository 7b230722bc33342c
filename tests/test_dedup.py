"""Every rule of the dedup stage and the ledger behind it."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from subscribers.dedup import DedupStage
from vizierd.events import (
    AnyEvent,
    Message,
    SessionEnded,
    SessionStarted,
    TokenUsage,
    UsageObserved,
    UsageReport,
)
from vizierd.ledger import Ledger

SID = "s1"


class Pipe:
    """The two stages wired as the bus wires them, without the bus."""

    def __init__(self, resume: Any = None, usage: TokenUsage | None = None) -> None:
        self.dedup = DedupStage()
        self.ledger = Ledger()
        self.reports: list[UsageReport] = []
        self.passed: list[AnyEvent] = []
        self.send(
            SessionStarted(
                session_id=SID,
                action="test",
                source="test",
                resume_dedup=resume,
                resume_usage=usage,
            )
        )

    def send(self, event: AnyEvent) -> list[AnyEvent]:
        event.session_id = SID
        out = self.dedup.process(event)
        if out is None:
            return []
        assert not isinstance(out, list)
        result = self.ledger.process(out)
        events = result if isinstance(result, list) else [result]
        self.passed.extend(events)
        self.reports.extend(e for e in events if isinstance(e, UsageReport))
        return events

    def end(self) -> SessionEnded:
        usage = self.ledger.usage(SID)
        self.last_usage = usage
        out = self.dedup.process(SessionEnded(session_id=SID, status="ok"))
        assert isinstance(out, SessionEnded)
        self.ledger.process(out)
        return out

    @property
    def usage(self) -> TokenUsage | None:
        return self.ledger.usage(SID)


def obs(rid: str | None, p: int | None, c: int | None, **kw: Any) -> UsageObserved:
    return UsageObserved(
        source="openai-chat", request_id=rid, prompt_tokens=p, completion_tokens=c, **kw
    )


def test_redelivered_event_is_dropped() -> None:
    pipe = Pipe()
    event = obs("r1", 10, 5)
    pipe.send(event)
    again = msgspec.structs.replace(event)
    assert pipe.send(again) == []
    assert pipe.usage is not None and pipe.usage.total == 15
    assert pipe.end().dedup.dropped == {"redelivered": 1}  # type: ignore[union-attr]


def test_two_distinct_calls_with_identical_counts_both_count() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 100, 20))
    pipe.send(obs("r2", 100, 20))
    assert pipe.usage is not None
    assert (pipe.usage.total, pipe.usage.calls) == (240, 2)


def test_identical_repeat_of_a_call_is_dropped() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 100, 20))
    assert pipe.send(obs("r1", 100, 20)) == []
    assert pipe.usage is not None and pipe.usage.total == 120
    assert pipe.end().dedup.dropped == {"repeated": 1}  # type: ignore[union-attr]


def test_progressive_snapshot_passes_only_the_difference() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 100, 0))
    pipe.send(obs("r1", 100, 7))
    pipe.send(obs("r1", 100, 26))
    assert pipe.usage is not None
    assert (pipe.usage.prompt_total, pipe.usage.completion_total) == (100, 26)
    assert pipe.usage.calls == 1
    assert [r.completion_delta for r in pipe.reports] == [0, 7, 19]


def test_repeat_that_shrank_somewhere_is_dropped() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 100, 20))
    assert pipe.send(obs("r1", 90, 30)) == []
    assert pipe.usage is not None and pipe.usage.total == 120
    assert pipe.end().dedup.dropped == {"conflicting": 1}  # type: ignore[union-attr]


def test_codex_compaction_marker_is_not_a_call() -> None:
    # Same position in the session (request id), a huge total with zero parts.
    pipe = Pipe()
    pipe.send(obs("t#500", 400, 100, total_tokens=500))
    assert pipe.send(obs("t#500", 0, 0, total_tokens=940499)) == []
    assert pipe.usage is not None and pipe.usage.total == 500


def cumulative(p: int, c: int, cached: int | None = None) -> UsageObserved:
    return UsageObserved(
        source="codex-exec",
        scope="cumulative",
        prompt_tokens=p,
        completion_tokens=c,
        cached_prompt_tokens=cached,
    )


def test_cumulative_unchanged_is_dropped_and_growth_is_a_difference() -> None:
    pipe = Pipe()
    pipe.send(cumulative(100, 10, 50))
    assert pipe.send(cumulative(100, 10, 50)) == []
    pipe.send(cumulative(250, 30, 120))
    usage = pipe.usage
    assert usage is not None
    assert (usage.prompt_total, usage.completion_total, usage.total) == (250, 30, 280)
    assert usage.cached_input_total == 120
    assert (usage.prompt_delta, usage.delta_total, usage.calls) == (150, 170, 2)
    assert pipe.end().dedup.dropped == {"unchanged": 1}  # type: ignore[union-attr]


def test_cumulative_going_down_starts_a_new_series() -> None:
    pipe = Pipe()
    pipe.send(cumulative(100, 10))
    pipe.send(cumulative(40, 4))
    assert pipe.usage is not None and pipe.usage.total == 154


def test_replayed_history_sets_a_baseline_only() -> None:
    pipe = Pipe()
    pipe.send(obs("f#120", 100, 20, total_tokens=120, replay=True))
    # A non-advancing row right after the replay repeats its position.
    assert pipe.send(obs("f#120", 0, 0, total_tokens=9148)) == []
    pipe.send(obs("f#150", 25, 5, total_tokens=30))
    assert pipe.usage is not None and pipe.usage.total == 30
    assert pipe.end().dedup.dropped == {"replayed": 1, "conflicting": 1}  # type: ignore[union-attr]


def test_unknown_usage_is_never_zero_and_not_sticky() -> None:
    pipe = Pipe()
    pipe.send(UsageObserved(source="openai-chat", request_id="u1", known=False))
    first = pipe.usage
    assert first is not None
    assert first.known is False
    assert first.total is None and first.prompt_total is None
    assert first.delta_total is None
    pipe.send(obs("r2", 10, 5))
    later = pipe.usage
    assert later is not None
    assert later.known is True
    assert (later.total, later.calls, later.unknown_calls) == (15, 2, 1)
    pipe.send(UsageObserved(source="openai-chat", request_id="u3", known=False))
    assert pipe.usage is not None
    assert pipe.usage.total == 15 and pipe.usage.delta_total is None


def test_cached_and_reasoning_are_never_added_to_totals() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 1200, 80, cached_prompt_tokens=1024, reasoning_tokens=16))
    usage = pipe.usage
    assert usage is not None
    assert (usage.prompt_total, usage.completion_total, usage.total) == (1200, 80, 1280)
    assert (usage.cached_input_total, usage.reasoning_output_total) == (1024, 16)


def test_reported_total_wins_over_the_sum() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 10, 5, total_tokens=20))
    assert pipe.usage is not None and pipe.usage.total == 20


def test_details_absent_until_reported() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 10, 5))
    assert pipe.usage is not None and pipe.usage.cached_input_total is None
    raw = msgspec.json.encode(pipe.reports[-1])
    assert b"cached_input" not in raw and b"reasoning_output" not in raw
    pipe.send(obs("r2", 10, 5, cached_prompt_tokens=0))
    assert pipe.usage is not None and pipe.usage.cached_input_total == 0
    assert pipe.usage.cached_input_delta == 0


def test_a_report_without_change_is_never_published() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 0, 0))
    assert pipe.reports == []
    pipe.send(Message(role="user", content="hi"))
    assert pipe.reports == []


def test_state_is_saved_with_the_session_and_resumed() -> None:
    pipe = Pipe()
    pipe.send(obs("r1", 100, 20))
    pipe.send(cumulative(50, 5))
    ended = pipe.end()
    usage = pipe.last_usage
    # The saved record survives a round trip through JSON, as in the log.
    record = msgspec.json.decode(
        msgspec.json.encode(ended.dedup), type=type(ended.dedup)
    )
    again = Pipe(resume=record, usage=usage)
    again.send(obs("r1", 100, 20))
    again.send(cumulative(50, 5))
    again.send(obs("r3", 1, 1))
    assert again.usage is not None
    assert (again.usage.total, again.usage.calls) == (177, 3)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[int, int, int]], list[Any]]:
    """Distinct calls, then an interleaving of their deliveries.

    Each call is delivered as a series of growing snapshots ending at its
    final counts, any of which may be re-emitted or redelivered (same event
    object twice); calls may share identical counts.
    """
    calls = draw(
        st.lists(
            st.tuples(st.integers(0, 5000), st.integers(0, 500), st.integers(0, 100)),
            min_size=1,
            max_size=8,
        )
    )
    streams: list[list[Any]] = []
    for index, (p, c, cached) in enumerate(calls):
        steps = draw(
            st.lists(st.tuples(st.integers(0, p), st.integers(0, c)), max_size=3)
        )
        snapshots = [*sorted(steps), (p, c)]
        stream: list[Any] = []
        last = (0, 0)
        for sp, sc in snapshots:
            sp, sc = max(sp, last[0]), max(sc, last[1])
            last = (sp, sc)
            event = obs(f"call-{index}", sp, sc, cached_prompt_tokens=min(cached, sp))
            stream.append(event)
            for _ in range(draw(st.integers(0, 2))):
                kind = draw(st.sampled_from(["re-emit", "redelivery"]))
                stream.append(
                    msgspec.structs.replace(event)
                    if kind == "redelivery"
                    else obs(
                        f"call-{index}", sp, sc, cached_prompt_tokens=min(cached, sp)
                    )
                )
        streams.append(stream)
    order: list[Any] = []
    while any(streams):
        live = [s for s in streams if s]
        pick = draw(st.sampled_from(live))
        order.append(pick.pop(0))
    return calls, order


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_interleaving_counts_each_call_once(case: Any) -> None:
    calls, order = case
    pipe = Pipe()
    for event in order:
        pipe.send(event)
    usage = pipe.usage
    if all(p == c == 0 for p, c, _ in calls):
        # Nothing changed the totals, so no report was ever published.
        assert usage is None or usage.total == 0
        return
    assert usage is not None
    assert usage.prompt_total == sum(p for p, _, _ in calls)
    assert usage.completion_total == sum(c for _, c, _ in calls)
    assert usage.total == sum(p + c for p, c, _ in calls)
    # Trailing all-zero calls publish no report, so count the calls the
    # ledger has seen rather than the last report's figure.
    assert pipe.ledger._sessions[SID].calls == len(calls)
