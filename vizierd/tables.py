"""Readable tables for query results, and their ``--json`` form.

Only the standard library and msgspec are used: the thin client prints the
daemon's answers with this module.  A result arrives as plain JSON data (a
dict decoded from the daemon's reply, or the same dict in process), so
everything here reads dicts.  Times are shown in this machine's time zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import msgspec

from vizierd.render import Renderer

__all__ = ["format_table", "print_result"]

#: Columns of a usage row: (result field, header).
_USAGE_COLUMNS = (
    ("calls", "calls"),
    ("unknown_calls", "unknown"),
    ("prompt", "prompt"),
    ("cached_input", "cached"),
    ("completion", "completion"),
    ("reasoning_output", "reasoning"),
    ("total", "total"),
)
#: How many messages and usage reports ``sessions show`` prints.
_SHOW_MESSAGES = 10
_SHOW_REPORTS = 10
_LINE_CHARS = 100


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    footer: Sequence[object] | None = None,
) -> str:
    """Return an aligned table: numbers right-aligned, text left-aligned.

    Integers get thousands separators and ``None`` shows as ``—`` (unknown).
    A ``footer`` row (a total) follows a rule.
    """
    body = [*rows, *([footer] if footer is not None else [])]
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in body]
    # A column is numeric when its values are; with no rows, the footer's
    # values say (its first cell is a label).
    sample = rows if rows else ([footer[1:]] if footer is not None else [])
    shift = 0 if rows else 1
    numeric = [
        i >= shift
        and bool(sample)
        and all(
            row[i - shift] is None
            or (
                isinstance(row[i - shift], int) and not isinstance(row[i - shift], bool)
            )
            for row in sample
        )
        for i in range(len(headers))
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    lines = [line(row) for row in cells[: 1 + len(rows)]]
    if footer is not None:
        lines.append("  ".join("-" * w for w in widths))
        lines.append(line(cells[-1]))
    return "\n".join(lines)


def _when(value: object, zone: tzinfo | None = None) -> str:
    """Return an RFC 3339 time as ``YYYY-MM-DD HH:MM`` in ``zone``, or ``—``.

    Without ``zone`` the time is shown in this machine's time zone.
    """
    if not isinstance(value, str) or not value:
        return "—"
    try:
        return datetime.fromisoformat(value).astimezone(zone).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def _zone(name: object) -> tzinfo | None:
    """Return the zone a usage result names (``UTC``, ``UTC+05:30``), if any."""
    if not isinstance(name, str) or not name.startswith("UTC"):
        return None
    rest = name[3:]
    if not rest:
        return UTC
    try:
        hours, minutes = rest[1:].split(":")
        offset = timedelta(hours=int(hours), minutes=int(minutes))
    except ValueError:
        return None
    return timezone(-offset if rest[0] == "-" else offset)


def _one_line(text: str, limit: int = _LINE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _plugins(result: dict[str, Any]) -> str:
    rows = [
        [s["name"], s["state"], s["policy"], s["handled"], s["failures"], s["dropped"]]
        for s in result.get("subscribers", [])
    ]
    out = [
        format_table(
            ["subscriber", "state", "policy", "handled", "failures", "dropped"], rows
        )
    ]
    for name, reason in result.get("failed_plugins", {}).items():
        out.append(f"failed to load: {name} ({reason})")
    for name, reason in result.get("skipped_plugins", {}).items():
        out.append(f"skipped: {name} ({reason})")
    dropped = result.get("dedup_dropped", {})
    out.append(
        "dedup drops: "
        + (", ".join(f"{k}={v:,}" for k, v in sorted(dropped.items())) or "none")
    )
    return "\n".join(out)


def _usage(result: dict[str, Any]) -> str:
    by = result.get("by", "day")
    headers = [by] + [header for _, header in _USAGE_COLUMNS]
    rows = [
        [row.get(by)] + [row.get(field) for field, _ in _USAGE_COLUMNS]
        for row in result.get("rows", [])
    ]
    total = result.get("total", {})
    footer = ["total"] + [total.get(field) for field, _ in _USAGE_COLUMNS]

    caption = []
    zone = _zone(result.get("time_zone"))
    if by == "day":
        caption.append(f"days in {result.get('time_zone', 'UTC')}")
    if result.get("since"):
        caption.append(f"from {_when(result['since'], zone)}")
    if result.get("until"):
        caption.append(f"until {_when(result['until'], zone)}")
    sessions = result.get("sessions")
    if isinstance(sessions, int):
        caption.append(f"{sessions:,} session{'' if sessions == 1 else 's'}")
    table = format_table(headers, rows, footer=footer)
    return ("; ".join(caption) + "\n" + table) if caption else table


def _sessions(result: dict[str, Any]) -> str:
    sessions = result.get("sessions", [])
    if not sessions:
        return "no sessions recorded yet"
    rows = [
        [
            s.get("id"),
            s.get("action"),
            s.get("source"),
            _when(s.get("started")),
            s.get("status"),
            s.get("model") or "—",
            s.get("total"),
            s.get("path"),
        ]
        for s in sessions
    ]
    return format_table(
        ["id", "action", "source", "started", "status", "model", "total", "path"],
        rows,
    )


def _tokens(usage: dict[str, Any]) -> str:
    if not usage.get("calls"):
        return "no calls"
    if usage.get("total") is None:
        tokens = "unknown"
    else:
        tokens = f"prompt={_cell(usage.get('prompt'))}"
        if usage.get("cached_input") is not None:
            tokens += f" (cached {_cell(usage['cached_input'])})"
        tokens += f" completion={_cell(usage.get('completion'))}"
        if usage.get("reasoning_output") is not None:
            tokens += f" (reasoning {_cell(usage['reasoning_output'])})"
        tokens += f" total={_cell(usage.get('total'))}"
    calls = usage.get("calls", 0)
    unknown = usage.get("unknown_calls", 0)
    tokens += f"; {calls:,} call{'' if calls == 1 else 's'}"
    if unknown:
        tokens += f", {unknown:,} without usage"
    return tokens


def _show(result: dict[str, Any]) -> str:
    info = result.get("session", {})
    log = result.get("log", {})
    fields: list[tuple[str, str]] = [
        ("session", str(info.get("id"))),
        ("action", f"{info.get('action')} ({info.get('source')})"),
        ("status", str(info.get("status"))),
        ("model", str(info.get("model") or "—")),
        ("started", _when(info.get("started"))),
        ("last activity", _when(info.get("last_activity"))),
        ("recorded", _when(info.get("ended") or info.get("last_activity"))),
        ("tokens", _tokens(info)),
    ]
    if info.get("runs", 1) > 1:
        fields.append(("runs", f"{info['runs']:,} (continued or ingested again)"))
    if info.get("input"):
        fields.append(("input", str(info["input"])))
    fields.append(("log", str(log.get("path") or info.get("path") or "—")))
    if log.get("error"):
        fields.append(("log error", str(log["error"])))
    dropped = log.get("dedup_dropped")
    if dropped is not None:
        fields.append(
            (
                "dedup drops",
                ", ".join(f"{k}={v:,}" for k, v in sorted(dropped.items())) or "none",
            )
        )
    if log.get("waiting_for_parent"):
        fields.append(
            (
                "waiting",
                f"for parent session {log['waiting_for_parent']} (usage unknown)",
            )
        )
    outcome = log.get("outcome") or {}
    if outcome:
        text = str(outcome.get("status"))
        error = outcome.get("error")
        if error:
            text += f" — {error.get('kind')}: {_one_line(str(error.get('message')))}"
        fields.append(("outcome", text))
        if outcome.get("summary"):
            fields.append(("summary", _one_line(str(outcome["summary"]))))
    width = max(len(name) for name, _ in fields)
    out = [f"{name.ljust(width)}  {value}" for name, value in fields]

    messages = log.get("messages") or []
    if messages:
        shown = messages[-_SHOW_MESSAGES:]
        title = f"messages ({len(messages):,}"
        title += f", the last {len(shown)})" if len(shown) < len(messages) else ")"
        out += ["", title]
        rows = [
            [_when(m.get("at")), m.get("role"), _one_line(str(m.get("content", "")))]
            for m in shown
        ]
        out += [
            "  " + line
            for line in format_table(["at", "role", "text"], rows).splitlines()
        ]

    reports = log.get("usage_reports") or []
    if reports:
        first = len(reports) - min(len(reports), _SHOW_REPORTS)
        title = f"usage reports ({len(reports):,}"
        title += f", the last {len(reports) - first})" if first else ")"
        out += ["", title]
        rows = [
            [
                first + i + 1,
                r.get("calls"),
                r.get("unknown_calls"),
                r.get("prompt_delta"),
                r.get("completion_delta"),
                r.get("delta_total"),
                r.get("cached_input_delta"),
                r.get("reasoning_output_delta"),
                r.get("total"),
            ]
            for i, r in enumerate(reports[first:])
        ]
        table = format_table(
            [
                "#",
                "calls",
                "unknown",
                "+prompt",
                "+completion",
                "+total",
                "+cached",
                "+reasoning",
                "total",
            ],
            rows,
        )
        out += ["  " + line for line in table.splitlines()]
    return "\n".join(out)


def print_result(req: object, result: object, renderer: Renderer) -> None:
    """Print ``result`` of ``req`` on the renderer's stdout.

    With ``--json`` the result is printed as one JSON document; otherwise
    as a table.  Warnings the result carries (damaged journal lines) go to
    stderr either way.
    """
    out = renderer.stdout
    if isinstance(result, dict):
        for warning in result.get("warnings") or []:
            renderer.error(f"warning: {warning}")
    if renderer.json:
        out.write(msgspec.json.encode(result).decode() + "\n")
        out.flush()
        return
    kind = type(req).__name__
    if isinstance(result, dict) and kind == "PluginsRequest":
        text = _plugins(result)
    elif isinstance(result, dict) and kind == "UsageRequest":
        text = _usage(result)
    elif isinstance(result, dict) and kind == "SessionsRequest":
        text = _show(result) if getattr(req, "show", None) else _sessions(result)
    else:
        text = msgspec.json.format(msgspec.json.encode(result).decode(), indent=2)
    out.write(text + "\n")
    out.flush()
