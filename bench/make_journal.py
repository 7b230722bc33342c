"""A month of journal for the ``usage`` benchmark: many sessions, many events.

:func:`make_journal` writes ``journal.jsonl`` and its summary index into a
state directory, the way the journal subscriber would have written them,
only much faster: sessions are written one after another, their events
encoded in batches, and the index is built with the same
:class:`vizierd.summary.SegmentBuilder` the subscriber uses (one line when
a session starts, one when it ends).

The mix is meant to look like a month of real use: Codex rollouts and exec
runs, ``ask`` sessions on two APIs, a few models, a long first prompt and
shorter replies, cached and reasoning tokens where the source reports them,
and now and then a call without usage.

Run it on its own to time ``vizier usage --by day`` against a bare msgspec
decode of the same journal::

    python bench/make_journal.py [--sessions N] [--events N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vizierd.events import (  # noqa: E402
    Message,
    ModelInfo,
    Outcome,
    OutcomeDoc,
    SessionEnded,
    SessionRef,
    SessionStarted,
    TokenUsage,
    UsageObserved,
    UsageReport,
)
from vizierd.history import append_summary  # noqa: E402
from vizierd.journal_file import JOURNAL_NAME  # noqa: E402
from vizierd.summary import SUMMARY_NAME, SegmentBuilder  # noqa: E402

__all__ = ["make_journal"]

#: (source, action, models, reports cached/reasoning, share of sessions)
_KINDS = (
    ("codex-rollout", "ingest", ("gpt-5.3-codex", "gpt-5.5"), True, 0.55),
    ("codex-exec", "ingest", ("gpt-5.3-codex",), False, 0.15),
    ("openai-chat", "ask", ("gpt-4.1-mini", "llama3.1:8b"), True, 0.22),
    ("openai-responses", "ask", ("gpt-5.6-sol",), True, 0.08),
)
_WORDS = (
    "the session token usage cached prompt model call report reads file test "
    "ingest daemon journal index bucket quarter hour summary codex rollout "
    "assistant patch diff review fix refactor build run check"
).split()


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def make_journal(
    state_dir: Path,
    sessions: int = 10_000,
    events: int = 1_000_000,
    *,
    days: int = 30,
    seed: int = 7,
    end: datetime | None = None,
) -> dict[str, int]:
    """Write a journal of ``sessions`` sessions and about ``events`` events.

    The sessions are spread over the ``days`` before ``end`` (now by
    default).  ``state_dir`` gets ``journal.jsonl`` and ``summary.jsonl``;
    existing ones are replaced.  Returns counts: sessions, events, calls,
    total tokens, and the journal's size in bytes.  Raises :class:`OSError`
    when the files cannot be written.
    """
    rng = random.Random(seed)
    state_dir.mkdir(parents=True, exist_ok=True)
    journal = state_dir / JOURNAL_NAME
    (state_dir / SUMMARY_NAME).unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    end = end or datetime.now(UTC)
    first = end - timedelta(days=days)
    encoder = msgspec.json.Encoder()
    per_session = max(7, events // sessions)
    # Each call is an observation, its report and a reply; a session adds a
    # start, a prompt, an outcome and an end.
    calls_per_session = (per_session - 4) // 3
    starts = sorted(
        first + timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(sessions)
    )
    prompt_text = _text(rng, 1500)
    replies = [_text(rng, rng.randint(80, 400)) for _ in range(64)]
    weights = [k[4] for k in _KINDS]

    written = 0
    counts = {"sessions": 0, "events": 0, "calls": 0, "total_tokens": 0}
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ino = os.fstat(fd).st_ino
    index_lines: list[bytes] = []
    try:
        for number, started in enumerate(starts):
            source, action, models, details, _ = rng.choices(_KINDS, weights)[0]
            model = rng.choice(models)
            sid = (
                f"codex-{rng.getrandbits(128):032x}"
                if action == "ingest"
                else started.strftime("%Y%m%dT%H%M%S-") + f"{number:08x}"
            )
            path = (
                f"/home/user/project{number % 40}/.vizier/sessions/{sid}/session.json"
            )
            lines: list[bytes] = []
            at = started

            begin = SessionStarted(
                session_id=sid,
                seq=1,
                at=at,
                action=action,
                source=source,
                cwd=f"/home/user/project{number % 40}",
                project_root=f"/home/user/project{number % 40}",
                model=model if action == "ask" else None,
                path=path,
            )
            builder = SegmentBuilder.start(
                session_id=sid,
                segment=begin.id,
                at=at,
                offset=written,
                action=action,
                source=source,
                model=begin.model,
                path=path,
                project_root=begin.project_root,
                input=None,
                resume=None,
            )
            index_lines.append(builder.line())
            lines.append(encoder.encode(begin))
            lines.append(
                encoder.encode(
                    Message(
                        session_id=sid, seq=2, at=at, role="user", content=prompt_text
                    )
                )
            )
            builder.activity(at)

            seq = 2
            prompt = completion = total = cached = reasoning = 0
            unknown = 0
            usage: TokenUsage | None = None
            context = rng.randint(3_000, 20_000)
            for call in range(1, calls_per_session + 1):
                at += timedelta(seconds=rng.uniform(2, 90))
                request = f"{sid}#{call}"
                known = rng.random() > 0.01
                if known:
                    p = context + rng.randint(0, 4_000)
                    context = p
                    c = rng.randint(20, 900)
                    ch = p - rng.randint(500, 3_000) if details else None
                    rs = rng.randint(0, c // 2) if details else None
                    obs = UsageObserved(
                        session_id=sid,
                        at=at,
                        source=source,
                        request_id=request,
                        model=model,
                        prompt_tokens=p,
                        completion_tokens=c,
                        total_tokens=p + c,
                        cached_prompt_tokens=max(0, ch) if ch is not None else None,
                        reasoning_tokens=rs,
                    )
                    prompt, completion, total = (
                        prompt + p,
                        completion + c,
                        total + p + c,
                    )
                    if details:
                        cached += obs.cached_prompt_tokens or 0
                        reasoning += rs or 0
                    deltas: tuple[int | None, ...] = (
                        p,
                        c,
                        p + c,
                        obs.cached_prompt_tokens,
                        rs,
                    )
                else:
                    unknown += 1
                    obs = UsageObserved(
                        session_id=sid,
                        at=at,
                        source=source,
                        request_id=request,
                        model=model,
                        known=False,
                    )
                    deltas = (None, None, None, None, None)
                some = call > unknown
                report = UsageReport(
                    session_id=sid,
                    seq=seq + 2,
                    at=at,
                    prompt_total=prompt if some else None,
                    completion_total=completion if some else None,
                    total=total if some else None,
                    prompt_delta=deltas[0],
                    completion_delta=deltas[1],
                    delta_total=deltas[2],
                    calls=call,
                    unknown_calls=unknown,
                    known=known,
                    cached_input_total=cached if details and some else None,
                    cached_input_delta=(deltas[3] or 0) if details and known else None,
                    reasoning_output_total=reasoning if details and some else None,
                    reasoning_output_delta=(deltas[4] or 0)
                    if details and known
                    else None,
                )
                obs.seq = seq + 1
                reply = Message(
                    session_id=sid,
                    seq=seq + 3,
                    at=at,
                    role="assistant",
                    content=rng.choice(replies),
                    model=model,
                    request_id=request,
                )
                seq += 3
                lines += (
                    encoder.encode(obs),
                    encoder.encode(report),
                    encoder.encode(reply),
                )
                builder.observed(at, model)
                builder.report(
                    at,
                    prompt=deltas[0],
                    completion=deltas[1],
                    total=deltas[2],
                    cached=report.cached_input_delta,
                    reasoning=report.reasoning_output_delta,
                    calls=call,
                    unknown_calls=unknown,
                )
                builder.activity(at)
                counts["calls"] += 1
                usage = TokenUsage(
                    prompt_total=report.prompt_total,
                    completion_total=report.completion_total,
                    total=report.total,
                    prompt_delta=report.prompt_delta,
                    completion_delta=report.completion_delta,
                    delta_total=report.delta_total,
                    calls=call,
                    unknown_calls=unknown,
                    known=known,
                )

            done = at + timedelta(seconds=1)
            outcome = OutcomeDoc(
                action=action,
                status="ok",
                exit_code=0,
                session=SessionRef(id=sid, path=path),
                started_at=started,
                elapsed_ms=int((done - started).total_seconds() * 1000),
                model=ModelInfo(provider="openai", name=model),
                token_usage=usage,
            )
            lines.append(
                encoder.encode(
                    Outcome(session_id=sid, seq=seq + 1, at=done, outcome=outcome)
                )
            )
            lines.append(
                encoder.encode(
                    SessionEnded(session_id=sid, seq=seq + 2, at=done, status="ok")
                )
            )
            builder.named(model)
            builder.ended(done, "ok")

            data = b"\n".join(lines) + b"\n"
            os.write(fd, data)
            written += len(data)
            builder.seg.upto = written
            index_lines.append(builder.line())
            counts["sessions"] += 1
            counts["events"] += len(lines)
            counts["total_tokens"] += total
    finally:
        os.close(fd)
    append_summary(state_dir, index_lines, create_for=ino, sync=True)
    counts["journal_bytes"] = written
    return counts


def _bare_decode(journal: Path) -> float:
    """Time the baseline: decode every journal line with msgspec, nothing else."""
    decode = msgspec.json.decode
    start = time.perf_counter()
    with journal.open("rb") as f:
        for line in f:
            decode(line)
    return time.perf_counter() - start


def _vizier_usage(state_dir: Path) -> float:
    environ = {**os.environ, "VIZIER_STATE_DIR": str(state_dir), "NO_COLOR": "1"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vizierd.cli", "--no-daemon", "usage", "--by", "day"],
        env=environ,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, help="state directory (default: temp)")
    args = parser.parse_args()
    state_dir = args.dir or Path(tempfile.mkdtemp(prefix="vizier-bench-"))

    start = time.perf_counter()
    counts = make_journal(state_dir, args.sessions, args.events)
    made = time.perf_counter() - start
    print(f"wrote {counts} to {state_dir} in {made:.1f} s")

    bare = min(_bare_decode(state_dir / JOURNAL_NAME) for _ in range(3))
    ours = min(_vizier_usage(state_dir) for _ in range(3))
    print(f"bare msgspec decode of the journal: {bare:.3f} s")
    print(f"vizier --no-daemon usage --by day:  {ours:.3f} s")
    print(f"ratio: {bare / ours:.1f}x faster than a full scan")


if __name__ == "__main__":
    main()
