"""Telling an input's format from its first lines, and picking its parser."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import msgspec

from vizierd.errors import InputError, UsageError
from vizierd.ingest.base import Parser
from vizierd.ingest.codex import CodexExecParser, CodexRolloutParser, LookupParent

__all__ = ["FORMATS", "detect_format", "make_parser"]

#: Every input format ``vizier ingest --format`` accepts, besides ``auto``.
FORMATS = ("codex-rollout", "codex-exec", "openai-chat", "openai-responses")

_ROLLOUT_TYPES = frozenset(
    {"session_meta", "response_item", "event_msg", "turn_context", "compacted"}
)
_EXEC_TYPES = frozenset({"thread.started", "error"})
_EXEC_PREFIXES = ("turn.", "item.")
_CHAT_OBJECTS = frozenset({"chat.completion", "chat.completion.chunk"})

# The OpenAI parsers live in their own module, loaded only when needed.
_OPENAI_MODULE = "vizierd.ingest.openai"
_OPENAI_PARSERS = {
    "openai-chat": "OpenAIChatParser",
    "openai-responses": "OpenAIResponsesParser",
}

_decode = msgspec.json.Decoder().decode

# The first "object" key of a pretty-printed body cut short by the head.
_OBJECT_KEY = re.compile(rb'"object"\s*:\s*"([^"]*)"')


def _classify_json(value: Any) -> str | None:
    """Return the format one decoded JSON line belongs to, if it says."""
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if isinstance(kind, str):
        if kind in _ROLLOUT_TYPES and "payload" in value:
            return "codex-rollout"
        if kind in _EXEC_TYPES or kind.startswith(_EXEC_PREFIXES):
            return "codex-exec"
        if kind.startswith("response."):
            return "openai-responses"
    obj = value.get("object")
    if obj in _CHAT_OBJECTS:
        return "openai-chat"
    if obj == "response":
        return "openai-responses"
    if isinstance(value.get("choices"), list):
        # Only Chat Completions answers carry choices; Azure's first chunk
        # of a stream names no object.
        return "openai-chat"
    return None


def _classify_line(line: bytes) -> str | None:
    """Return the format a line implies, ``""`` for SSE framing, or ``None``."""
    if line.startswith(b":"):
        return ""
    if line.startswith(b"event:"):
        event = line[6:].strip()
        return "openai-responses" if event.startswith(b"response.") else ""
    if line.startswith((b"id:", b"retry:")):
        return ""
    if line.startswith(b"data:"):
        data = line[5:].strip()
        if data == b"[DONE]":
            return ""
        try:
            # A data line that names no format (Azure's first chunk has an
            # empty "object") is still SSE framing: look further.
            return _classify_json(_decode(data)) or ""
        except msgspec.DecodeError:
            return None
    try:
        return _classify_json(_decode(line))
    except msgspec.DecodeError:
        return None


def _classify_body(head: bytes) -> str | None:
    """Return the format of one JSON object spread over many lines, if it says.

    A pretty-printed response body is read whole when the head holds all of
    it; a longer one is known by its first ``"object"`` key, which in both
    APIs' bodies is the top-level one (no nested item carries that key).
    """
    try:
        return _classify_json(_decode(head))
    except msgspec.DecodeError:
        pass
    match = _OBJECT_KEY.search(head)
    if match is None:
        return None
    return _classify_json({"object": match.group(1).decode(errors="replace")})


def detect_format(first_line: bytes, name: str) -> str:
    """Return the format of the input named ``name``, one of :data:`FORMATS`.

    ``first_line`` is the start of the input: its first line, or several
    complete lines.
    Blank lines and SSE framing (``:`` comments, ``event:`` and ``id:``
    lines, ``data: [DONE]``, data lines that name no format) are looked
    past; the first line that says more decides.  A JSON object spread over
    several lines (a pretty-printed response body) is judged as a whole.
    Input that holds only SSE framing is taken for a Chat Completions
    stream, the API whose proxies send comments.

    Raises :class:`InputError` naming the input when it is empty or no line
    matches a known format.
    """
    head = first_line.removeprefix(b"\xef\xbb\xbf")
    framed = False
    where = name
    for number, raw in enumerate(head.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        found = _classify_line(line)
        if found is None and not framed and line.startswith(b"{"):
            found = _classify_body(head)
        if found:
            return found
        if found is None:
            where = f"{name}:{number}"
            break
        framed = True
    else:
        if framed:
            return "openai-chat"
        raise InputError(f"{name}: the input is empty")

    if b"\x00" in head:
        what = "it is binary data"
    else:
        what = "its first line is no known log or recording"
    raise InputError(
        f"{where}: cannot tell the input format: {what}; "
        f"it can be one of {', '.join(FORMATS)}: name it with --format"
    )


def make_parser(
    fmt: str, name: str, lookup_parent: LookupParent | None = None
) -> Parser:
    """Return a new parser for an input of format ``fmt`` named ``name``.

    ``lookup_parent`` finds a forked Codex session's parent; only rollout
    parsers use it.  Raises :class:`UsageError` for a format that is not one
    of :data:`FORMATS`, and :class:`InputError` when the parser for an
    OpenAI format is not installed.
    """
    if fmt == "codex-rollout":
        return CodexRolloutParser(name, lookup_parent)
    if fmt == "codex-exec":
        return CodexExecParser(name)
    class_name = _OPENAI_PARSERS.get(fmt)
    if class_name is None:
        raise UsageError(
            f"unknown input format {fmt!r}: expected one of {', '.join(FORMATS)}"
        )

    try:
        module = importlib.import_module(_OPENAI_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != _OPENAI_MODULE:
            raise
        raise InputError(
            f"{name}: reading {fmt} input is not available in this installation"
        ) from None
    factory: Callable[[str], Parser] = getattr(module, class_name)
    return factory(name)
