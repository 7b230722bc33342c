"""``vizier ask``'s OpenAI backend, end to end in process.

Each test runs :func:`run_ask` inside a real session (bus, dedup stage,
ledger) against the scripted server on 127.0.0.1 and checks what the
session came to: its outcome, its token usage, and the events published.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from subscribers.dedup import DedupStage
from tests.openai_server import (
    CHAT,
    RESPONSES,
    Interaction,
    OpenAIServer,
    chat_body,
    chat_chunks,
    error_reply,
    held,
    json_reply,
    load_interactions,
    refuses_stream_options,
    replay,
    responses_body,
    responses_events,
    sse_reply,
)
from vizierd.backends.openai_backend import run_ask
from vizierd.bus import Bus
from vizierd.events import (
    AnyEvent,
    Message,
    MessageRecord,
    Outcome,
    OutcomeDoc,
    Progress,
    TextDelta,
    TokenUsage,
    UsageObserved,
    encode,
    utcnow,
)
from vizierd.ledger import Ledger
from vizierd.protocol import AskRequest
from vizierd.sessions import SessionHandle, SessionSpec, run_session

pytestmark = pytest.mark.anyio

KEY = "sk-test-never-show-me-0123456789"

CHAT_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
RESPONSES_USAGE = {
    "input_tokens": 30,
    "output_tokens": 7,
    "total_tokens": 37,
    "input_tokens_details": {"cached_tokens": 16},
    "output_tokens_details": {"reasoning_tokens": 3},
}
#: Retry at once rather than after the SDK's backoff.
RETRY_NOW = {"retry-after-ms": "1"}


class Recorder:
    """A subscriber that keeps every event it sees."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[AnyEvent] = []
        self.first_text = anyio.Event()

    async def handle(self, event: AnyEvent) -> None:
        self.events.append(event)
        if isinstance(event, TextDelta):
            self.first_text.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    def assistant(self) -> list[Message]:
        return [m for m in self.of(Message) if m.role == "assistant"]


def request(server: OpenAIServer, tmp_path: Path, **fields: Any) -> AskRequest:
    values: dict[str, Any] = {
        "id": 1,
        "cwd": str(tmp_path),
        "prompt": "Say hello.",
        "model": "gpt-test",
        "api_key": KEY,
        "base_url": server.base_url,
        "timeout": 10.0,
        "max_retries": 0,
    }
    values.update(fields)
    return AskRequest(**values)


async def ask(
    req: AskRequest,
    tmp_path: Path,
    *,
    during: Callable[[Recorder, anyio.CancelScope], Awaitable[None]] | None = None,
) -> tuple[OutcomeDoc, Recorder]:
    """Run one ask session through the real pipeline; return its outcome."""
    ledger = Ledger()
    recorder = Recorder()
    spec = SessionSpec(action="ask", source=f"openai-{req.api}", cwd=str(tmp_path))
    async with Bus([DedupStage(), ledger]) as bus:
        bus.subscribe(recorder)
        with anyio.fail_after(20):
            if during is None:
                await run_session(bus, ledger, spec, lambda h: run_ask(h, req))
            else:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(
                            run_session, bus, ledger, spec, lambda h: run_ask(h, req)
                        )
                        await during(recorder, scope)
    outcomes = recorder.of(Outcome)
    assert len(outcomes) == 1
    return outcomes[0].outcome, recorder


def figures(usage: TokenUsage | None) -> dict[str, int | None]:
    """Return a session's totals under the names EXPECTED.md uses."""
    assert usage is not None
    return {
        "prompt_tokens": usage.prompt_total,
        "completion_tokens": usage.completion_total,
        "total_tokens": usage.total,
        "cached_tokens": usage.cached_input_total,
        "reasoning_tokens": usage.reasoning_output_total,
    }


def observed(obs: UsageObserved) -> dict[str, int | None]:
    return {
        "prompt_tokens": obs.prompt_tokens,
        "completion_tokens": obs.completion_tokens,
        "total_tokens": obs.total_tokens,
        "cached_tokens": obs.cached_prompt_tokens,
        "reasoning_tokens": obs.reasoning_tokens,
    }


def assert_no_key(outcome: OutcomeDoc, recorder: Recorder) -> None:
    assert KEY not in encode(outcome).decode()
    for event in recorder.events:
        assert KEY not in encode(event).decode()


# --- answers ---------------------------------------------------------------


async def test_streamed_chat_answer_is_accounted_once(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(CHAT, sse_reply(chat_chunks(["Hel", "lo"], usage=CHAT_USAGE)))

    outcome, recorder = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.status == "ok"
    assert outcome.summary == "Hello"
    assert outcome.model is not None and outcome.model.name == "gpt-test"
    assert figures(outcome.token_usage) == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "cached_tokens": 8,
        "reasoning_tokens": 2,
    }
    assert [d.text for d in recorder.of(TextDelta)] == ["Hel", "lo"]
    [answer] = recorder.assistant()
    assert (answer.content, answer.request_id.partition("~")[0]) == (
        "Hello",
        "chatcmpl-s1",
    )
    [obs] = recorder.of(UsageObserved)
    assert (obs.source, obs.scope, obs.request_id.partition("~")[0]) == (
        "openai-chat",
        "call",
        "chatcmpl-s1",
    )

    [sent] = openai_server.bodies(CHAT)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "Say hello."}]
    assert [(m.role, m.content) for m in recorder.of(Message)][:1] == [
        ("user", "Say hello.")
    ]


async def test_running_usage_on_every_chunk_counts_once(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    # vLLM's continuous usage: a cumulative snapshot on every chunk, content
    # and usage on the same chunk, then a final chunk that repeats it.
    chunks: list[dict[str, Any]] = []
    for n, word in enumerate(["a", "b", "c"], start=1):
        usage = {"prompt_tokens": 46, "total_tokens": 46 + n, "completion_tokens": n}
        chunks.append(
            {
                "id": "chat-v1",
                "model": "llama",
                "choices": [{"index": 0, "delta": {"content": word}}],
                "usage": usage,
            }
        )
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    chunks.append({"id": "chat-v1", "model": "llama", "choices": [], "usage": usage})
    openai_server.script(CHAT, sse_reply(chunks))

    outcome, recorder = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.status == "ok"
    assert figures(outcome.token_usage) == {
        "prompt_tokens": 46,
        "completion_tokens": 3,
        "total_tokens": 49,
        "cached_tokens": None,
        "reasoning_tokens": None,
    }
    assert len(recorder.of(UsageObserved)) == 1
    assert outcome.token_usage is not None and outcome.token_usage.calls == 1


async def test_unstreamed_chat_answer(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(CHAT, json_reply(chat_body("Hi!", usage=CHAT_USAGE)))

    outcome, recorder = await ask(
        request(openai_server, tmp_path, stream=False), tmp_path
    )

    assert outcome.status == "ok"
    assert outcome.summary == "Hi!"
    assert figures(outcome.token_usage)["total_tokens"] == 17
    [sent] = openai_server.bodies(CHAT)
    assert "stream_options" not in sent
    assert not sent.get("stream")
    assert [d.text for d in recorder.of(TextDelta)] == ["Hi!"]


async def test_answer_without_usage_is_unknown_not_zero(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(CHAT, sse_reply(chat_chunks(["Hi"])))

    outcome, recorder = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.status == "ok"
    usage = outcome.token_usage
    assert usage is not None
    assert (usage.known, usage.calls, usage.unknown_calls) == (False, 1, 1)
    [obs] = recorder.of(UsageObserved)
    assert obs.known is False
    assert obs.prompt_tokens is None


async def test_streamed_responses_answer(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        RESPONSES, sse_reply(responses_events(["Hi", " there"], usage=RESPONSES_USAGE))
    )

    outcome, recorder = await ask(
        request(openai_server, tmp_path, api="responses"), tmp_path
    )

    assert outcome.status == "ok"
    assert outcome.summary == "Hi there"
    assert figures(outcome.token_usage) == {
        "prompt_tokens": 30,
        "completion_tokens": 7,
        "total_tokens": 37,
        "cached_tokens": 16,
        "reasoning_tokens": 3,
    }
    [obs] = recorder.of(UsageObserved)
    assert (obs.source, obs.request_id.partition("~")[0]) == (
        "openai-responses",
        "resp_s1",
    )
    [sent] = openai_server.bodies(RESPONSES)
    assert sent["input"] == [{"role": "user", "content": "Say hello."}]


async def test_unstreamed_responses_answer(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    body = responses_body("Done.", usage=RESPONSES_USAGE)
    # A sibling block with token-like keys must not be taken for the usage.
    body["tool_usage"] = {"image_gen": {"input_tokens": 0, "output_tokens": 0}}
    openai_server.script(RESPONSES, json_reply(body))

    outcome, _ = await ask(
        request(openai_server, tmp_path, api="responses", stream=False), tmp_path
    )

    assert outcome.status == "ok"
    assert outcome.summary == "Done."
    assert figures(outcome.token_usage)["prompt_tokens"] == 30


# --- stream_options --------------------------------------------------------


async def test_server_refusing_stream_options_gets_one_retry_without(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    stream = sse_reply(chat_chunks(["ok"]))
    openai_server.always(CHAT, refuses_stream_options(stream))

    outcome, recorder = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.status == "ok"
    assert outcome.summary == "ok"
    first, second = openai_server.bodies(CHAT)
    assert "stream_options" in first
    assert "stream_options" not in second
    [retry] = recorder.of(Progress)
    assert retry.phase == "retry"
    assert "stream_options" in retry.message
    # That server sends no usage: the call is unknown.
    assert outcome.token_usage is not None
    assert outcome.token_usage.unknown_calls == 1


async def test_a_second_400_is_not_retried_again(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.always(CHAT, error_reply(400, "messages must not be empty"))

    outcome, _ = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.status == "error"
    assert outcome.error is not None and outcome.error.kind == "backend"
    assert "HTTP 400" in outcome.error.message
    assert "messages must not be empty" in outcome.error.message
    assert len(openai_server.bodies(CHAT)) == 2


# --- failures --------------------------------------------------------------


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused(openai_server: OpenAIServer, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1"

    outcome, recorder = await ask(
        request(openai_server, tmp_path, base_url=base), tmp_path
    )

    assert outcome.status == "error"
    assert outcome.exit_code == 1
    assert outcome.error is not None and outcome.error.kind == "backend"
    assert outcome.error.message.startswith(f"cannot connect to {base}")
    assert "\n" not in outcome.error.message
    assert outcome.token_usage is None
    assert recorder.assistant() == []


async def test_timeout(openai_server: OpenAIServer, tmp_path: Path) -> None:
    openai_server.script(CHAT, held(json_reply(chat_body("late"))))

    outcome, _ = await ask(request(openai_server, tmp_path, timeout=0.3), tmp_path)

    assert outcome.status == "error"
    assert outcome.error is not None and outcome.error.kind == "backend"
    assert outcome.error.message == (
        f"the request to {openai_server.base_url} timed out after 0.3s"
    )


async def test_bad_api_key_names_the_variable_never_the_key(
    openai_server: OpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    openai_server.script(
        CHAT,
        error_reply(401, f"Incorrect API key provided: {KEY}.", code="invalid_api_key"),
    )

    outcome, recorder = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.status == "error"
    assert outcome.error is not None and outcome.error.kind == "backend"
    assert "HTTP 401" in outcome.error.message
    assert "check OPENAI_API_KEY" in outcome.error.message
    assert_no_key(outcome, recorder)
    assert KEY not in caplog.text


async def test_unknown_model_is_named(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        CHAT,
        error_reply(
            404, "The model `gpt-nope` does not exist.", code="model_not_found"
        ),
    )

    outcome, _ = await ask(request(openai_server, tmp_path, model="gpt-nope"), tmp_path)

    assert outcome.error is not None and outcome.error.kind == "backend"
    assert outcome.error.message.startswith(
        f"model 'gpt-nope' not found at {openai_server.base_url} (HTTP 404)"
    )


@pytest.mark.parametrize(
    ("status", "words"),
    [(429, "rate-limiting requests (HTTP 429) after 1 retry"), (503, "HTTP 503")],
)
async def test_rate_limits_and_server_errors_after_the_sdk_retries(
    openai_server: OpenAIServer, tmp_path: Path, status: int, words: str
) -> None:
    openai_server.always(
        CHAT, error_reply(status, "try again later", headers=RETRY_NOW)
    )

    outcome, _ = await ask(request(openai_server, tmp_path, max_retries=1), tmp_path)

    assert outcome.status == "error"
    assert outcome.error is not None and outcome.error.kind == "backend"
    assert words in outcome.error.message
    assert "after 1 retry" in outcome.error.message
    assert "try again later" in outcome.error.message
    assert len(openai_server.bodies(CHAT)) == 2


async def test_stream_cut_off_keeps_the_partial_answer(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    chunks = chat_chunks(["Hel", "lo", " world"], usage=CHAT_USAGE)
    openai_server.script(CHAT, sse_reply(chunks, cut=3))  # role, "Hel", "lo"

    outcome, recorder = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.status == "error"
    assert outcome.error is not None and outcome.error.kind == "backend"
    assert outcome.error.message.startswith(
        f"the stream from {openai_server.base_url} was cut off mid-way"
    )
    [partial] = recorder.assistant()
    assert (partial.content, partial.request_id.partition("~")[0]) == (
        "Hello",
        "chatcmpl-s1",
    )
    [obs] = recorder.of(UsageObserved)
    assert obs.known is False
    assert outcome.token_usage is not None
    assert outcome.token_usage.unknown_calls == 1


async def test_stream_ending_early_without_an_error_is_cut_off_too(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    chunks = chat_chunks(["Hel"], finish=False)
    openai_server.script(CHAT, sse_reply(chunks, done=False))

    outcome, recorder = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.error is not None
    assert "cut off mid-way" in outcome.error.message
    assert [m.content for m in recorder.assistant()] == ["Hel"]


async def test_responses_stream_cut_off(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    events = responses_events(["a", "b"], usage=RESPONSES_USAGE)
    openai_server.script(RESPONSES, sse_reply(events, cut=3, done=False))

    outcome, recorder = await ask(
        request(openai_server, tmp_path, api="responses"), tmp_path
    )

    assert outcome.error is not None and "cut off" in outcome.error.message
    [partial] = recorder.assistant()
    assert (partial.content, partial.request_id.partition("~")[0]) == ("a", "resp_s1")
    assert [o.known for o in recorder.of(UsageObserved)] == [False]


async def test_interrupted_stream_keeps_the_partial_answer(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    chunks = chat_chunks(["Hel", "lo"], usage=CHAT_USAGE)
    openai_server.script(CHAT, sse_reply(chunks, hold=2))

    async def interrupt(recorder: Recorder, scope: anyio.CancelScope) -> None:
        await recorder.first_text.wait()
        scope.cancel()

    outcome, recorder = await ask(
        request(openai_server, tmp_path), tmp_path, during=interrupt
    )

    assert outcome.status == "interrupted"
    assert outcome.exit_code == 130
    [partial] = recorder.assistant()
    assert (partial.content, partial.request_id.partition("~")[0]) == (
        "Hel",
        "chatcmpl-s1",
    )
    assert [o.known for o in recorder.of(UsageObserved)] == [False]


async def test_a_stream_with_no_events_is_no_openai_api(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(CHAT, sse_reply([], done=False))

    outcome, _ = await ask(request(openai_server, tmp_path), tmp_path)

    assert outcome.error is not None and outcome.error.kind == "backend"
    assert "without a single stream event" in outcome.error.message


async def test_no_api_key_is_a_configuration_error(
    openai_server: OpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    outcome, _ = await ask(request(openai_server, tmp_path, api_key=None), tmp_path)

    assert outcome.status == "error"
    assert outcome.error is not None and outcome.error.kind == "config"
    assert outcome.exit_code == 2
    assert "OPENAI_API_KEY" in outcome.error.message
    assert openai_server.bodies() == []


# --- continuing a session --------------------------------------------------


async def test_continuation_sends_the_earlier_messages(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        CHAT,
        sse_reply(chat_chunks(["Rome."], usage=CHAT_USAGE)),
        sse_reply(chat_chunks(["Madrid."], usage=CHAT_USAGE)),
    )
    history = [
        MessageRecord(role="system", content="Be brief.", at=utcnow()),
        MessageRecord(role="user", content="Capital of France?", at=utcnow()),
        MessageRecord(role="assistant", content="Paris.", at=utcnow()),
    ]
    published: list[AnyEvent] = []

    class Keep:
        name = "keep"

        async def handle(self, event: AnyEvent) -> None:
            published.append(event)

    async with Bus([DedupStage(), Ledger()]) as bus:
        bus.subscribe(Keep())
        handle = SessionHandle(bus, "s-1", tmp_path / "session.json", history)
        same = request(openai_server, tmp_path, prompt="And Italy?", system="Be brief.")
        await run_ask(handle, same)
        other = request(openai_server, tmp_path, prompt="Spain?", system="Be kind.")
        await run_ask(handle, other)

    first, second = openai_server.bodies(CHAT)
    earlier = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    assert first["messages"] == [*earlier, {"role": "user", "content": "And Italy?"}]
    # A new system prompt joins the conversation where it is given.
    assert second["messages"] == [
        *earlier,
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Spain?"},
    ]
    messages = [(e.role, e.content) for e in published if isinstance(e, Message)]
    assert messages == [
        ("user", "And Italy?"),
        ("assistant", "Rome."),
        ("system", "Be kind."),
        ("user", "Spain?"),
        ("assistant", "Madrid."),
    ]


# --- the recordings --------------------------------------------------------


def recorded(kind: str) -> list[Any]:
    """Parameters for every recorded interaction, or one skip with the reason."""
    try:
        found = load_interactions(kind)
    except pytest.skip.Exception as skip:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(skip)))]
    return [pytest.param(i, id=i.id) for i in found]


@pytest.mark.parametrize(
    "interaction", [*recorded("openai-chat"), *recorded("openai-responses")]
)
async def test_recorded_responses_replayed_live(
    openai_server: OpenAIServer, tmp_path: Path, interaction: Interaction
) -> None:
    path = RESPONSES if interaction.api == "responses" else CHAT
    openai_server.script(path, replay(interaction))
    req = request(
        openai_server, tmp_path, api=interaction.api, stream=interaction.stream
    )

    outcome, recorder = await ask(req, tmp_path)

    assert outcome.status == "ok", outcome.error
    [obs] = recorder.of(UsageObserved)
    assert observed(obs) == interaction.usage
    assert figures(outcome.token_usage) == interaction.usage
    [answer] = recorder.assistant()
    assert answer.request_id == obs.request_id is not None
    [sent] = openai_server.bodies(path)
    assert bool(sent.get("stream")) == interaction.stream
    assert KEY not in json.dumps(sent)
    assert msgspec.json.decode(encode(outcome))["token_usage"]["calls"] == 1
