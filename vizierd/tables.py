"""Readable tables for query results, and their ``--json`` form.

Only the standard library and msgspec are used: the thin client prints the
daemon's answers with this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from vizierd.render import Renderer

__all__ = ["format_table", "print_result"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return an aligned table: numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [
        [
            "—"
            if v is None
            else f"{v:,}"
            if isinstance(v, int) and not isinstance(v, bool)
            else str(v)
            for v in row
        ]
        for row in rows
    ]
    numeric = [
        all(isinstance(row[i], int) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


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


def print_result(req: object, result: object, renderer: Renderer) -> None:
    """Print ``result`` of ``req`` on the renderer's stdout."""
    out = renderer.stdout
    if renderer.json:
        out.write(msgspec.json.encode(result).decode() + "\n")
        out.flush()
        return
    kind = type(req).__name__
    if kind == "PluginsRequest" and isinstance(result, dict):
        text = _plugins(result)
    else:
        text = msgspec.json.format(msgspec.json.encode(result).decode(), indent=2)
    out.write(text + "\n")
    out.flush()
