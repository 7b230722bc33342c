"""The answers to ``vizier usage`` and ``vizier sessions``, from the history.

Each function reads the summary index (:mod:`vizierd.history`) and returns
plain JSON-able data (dicts, lists, str, int, ``None``): the daemon sends it
over the socket as it is, and :mod:`vizierd.tables` prints it.

Rules that hold in every answer:

* cached input is part of the prompt and reasoning part of the completion;
  neither is ever added to a total;
* a count no call reported is ``None`` (shown as —), never 0: a row whose
  calls all lacked usage has unknown tokens, and cached or reasoning tokens
  stay unknown until some call reports them;
* usage is kept per quarter hour, by the time of the call, so a ``--since``
  or ``--until`` inside a quarter hour takes in that whole quarter hour;
  dates and whole hours cut exactly.

This module imports only the standard library, msgspec and the history.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from vizierd.errors import AmbiguousSession, SessionNotFound, UsageError
from vizierd.events import SessionDoc
from vizierd.history import Index, gc_paused, load_index
from vizierd.summary import BUCKET_SECONDS, Bucket, Segment

__all__ = [
    "BY",
    "AmbiguousSession",
    "SessionNotFound",
    "parse_when",
    "resolve_session",
    "session_show",
    "sessions_list",
    "usage_report",
]

#: How ``vizier usage`` can group its rows.
BY = ("day", "model", "session", "source")

#: The usage columns of every row, in order.
FIELDS = (
    "calls",
    "unknown_calls",
    "prompt",
    "cached_input",
    "completion",
    "reasoning_output",
    "total",
)

#: How much of each message ``sessions show`` returns.
MESSAGE_CHARS = 500
#: How many damaged journal lines are spelled out as warnings.
MAX_WARNINGS = 20


# --- --since and --until ---------------------------------------------------

_AGE = re.compile(r"(\d+)\s*(m|min|h|d|w)(?:\s+ago)?", re.IGNORECASE)
_UNIT_SECONDS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(
    text: str,
    *,
    now: datetime,
    tz_offset_s: int,
    option: str = "--since",
    zone: tzinfo | None = None,
) -> datetime:
    """Return the moment ``text`` names, as an aware UTC datetime.

    Accepted: a date (``2026-12-01``: its midnight), a date and time
    (``2026-12-01T10:00``, ``2026-12-01 10:00:30``), both in ``zone`` (or,
    without one, ``tz_offset_s`` seconds east of UTC) unless they carry their own
    (``Z``, ``+02:00``); an age before ``now`` (``30m``, ``12h``, ``7d``,
    ``2w``, optionally followed by ``ago``); ``today`` and ``yesterday``
    (their local midnight).  Raises :class:`UsageError` naming ``option``
    when ``text`` is none of these.
    """
    value = text.strip()
    local = zone or timezone(timedelta(seconds=tz_offset_s))
    if not value:
        raise UsageError(f"{option}: give a date (2026-12-01) or an age (7d)")
    age = _AGE.fullmatch(value)
    if age:
        amount, unit = int(age.group(1)), age.group(2).lower()
        try:
            return now - timedelta(seconds=amount * _UNIT_SECONDS[unit])
        except (OverflowError, ValueError):
            raise UsageError(
                f"{option} {text}: that reaches past the calendar's first year"
            ) from None
    word = value.lower()
    if word in ("today", "yesterday"):
        day = now.astimezone(local).date()
        if word == "yesterday":
            day -= timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=local).astimezone(UTC)
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            moment = datetime(d.year, d.month, d.day)
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: give a date (2026-12-01), a date and time "
            "(2026-12-01T10:00) or an age (30m, 12h, 7d, 2w)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=local)
    return moment.astimezone(UTC)


def _local_offset() -> int:
    if time.daylight and time.localtime().tm_isdst:
        return -time.altzone
    return -time.timezone


def _named_zone(name: str | None) -> ZoneInfo | None:
    """Return the time zone ``name`` (``Europe/Berlin``), or ``None``.

    A named zone puts every day's usage on the right date across
    daylight-saving changes, which a fixed UTC offset cannot.
    """
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _zone_name(offset: int) -> str:
    if offset == 0:
        return "UTC"
    sign = "+" if offset > 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"


# --- folding buckets into rows ---------------------------------------------


def _counted(runs: list[Segment]) -> Iterator[tuple[Segment, Bucket]]:
    """Yield every bucket of a session's live runs, with its run.

    Usage a run carried over is counted only when no earlier run of the
    session is known: then nothing else holds it.
    """
    for position, seg in enumerate(runs):
        if position == 0 and seg.base is not None:
            yield seg, seg.base
        for bucket in seg.buckets:
            yield seg, bucket


def _new_row() -> list[int | None]:
    return [0, 0, None, None, None, None, None]


def _add_bucket(row: list[int | None], b: Bucket) -> None:
    # Spelled out field by field: this runs for every bucket of the month.
    row[0] = (row[0] or 0) + b.calls
    row[1] = (row[1] or 0) + b.unknown_calls
    value = b.prompt
    if value is not None:
        old = row[2]
        row[2] = value if old is None else old + value
    value = b.cached_input
    if value is not None:
        old = row[3]
        row[3] = value if old is None else old + value
    value = b.completion
    if value is not None:
        old = row[4]
        row[4] = value if old is None else old + value
    value = b.reasoning_output
    if value is not None:
        old = row[5]
        row[5] = value if old is None else old + value
    value = b.total
    if value is not None:
        old = row[6]
        row[6] = value if old is None else old + value


def _add_row(total: list[int | None], row: list[int | None]) -> None:
    for i, value in enumerate(row):
        if value is not None:
            old = total[i]
            total[i] = value if old is None else old + value


def _row_dict(row: list[int | None]) -> dict[str, int | None]:
    return dict(zip(FIELDS, row, strict=True))


def _model_of(seg: Segment, bucket: Bucket) -> str:
    name = seg.models[bucket.model] if bucket.model < len(seg.models) else None
    return name or seg.model or "unknown"


def _warnings(index: Index) -> tuple[list[str], list[dict[str, Any]]]:
    damage = sorted(index.damage.values(), key=lambda d: d.offset)
    lines = [
        f"journal line {d.line:,} is damaged and was skipped ({d.reason})"
        for d in damage[:MAX_WARNINGS]
    ]
    if len(damage) > MAX_WARNINGS:
        lines.append(f"… and {len(damage) - MAX_WARNINGS:,} more damaged lines")
    return lines, [msgspec.to_builtins(d) for d in damage]


def _group(
    index: Index,
    by: str,
    low: float | None,
    high: float | None,
    offset: int,
    zone: tzinfo | None = None,
) -> tuple[dict[str, list[int | None]], dict[str, int], set[str]]:
    """Return the rows by key, when each key first had usage, the sessions seen.

    A bucket counts when it starts after ``low`` and before ``high``.
    """
    rows: dict[str, list[int | None]] = {}
    first: dict[str, int] = {}
    days: dict[int, str] = {}
    seen: set[str] = set()
    for sid, runs in index.by_session.items():
        for seg, bucket in _counted(runs):
            at = bucket.start
            if (low is not None and at <= low) or (high is not None and at >= high):
                continue
            if by == "day":
                key = days.get(at)
                if key is None:
                    if zone is not None:
                        # A named zone knows its daylight-saving changes.
                        key = datetime.fromtimestamp(at, zone).strftime("%Y-%m-%d")
                    else:
                        key = time.strftime("%Y-%m-%d", time.gmtime(at + offset))
                    days[at] = key
            elif by == "model":
                key = _model_of(seg, bucket)
            elif by == "source":
                key = seg.source or "unknown"
            else:
                key = sid
            row = rows.get(key)
            if row is None:
                row = rows[key] = _new_row()
                first[key] = at
            elif at < first[key]:
                first[key] = at
            _add_bucket(row, bucket)
            seen.add(sid)
    return rows, first, seen


def usage_report(
    state_dir: Path,
    *,
    by: str = "day",
    since: str | None = None,
    until: str | None = None,
    utc: bool = False,
    tz_offset_s: int | None = None,
    tz_name: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return the usage of every accounted session, grouped ``by``.

    The result holds ``rows`` (each with the group's key under the name
    ``by`` and the :data:`FIELDS`), their ``total``, the range and time zone
    used, and ``warnings``/``damage`` for damaged journal lines.  Days are
    local to ``tz_offset_s`` (this machine's offset when ``None``) unless
    ``utc``.  Raises :class:`UsageError` for an unknown ``by``, an
    unreadable ``since``/``until`` or an empty range.
    """
    if by not in BY:
        raise UsageError(f"--by {by!r}: choose one of {', '.join(BY)}")
    offset = 0 if utc else (tz_offset_s if tz_offset_s is not None else _local_offset())
    zone = None if utc else _named_zone(tz_name)
    now = now or datetime.now(UTC)
    start = parse_when(since, now=now, tz_offset_s=offset, zone=zone) if since else None
    end = (
        parse_when(until, now=now, tz_offset_s=offset, option="--until", zone=zone)
        if until
        else None
    )
    if start is not None and end is not None and start >= end:
        raise UsageError(f"--since {since} is not before --until {until}")
    # A quarter hour counts when it overlaps the range.
    low = start.timestamp() - BUCKET_SECONDS if start is not None else None
    high = end.timestamp() if end is not None else None

    with gc_paused():
        index = load_index(state_dir)
        rows, first, seen = _group(index, by, low, high, offset, zone)

    keys = (
        sorted(rows, key=lambda k: (first[k], k)) if by == "session" else sorted(rows)
    )
    total = _new_row()
    out_rows = []
    for key in keys:
        _add_row(total, rows[key])
        out_rows.append({by: key, **_row_dict(rows[key])})
    if not total[0]:
        # Nothing was called at all: nothing was spent, which is known.
        total[2] = total[4] = total[6] = 0
    warnings, damage = _warnings(index)
    return {
        "schema": "vizier.usage.v1",
        "by": by,
        "since": start.isoformat() if start else None,
        "until": end.isoformat() if end else None,
        "time_zone": zone.key if zone is not None else _zone_name(offset),
        "rows": out_rows,
        "total": _row_dict(total),
        "sessions": len(seen),
        "warnings": warnings,
        "damage": damage,
    }


# --- sessions --------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _session_info(sid: str, runs: list[Segment]) -> dict[str, Any]:
    first, last = runs[0], runs[-1]
    row = _new_row()
    for _, bucket in _counted(runs):
        _add_bucket(row, bucket)
    started = first.started
    if first.first_at is not None and first.first_at < started:
        started = first.first_at
    model = next(
        (seg.model for seg in reversed(runs) if seg.model),
        next((m for seg in reversed(runs) for m in seg.models if m), None),
    )
    return {
        "id": sid,
        "action": last.action,
        "source": last.source,
        "status": last.status if last.final else _running_status(last.path),
        "started": _iso(started),
        "ended": _iso(last.ended),
        "last_activity": _iso(
            max((seg.last_at for seg in runs if seg.last_at), default=None)
        ),
        "model": model,
        "runs": len(runs),
        **_row_dict(row),
        "path": last.path,
        "project_root": last.project_root,
        "input": last.input,
    }


class _OutcomeStatus(msgspec.Struct):
    status: str = "running"


class _LogStatus(msgspec.Struct):
    outcome: _OutcomeStatus = msgspec.field(default_factory=_OutcomeStatus)


_status_decoder = msgspec.json.Decoder(_LogStatus)


def _running_status(path: str) -> str:
    """Return the status of a run the journal never saw end.

    A run whose process died (a crash, ``kill -9``) never journals its end;
    the daemon marks such a session ``interrupted`` in its session log when
    it starts again, so the log has the last word.  Without a readable log
    the run is still ``running`` as far as anyone knows.
    """
    try:
        return _status_decoder.decode(Path(path).read_bytes()).outcome.status
    except (OSError, msgspec.DecodeError):
        return "running"


def sessions_list(state_dir: Path) -> dict[str, Any]:
    """Return every accounted session, newest first.

    Each entry holds the session's id, action, source, status, start, model,
    usage (:data:`FIELDS`) and session-log path.  Raises :class:`OSError`
    when the journal cannot be read.
    """
    with gc_paused():
        index = load_index(state_dir)
        sessions = [_session_info(sid, r) for sid, r in index.by_session.items()]
    sessions.sort(key=lambda s: (s["started"] or "", s["id"]), reverse=True)
    warnings, damage = _warnings(index)
    return {
        "schema": "vizier.sessions.v1",
        "sessions": sessions,
        "warnings": warnings,
        "damage": damage,
    }


def resolve_session(ids: Iterable[str], wanted: str) -> str:
    """Return the one id in ``ids`` that is ``wanted`` or starts with it.

    Raises :class:`SessionNotFound` when none does and
    :class:`AmbiguousSession` when several do; both messages list
    candidates.
    """
    pool = sorted(set(ids))
    if wanted in pool:
        return wanted
    if not wanted:
        raise SessionNotFound("sessions show: give a session id (or its start)")
    matches = [sid for sid in pool if sid.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousSession(
            f"session id {wanted!r} is ambiguous: {len(matches):,} sessions "
            f"start with it: {_listing(matches)}"
        )
    near = [sid for sid in pool if wanted.lower() in sid.lower()]
    hint = (
        f"; ids containing it: {_listing(near)}"
        if near
        else " (vizier sessions list shows them all)"
    )
    raise SessionNotFound(f"no session has an id starting with {wanted!r}{hint}")


def _listing(ids: list[str], limit: int = 8) -> str:
    shown = ", ".join(ids[:limit])
    if len(ids) > limit:
        shown += f" and {len(ids) - limit:,} more"
    return shown


_doc_decoder = msgspec.json.Decoder(SessionDoc)


def _log(path: str) -> dict[str, Any]:
    """Return what ``sessions show`` shows of a session log, or why it cannot."""
    out: dict[str, Any] = {"path": path, "error": None}
    try:
        doc = _doc_decoder.decode(Path(path).read_bytes())
    except FileNotFoundError:
        out["error"] = f"the session log {path} is gone"
        return out
    except OSError as exc:
        out["error"] = f"cannot read the session log {path}: {exc.strerror}"
        return out
    except msgspec.DecodeError as exc:
        out["error"] = f"the session log {path} is damaged: {exc}"
        return out

    messages = []
    for m in doc.messages:
        messages.append(
            {
                "role": m.role,
                "at": m.at.isoformat(),
                "model": m.model,
                "request_id": m.request_id,
                "chars": len(m.content),
                "content": m.content[:MESSAGE_CHARS],
                "usage": msgspec.to_builtins(m.usage) if m.usage else None,
            }
        )
    outcome = msgspec.to_builtins(doc.outcome)
    out.update(
        created_at=doc.created_at.isoformat(),
        updated_at=doc.updated_at.isoformat(),
        tool_version=doc.tool_version,
        action=doc.action,
        source=doc.source,
        model=doc.model,
        repo=msgspec.to_builtins(doc.repo),
        input=doc.input,
        waiting_for_parent=doc.waiting_for_parent,
        messages=messages,
        usage_reports=[msgspec.to_builtins(r) for r in doc.usage_reports],
        dedup_dropped=dict(doc.dedup.dropped),
        outcome=outcome,
    )
    return out


def session_show(state_dir: Path, wanted: str) -> dict[str, Any]:
    """Return one session: its summary and what its session log holds.

    ``wanted`` is the session's id or a unique start of it.  Message texts
    are cut to :data:`MESSAGE_CHARS` characters (``chars`` has the full
    length).  A missing or damaged session log is reported in
    ``log.error``, not raised.  Raises :class:`SessionNotFound` or
    :class:`AmbiguousSession` (see :func:`resolve_session`).
    """
    with gc_paused():
        index = load_index(state_dir)
    sid = resolve_session(index.by_session, wanted)
    info = _session_info(sid, index.by_session[sid])
    warnings, damage = _warnings(index)
    return {
        "schema": "vizier.session-show.v1",
        "session": info,
        "log": _log(info["path"]) if info["path"] else {"path": "", "error": "no log"},
        "warnings": warnings,
        "damage": damage,
    }
