"""A scripted OpenAI-compatible API on 127.0.0.1, and the real recordings it replays.

:class:`OpenAIServer` is a real HTTP server (pytest-httpserver, on werkzeug,
threaded so that it speaks HTTP/1.1 with chunked streaming).  It answers
``POST /v1/chat/completions`` and ``POST /v1/responses`` with the replies a
test scripts, in order: JSON bodies, server-sent-event streams, errors, a
stream whose connection is dropped before its final chunks, a stream that
holds still until the test lets it go, a server that refuses
``stream_options``.  Every request body it receives is kept.

:func:`load_interactions` reads the recorded real traffic (VCR cassettes and
a raw ``.sse`` capture) from the shared real-data folder, never copied into
the repository, and :func:`replay` serves one recorded response again.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.helpers import expected, real_data

__all__ = [
    "CHAT",
    "RESPONSES",
    "Interaction",
    "OpenAIServer",
    "Reply",
    "chat_body",
    "chat_chunks",
    "error_reply",
    "held",
    "json_reply",
    "load_interactions",
    "refuses_stream_options",
    "replay",
    "responses_body",
    "responses_events",
    "sse_reply",
]

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"

#: The longest a held or delayed reply waits for the test to let it go.
HOLD_LIMIT = 30.0

#: A reply: given the server and the request, the response to send.
Reply = Callable[["OpenAIServer", Request], Response]


class OpenAIServer:
    """The scripted server.  Use :meth:`script`, then point the SDK at
    :attr:`base_url`; :meth:`bodies` returns what it was sent."""

    def __init__(self) -> None:
        self.http = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Reply]] = {}
        self._fallback: dict[str, Reply] = {}
        self._bodies: list[tuple[str, dict[str, Any]]] = []
        self._keys: list[str | None] = []
        self.unexpected: list[str] = []

    def start(self) -> None:
        """Start serving on a free port of 127.0.0.1."""
        self.http.start()
        for path in (CHAT, RESPONSES):
            self.http.expect_request(path, method="POST").respond_with_handler(
                self._dispatch
            )

    def stop(self) -> None:
        """Let every held reply go and stop the server."""
        self.release.set()
        self.http.stop()

    def reset(self) -> None:
        """Forget the script and what was received; let held replies go."""
        self.release.set()
        with self._lock:
            self._queues.clear()
            self._fallback.clear()
            self._bodies.clear()
            self._keys.clear()
            self.unexpected.clear()
        self.release = threading.Event()

    @property
    def base_url(self) -> str:
        """The base URL to give the SDK (ends in ``/v1``)."""
        return self.http.url_for("/v1")

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, in order."""
        with self._lock:
            self._queues.setdefault(path, deque()).extend(replies)

    def always(self, path: str, reply: Reply) -> None:
        """Answer every request to ``path`` that has no scripted reply."""
        with self._lock:
            self._fallback[path] = reply

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        """Return the JSON bodies received (at ``path``), oldest first."""
        with self._lock:
            return [body for p, body in self._bodies if path in (None, p)]

    def keys(self) -> list[str | None]:
        """Return the bearer token of each request received, oldest first."""
        with self._lock:
            return list(self._keys)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        auth = request.headers.get("Authorization")
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            body = {"<not json>": request.get_data(as_text=True)}
        with self._lock:
            self._bodies.append((path, body))
            self._keys.append(auth.removeprefix("Bearer ") if auth else None)
            queue = self._queues.get(path)
            reply = queue.popleft() if queue else self._fallback.get(path)
            if reply is None:
                self.unexpected.append(path)
        if reply is None:
            return error_reply(500, f"nothing scripted for {path}")(self, request)
        return reply(self, request)


# --- replies ---------------------------------------------------------------


def json_reply(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Reply:
    """Reply with a JSON body."""

    def reply(server: OpenAIServer, request: Request) -> Response:
        return Response(
            json.dumps(body),
            status=status,
            headers=headers,
            content_type="application/json",
        )

    return reply


def error_reply(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Reply with an OpenAI-style error body and ``status``."""
    error = {"message": message, "type": type_, "param": None, "code": code}
    return json_reply({"error": error}, status, headers)


def _frame(event: dict[str, Any] | str) -> bytes:
    """Return one SSE event: a JSON object as a data line, or raw text."""
    if isinstance(event, str):
        text = event
    else:
        text = "data: " + json.dumps(event)
    return (text.rstrip("\n") + "\n\n").encode()


def sse_reply(
    events: Iterable[dict[str, Any] | str],
    *,
    done: bool = True,
    cut: int | None = None,
    hold: int | None = None,
) -> Reply:
    """Reply with a server-sent-event stream, one chunk of HTTP per event.

    ``events`` are JSON objects (sent as ``data:`` lines) or raw SSE text
    (comments, ``event:`` lines).  ``done`` ends with ``data: [DONE]``.
    ``cut=n`` drops the connection after ``n`` events, without the final
    chunk of the chunked body, as a dying server or proxy does.  ``hold=n``
    stops after ``n`` events until the test sets the server's ``release``.
    """
    frames = [_frame(event) for event in events]
    if done:
        frames.append(b"data: [DONE]\n\n")
    return _stream_reply(frames, cut=cut, hold=hold)


def _stream_reply(
    frames: list[bytes], *, cut: int | None = None, hold: int | None = None
) -> Reply:
    def reply(server: OpenAIServer, request: Request) -> Response:
        release = server.release
        sock = request.environ.get("werkzeug.socket")

        def body() -> Iterator[bytes]:
            for number, frame in enumerate(frames):
                if number == cut:
                    _drop(sock)
                    return
                if number == hold:
                    release.wait(HOLD_LIMIT)
                yield frame
            if cut is not None and cut >= len(frames):
                _drop(sock)

        return Response(body(), content_type="text/event-stream")

    return reply


def _drop(sock: socket.socket | None) -> None:
    """Close the connection under werkzeug's feet, mid-body."""
    if sock is None:
        raise ConnectionAbortedError("the stream is cut here")
    sock.shutdown(socket.SHUT_RDWR)


def held(delay_reply: Reply) -> Reply:
    """Reply with ``delay_reply`` only once the test sets ``release``.

    Used to make a client time out: the test's timeout passes first, and the
    reply is let go when the test ends.
    """

    def reply(server: OpenAIServer, request: Request) -> Response:
        server.release.wait(HOLD_LIMIT)
        return delay_reply(server, request)

    return reply


def refuses_stream_options(then: Reply) -> Reply:
    """Reply 400 to a request carrying ``stream_options``, else with ``then``."""

    def reply(server: OpenAIServer, request: Request) -> Response:
        if "stream_options" in json.loads(request.get_data() or b"{}"):
            return error_reply(
                400, "Unrecognized request argument supplied: stream_options"
            )(server, request)
        return then(server, request)

    return reply


# --- canned bodies ---------------------------------------------------------


def chat_body(
    text: str,
    *,
    id: str = "chatcmpl-1",
    model: str = "gpt-test",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a Chat Completions response body."""
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chat_chunks(
    words: list[str],
    *,
    id: str = "chatcmpl-s1",
    model: str = "gpt-test",
    usage: dict[str, Any] | None = None,
    finish: bool = True,
) -> list[dict[str, Any]]:
    """Return the chunks of a Chat Completions stream, OpenAI style.

    Every chunk carries ``"usage": null``; with ``usage`` a last chunk with
    empty ``choices`` carries it, after the one with the finish reason.
    """

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        return {
            "id": id,
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": choices,
            "usage": usage,
        }

    chunks = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        *(
            chunk([{"index": 0, "delta": {"content": word}, "finish_reason": None}])
            for word in words
        ),
    ]
    if finish:
        chunks.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage is not None:
        chunks.append(chunk([], usage))
    return chunks


def responses_body(
    text: str,
    *,
    id: str = "resp_1",
    model: str = "gpt-test",
    usage: dict[str, Any] | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    """Return a Responses API response body."""
    return {
        "id": id,
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": model,
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": usage,
    }


def responses_events(
    words: list[str],
    *,
    id: str = "resp_s1",
    model: str = "gpt-test",
    usage: dict[str, Any] | None = None,
) -> list[dict[str, Any] | str]:
    """Return the events of a Responses API stream, with ``event:`` lines."""
    text = "".join(words)
    start = responses_body("", id=id, model=model, status="in_progress")
    start["output"] = []
    final = responses_body(text, id=id, model=model, usage=usage)

    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}"

    return [
        event("response.created", response=start),
        event("response.in_progress", response=start),
        *(
            event(
                "response.output_text.delta",
                item_id="msg_1",
                output_index=0,
                content_index=0,
                delta=word,
            )
            for word in words
        ),
        event("response.completed", response=final),
    ]


# --- the recordings --------------------------------------------------------


@dataclass(frozen=True)
class Interaction:
    """One recorded API call: its response, and the usage it must give."""

    file: str  #: the path under the real-data folder, as expected.json names it
    index: int  #: its place among the file's interactions
    api: str  #: "chat" or "responses"
    stream: bool
    status: int
    body: bytes  #: the response body exactly as served (JSON or SSE text)
    usage: dict[str, int | None]  #: expected.json's figures for it

    @property
    def id(self) -> str:
        """A short name for test ids."""
        name = self.file.split("/", 1)[1].split("__", 1)[-1].rsplit(".", 1)[0]
        return f"{name}[{self.index}]"


def load_interactions(kind: str) -> list[Interaction]:
    """Return every recorded interaction of the ``kind`` folder, in order.

    ``kind`` is ``openai-chat`` or ``openai-responses``.  Skips the calling
    test (with the reason) when the real-data folder is not there.
    """
    folder = real_data() / kind
    figures = expected()
    found: list[Interaction] = []
    for path in sorted(folder.iterdir()):
        rel = f"{kind}/{path.name}"
        wanted = figures[rel]["interactions"]
        for index, (stream, status, body) in enumerate(_responses_in(path)):
            found.append(
                Interaction(
                    file=rel,
                    index=index,
                    api=wanted[index]["api"],
                    stream=stream,
                    status=status,
                    body=body,
                    usage=wanted[index]["usage"],
                )
            )
    return found


def _responses_in(path: Path) -> Iterator[tuple[bool, int, bytes]]:
    """Yield (stream, status, body) for each response recorded in ``path``."""
    if path.suffix == ".sse":
        yield True, 200, path.read_bytes()
        return
    cassette = yaml.safe_load(path.read_text())
    for interaction in cassette["interactions"]:
        response = interaction["response"]
        status = response["status"]["code"]
        if "body" in response:
            yield True, status, response["body"]["string"].encode()
        else:
            # The cassette keeps JSON bodies decoded; any JSON text of the
            # same value is the same response.
            body = json.dumps(response["parsed_body"], default=str)
            yield False, status, body.encode()


def replay(interaction: Interaction) -> Reply:
    """Reply with a recorded response: a stream event by event, or its body."""
    if not interaction.stream:

        def reply(server: OpenAIServer, request: Request) -> Response:
            return Response(
                interaction.body,
                status=interaction.status,
                content_type="application/json",
            )

        return reply
    # Serve the capture as it came: one chunk of HTTP per SSE event.
    frames = [part + b"\n\n" for part in interaction.body.split(b"\n\n") if part]
    return _stream_reply(frames)
