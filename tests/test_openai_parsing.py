"""The OpenAI parsing core: usage mapping, stream accumulation, ingest parsers.

The quirks tested here are the ones real servers show (see the real-data
folder's EXPECTED.md): empty first chunks, usage riding on content chunks,
vLLM's running usage on every chunk, usage objects with extra members, a
``tool_usage`` block next to the Responses API's usage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.dedup import DedupStage
from tests.helpers import expected
from tests.openai_server import (
    Interaction,
    chat_body,
    chat_chunks,
    load_interactions,
    responses_body,
    responses_events,
)
from vizierd.bus import Bus
from vizierd.errors import InputError
from vizierd.events import AnyEvent, Message, Outcome, Progress, UsageObserved
from vizierd.ingest.openai import (
    ChatStream,
    OpenAIChatParser,
    OpenAIResponsesParser,
    ResponseShapeError,
    ResponsesStream,
    chat_call,
    chat_usage,
    responses_call,
    responses_usage,
)
from vizierd.ledger import Ledger
from vizierd.sessions import SessionHandle, SessionSpec, run_session

FULL_CHAT_USAGE: dict[str, Any] = {
    "prompt_tokens": 687,
    "completion_tokens": 187,
    "total_tokens": 874,
    "prompt_tokens_details": {"cached_tokens": 679, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 118, "image_tokens": 0},
}


def counts(obs: UsageObserved) -> tuple[int | None, ...]:
    return (
        obs.prompt_tokens,
        obs.completion_tokens,
        obs.total_tokens,
        obs.cached_prompt_tokens,
        obs.reasoning_tokens,
    )


def figures(obs: UsageObserved) -> dict[str, int | None]:
    """Return an observation under the names EXPECTED.md uses."""
    names = ("prompt", "completion", "total", "cached", "reasoning")
    return {f"{name}_tokens": n for name, n in zip(names, counts(obs), strict=True)}


def parse(
    parser: OpenAIChatParser | OpenAIResponsesParser, data: bytes | str
) -> list[AnyEvent]:
    """Feed ``data`` the way the ingest runner does; return every event."""
    if isinstance(data, str):
        data = data.encode()
    events: list[AnyEvent] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            events += parser.feed(number, line)
    events += parser.finish()
    return events


def of(events: Iterable[AnyEvent], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


def sse(*events: dict[str, Any] | str) -> str:
    lines = []
    for event in events:
        lines.append(event if isinstance(event, str) else "data: " + json.dumps(event))
        lines.append("")
    return "\n".join(lines) + "\n"


# --- usage mapping ---------------------------------------------------------


def test_chat_usage_maps_every_count() -> None:
    obs = chat_usage(FULL_CHAT_USAGE, request_id="gen-1", model="x-ai/grok-4")

    assert counts(obs) == (687, 187, 874, 679, 118)
    assert (obs.source, obs.scope, obs.request_id, obs.model, obs.known) == (
        "openai-chat",
        "call",
        "gen-1",
        "x-ai/grok-4",
        True,
    )


@pytest.mark.parametrize(
    "details",
    [
        {},  # Ollama: no details at all
        {"prompt_tokens_details": None, "completion_tokens_details": None},
        {"prompt_tokens_details": {"audio_tokens": 0}, "completion_tokens_details": {}},
    ],
    ids=["absent", "null", "without-the-key"],
)
def test_details_the_server_did_not_send_are_none_not_zero(
    details: dict[str, Any],
) -> None:
    usage = {"prompt_tokens": 136, "completion_tokens": 15, "total_tokens": 151}

    obs = chat_usage({**usage, **details})

    assert counts(obs) == (136, 15, 151, None, None)
    assert obs.known


def test_reported_zero_details_stay_zero() -> None:
    usage = {
        "prompt_tokens": 14,
        "completion_tokens": 9,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert counts(chat_usage(usage)) == (14, 9, 23, 0, 0)


def test_extra_members_of_usage_are_ignored() -> None:
    # OpenRouter's usage carries a cost, a flag and an object holding null.
    usage = {
        **FULL_CHAT_USAGE,
        "cost": 0.00333825,
        "is_byok": False,
        "cost_details": {"upstream_inference_cost": None},
    }
    assert counts(chat_usage(usage)) == (687, 187, 874, 679, 118)


def test_missing_counts_are_none() -> None:
    obs = chat_usage({"prompt_tokens": 5})
    assert counts(obs) == (5, None, None, None, None)
    assert obs.known


@pytest.mark.parametrize("usage", [None, {}])
def test_no_usage_is_unknown(usage: dict[str, Any] | None) -> None:
    obs = chat_usage(usage, request_id="chatcmpl-1")
    assert obs.known is False
    assert obs.request_id == "chatcmpl-1"
    assert counts(obs) == (None,) * 5


@pytest.mark.parametrize(
    ("usage", "complaint"),
    [
        ({"prompt_tokens": "12"}, "usage.prompt_tokens is not an integer"),
        ({"prompt_tokens": True}, "usage.prompt_tokens is not an integer"),
        ({"total_tokens": 1.5}, "usage.total_tokens is not an integer"),
        ({"completion_tokens": -1}, "usage.completion_tokens is negative"),
        ({"prompt_tokens_details": 3}, "usage.prompt_tokens_details is not an object"),
        (
            {"prompt_tokens_details": {"cached_tokens": "x"}},
            "usage.prompt_tokens_details.cached_tokens is not an integer",
        ),
        ([1, 2], "usage is not an object"),
    ],
)
def test_malformed_usage_is_refused(usage: object, complaint: str) -> None:
    with pytest.raises(ResponseShapeError, match=complaint):
        chat_usage(usage)


def test_responses_usage_maps_input_and_output() -> None:
    usage = {
        "input_tokens": 9463,
        "input_tokens_details": {"cached_tokens": 8320, "cache_write_tokens": 0},
        "output_tokens": 582,
        "output_tokens_details": {"reasoning_tokens": 512},
        "total_tokens": 10045,
    }
    obs = responses_usage(usage, request_id="resp_1", model="gpt-5")
    assert counts(obs) == (9463, 582, 10045, 8320, 512)
    assert obs.source == "openai-responses"


def test_a_tool_usage_block_beside_the_usage_is_not_the_usage() -> None:
    body = responses_body(
        "OK",
        usage={
            "input_tokens": 4020,
            "input_tokens_details": {"cache_write_tokens": 4012, "cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 4025,
        },
    )
    body["tool_usage"] = {
        "image_gen": {
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 0,
            "input_tokens_details": {"image_tokens": 0},
        }
    }

    call = responses_call(body)

    assert counts(call.observation) == (4020, 5, 4025, 0, 0)
    assert call.text == "OK"


# --- whole bodies ----------------------------------------------------------


def test_chat_body_gives_text_id_model_and_usage() -> None:
    call = chat_call(chat_body("Paris.", id="c-1", model="m", usage=FULL_CHAT_USAGE))
    assert (call.text, call.response_id, call.model) == ("Paris.", "c-1", "m")
    assert counts(call.observation) == (687, 187, 874, 679, 118)
    assert call.observation.request_id == "c-1"


def test_chat_body_without_usage_is_unknown() -> None:
    call = chat_call(chat_body("hi"))
    assert call.observation.known is False


def test_chat_body_with_null_content_has_empty_text() -> None:
    body = chat_body("x")
    body["choices"][0]["message"]["content"] = None
    assert chat_call(body).text == ""


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"id": "x"}, "no 'choices'"),
        ({"choices": {"a": 1}}, "choices is not a list"),
        ({"choices": ["text"]}, "a choice is not an object"),
        (responses_body("x"), "this is a Responses API response"),
    ],
)
def test_wrong_chat_bodies_are_refused(body: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ResponseShapeError, match=complaint):
        chat_call(body)


def test_chat_body_is_not_a_responses_body() -> None:
    with pytest.raises(ResponseShapeError, match="Chat Completions response"):
        responses_call(chat_body("x"))


# --- streams ---------------------------------------------------------------


def test_an_empty_first_chunk_with_null_usage_is_not_a_usage_chunk() -> None:
    # Azure opens a stream with a content-filter chunk: empty id, empty
    # model, empty choices, and (with include_usage) "usage": null.
    stream = ChatStream()
    stream.add(
        {
            "choices": [],
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [{"prompt_index": 0}],
            "usage": None,
        }
    )
    for chunk in chat_chunks(["Hi"], id="chatcmpl-9", model="gpt-4o"):
        stream.add(chunk)

    assert not stream.usage_seen
    call = stream.result()
    assert (call.response_id, call.model, call.text) == ("chatcmpl-9", "gpt-4o", "Hi")
    assert call.observation.known is False
    assert call.complete


def test_usage_can_ride_on_a_chunk_with_content() -> None:
    stream = ChatStream()
    stream.add(chat_chunks(["Hel"], finish=False)[1])
    added = stream.add(
        {
            "id": "chatcmpl-s1",
            "choices": [
                {"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    assert added == "lo"
    assert stream.text == "Hello"
    assert counts(stream.observation()) == (3, 2, 5, None, None)


def test_usage_after_the_finish_on_a_chunk_with_choices() -> None:
    # OpenRouter: content chunks have no usage key at all; the usage chunk
    # comes after the finish and still has a (non-empty) choices list.
    usage: dict[str, Any] = {
        **FULL_CHAT_USAGE,
        "cost": 0.1,
        "cost_details": {"c": None},
    }
    stream = ChatStream()
    stream.add({"id": "gen-1", "choices": [{"index": 0, "delta": {"content": "I'm"}}]})
    stream.add(
        {"id": "gen-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    stream.add(
        {
            "id": "gen-1",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
            "usage": usage,
        }
    )
    assert counts(stream.observation()) == (687, 187, 874, 679, 118)
    assert stream.text == "I'm"


def test_running_usage_on_every_chunk_is_counted_once() -> None:
    stream = ChatStream()
    for n in range(27):
        stream.add(
            {
                "id": "chat-1",
                "choices": [{"index": 0, "delta": {"content": "w"}}] if n < 26 else [],
                "usage": {
                    "prompt_tokens": 46,
                    "total_tokens": 46 + min(n, 26),
                    "completion_tokens": min(n, 26),
                },
            }
        )
    assert counts(stream.observation()) == (46, 26, 72, None, None)


def test_only_the_first_choice_makes_the_text() -> None:
    stream = ChatStream()
    stream.add(
        {
            "id": "c",
            "choices": [
                {"index": 1, "delta": {"content": "other"}},
                {"index": 0, "delta": {"content": "main"}},
            ],
        }
    )
    assert stream.text == "main"


def test_a_chat_stream_refuses_responses_events() -> None:
    with pytest.raises(ResponseShapeError, match="Responses API stream event"):
        ChatStream().add({"type": "response.created", "response": {}})


def test_responses_stream_takes_usage_from_the_completed_event() -> None:
    stream = ResponsesStream()
    usage = {"input_tokens": 53, "output_tokens": 469, "total_tokens": 522}
    for line in responses_events(["6", "666"], id="resp_9", usage=usage):
        assert isinstance(line, str)
        event = json.loads(line.split("data: ", 1)[1])
        stream.add(event)
        if event["type"] == "response.in_progress":
            assert not stream.usage_seen  # created and in_progress: usage null

    call = stream.result()
    assert (call.response_id, call.model, call.text) == ("resp_9", "gpt-test", "6666")
    assert counts(call.observation) == (53, 469, 522, None, None)
    assert call.complete


def test_responses_stream_without_text_deltas_takes_the_final_text() -> None:
    stream = ResponsesStream()
    final = responses_body("from the final object", id="r")
    stream.add({"type": "response.completed", "response": final})
    assert stream.text == "from the final object"


def test_responses_stream_failure_is_reported() -> None:
    stream = ResponsesStream()
    stream.add(
        {
            "type": "response.failed",
            "response": {"id": "r", "status": "failed", "error": {"message": "boom"}},
        }
    )
    assert stream.result().error == "boom"
    assert stream.complete


@given(
    words=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=20),
    carries=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_stream_usage_is_the_last_snapshot_never_a_sum(
    words: list[str], carries: list[bool]
) -> None:
    stream = ChatStream()
    last: tuple[int, ...] | None = None
    for n, word in enumerate(words, start=1):
        chunk: dict[str, Any] = {
            "id": "c",
            "choices": [{"index": 0, "delta": {"content": word}}],
        }
        if carries[n - 1]:
            chunk["usage"] = {
                "prompt_tokens": 10,
                "completion_tokens": n,
                "total_tokens": 10 + n,
            }
            last = (10, n, 10 + n)
        else:
            chunk["usage"] = None
        stream.add(chunk)

    assert stream.text == "".join(words)
    obs = stream.observation()
    if last is None:
        assert obs.known is False
    else:
        assert counts(obs)[:3] == last


# --- the ingest parsers ----------------------------------------------------


def test_jsonl_of_bodies_is_one_call_each() -> None:
    lines = [
        json.dumps(chat_body("One.", id="c-1", model="m1", usage=FULL_CHAT_USAGE)),
        json.dumps(chat_body("Two.", id="c-2", model="m2")),
    ]
    parser = OpenAIChatParser("calls.jsonl")

    events = parse(parser, "\n".join(lines))

    assert [
        (m.role, m.content, m.request_id, m.model) for m in of(events, Message)
    ] == [
        ("assistant", "One.", "c-1", "m1"),
        ("assistant", "Two.", "c-2", "m2"),
    ]
    first, second = of(events, UsageObserved)
    assert counts(first) == (687, 187, 874, 679, 118)
    assert second.known is False
    assert parser.meta.model == "m1"
    assert parser.last_assistant == "Two."


def test_a_response_id_is_counted_once() -> None:
    line = json.dumps(chat_body("Same.", id="c-1", usage=FULL_CHAT_USAGE))
    events = parse(OpenAIChatParser("twice.jsonl"), f"{line}\n{line}\n")
    assert len(of(events, UsageObserved)) == 1
    assert len(of(events, Message)) == 1


def test_a_pretty_printed_body_is_read_whole() -> None:
    body = chat_body("Pretty.", id="c-1", usage=FULL_CHAT_USAGE)
    text = json.dumps(body, indent=2).replace("\n", "\r\n")

    events = parse(OpenAIChatParser("body.json"), text)

    [obs] = of(events, UsageObserved)
    assert counts(obs) == (687, 187, 874, 679, 118)
    assert [m.content for m in of(events, Message)] == ["Pretty."]


def test_a_pretty_printed_responses_body() -> None:
    usage = {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}
    text = json.dumps(responses_body("Hi.", usage=usage), indent=4)

    events = parse(OpenAIResponsesParser("resp.json"), text)

    [obs] = of(events, UsageObserved)
    assert counts(obs) == (4, 2, 6, None, None)


def test_sse_with_comments_and_an_empty_first_chunk() -> None:
    chunks = chat_chunks(["Hi", "!"], usage=FULL_CHAT_USAGE)
    first: dict[str, Any] = {"id": "", "model": "", "choices": [], "usage": None}
    text = sse(
        ": OPENROUTER PROCESSING", first, ": keep-alive", *chunks, "data: [DONE]"
    )
    parser = OpenAIChatParser("capture.sse")

    events = parse(parser, text)

    [obs] = of(events, UsageObserved)
    assert counts(obs) == (687, 187, 874, 679, 118)
    assert obs.request_id == "chatcmpl-s1"
    [message] = of(events, Message)
    assert (message.content, message.request_id) == ("Hi!", "chatcmpl-s1")
    assert of(events, Progress) == []


def test_sse_without_blank_lines_and_without_a_space_after_data() -> None:
    chunks = chat_chunks(["a", "b"], usage={"prompt_tokens": 1})
    text = "\n".join("data:" + json.dumps(c) for c in chunks)
    [obs] = of(parse(OpenAIChatParser("x.sse"), text), UsageObserved)
    assert obs.prompt_tokens == 1


def test_one_value_over_several_data_lines() -> None:
    body = json.dumps(chat_chunks(["a"], usage={"prompt_tokens": 7})[-1], indent=1)
    text = "\n".join("data: " + line for line in body.split("\n"))
    [obs] = of(parse(OpenAIChatParser("x.sse"), text), UsageObserved)
    assert obs.prompt_tokens == 7


def test_streams_back_to_back_are_separate_calls() -> None:
    usage_a = {"prompt_tokens": 53, "completion_tokens": 15, "total_tokens": 68}
    usage_b = {"prompt_tokens": 78, "completion_tokens": 9, "total_tokens": 87}
    a = chat_chunks(["x"], id="chatcmpl-a", usage=usage_a)
    b = chat_chunks(["y"], id="chatcmpl-b", usage=usage_b)

    with_done = parse(
        OpenAIChatParser("two.sse"), sse(*a, "data: [DONE]", *b, "data: [DONE]")
    )
    without_done = parse(OpenAIChatParser("two.sse"), sse(*a, *b))

    for events in (with_done, without_done):
        obs = of(events, UsageObserved)
        assert [(o.request_id, o.total_tokens) for o in obs] == [
            ("chatcmpl-a", 68),
            ("chatcmpl-b", 87),
        ]
        assert [m.content for m in of(events, Message)] == ["x", "y"]


def test_chunks_as_json_lines_are_a_stream() -> None:
    chunks = chat_chunks(["J", "L"], usage={"prompt_tokens": 2, "total_tokens": 4})
    events = parse(OpenAIChatParser("c.jsonl"), "\n".join(map(json.dumps, chunks)))
    [obs] = of(events, UsageObserved)
    assert (obs.prompt_tokens, obs.total_tokens) == (2, 4)
    assert [m.content for m in of(events, Message)] == ["JL"]


def test_responses_sse_with_event_lines() -> None:
    usage = {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}
    text = sse(*responses_events(["a", "b"], id="resp_a", usage=usage))
    text += sse(*responses_events(["c"], id="resp_b", usage=usage))
    parser = OpenAIResponsesParser("r.sse")

    events = parse(parser, text)

    assert [o.request_id for o in of(events, UsageObserved)] == ["resp_a", "resp_b"]
    assert [m.content for m in of(events, Message)] == ["ab", "c"]
    assert parser.last_assistant == "c"


def test_a_stream_cut_off_before_its_usage_is_unknown_and_said_so() -> None:
    chunks = chat_chunks(["a", "b"], usage=FULL_CHAT_USAGE, finish=False)[:2]
    events = parse(OpenAIChatParser("cut.sse"), sse(*chunks))
    [obs] = of(events, UsageObserved)
    assert obs.known is False
    [warning] = of(events, Progress)
    assert "ends early" in warning.message
    assert warning.message.startswith("cut.sse: ")


def test_a_recorded_error_response_is_no_call() -> None:
    error = {"error": {"message": "Rate limit reached", "type": "requests"}}
    good = chat_body("ok", id="c-1", usage=FULL_CHAT_USAGE)
    events = parse(
        OpenAIChatParser("mixed.jsonl"), f"{json.dumps(error)}\n{json.dumps(good)}"
    )
    assert len(of(events, UsageObserved)) == 1
    [warning] = of(events, Progress)
    assert "Rate limit reached" in warning.message
    assert warning.message.startswith("mixed.jsonl:1: ")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            '{"id": "c-1", "choices": []}\n{"id": oops}',
            r"^bad\.jsonl:2: not valid JSON",
        ),
        (
            '{"id": "c-1", "choices": []}\n[1, 2]',
            r"^bad\.jsonl:2: expected a JSON object",
        ),
        ('{\n  "id": \n', r"^bad\.jsonl:1: not valid JSON"),
        ("hello there", r"^bad\.jsonl:1: neither JSON nor a server-sent-event"),
        (
            'data: {"id": "c"}\nGET / HTTP/1.1',
            r"^bad\.jsonl:2: not a server-sent-event",
        ),
        ("data: {broken\n\ndata: [DONE]", r"^bad\.jsonl:1: not valid JSON"),
        ("data: 42", r"^bad\.jsonl:1: expected a JSON object"),
        ('{"id": "x", "object": "response"}', r"^bad\.jsonl:1: .*Responses API"),
        ('{"choices": [{"message": 3}]}', r"^bad\.jsonl:1: choices\[\]\.message"),
        (
            'data: {"id": "c", "choices": [], "usage": {"prompt_tokens": "1"}}',
            r"^bad\.jsonl:1: usage\.prompt_tokens is not an integer",
        ),
        ("", r"^bad\.jsonl: the input is empty"),
        (": just\n: comments", r"^bad\.jsonl: no openai-chat response"),
    ],
)
def test_bad_input_is_refused_naming_file_and_line(text: str, complaint: str) -> None:
    with pytest.raises(InputError, match=complaint):
        parse(OpenAIChatParser("bad.jsonl"), text)


def test_responses_parser_refuses_chat_chunks() -> None:
    with pytest.raises(InputError, match=r"^c\.sse:1: .*Chat Completions chunk"):
        parse(OpenAIResponsesParser("c.sse"), sse(*chat_chunks(["a"])))


# --- the recordings --------------------------------------------------------


def recorded(kind: str) -> list[Any]:
    """Parameters for every recorded interaction, or one skip with the reason."""
    try:
        found = load_interactions(kind)
    except pytest.skip.Exception as skip:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(skip)))]
    return [pytest.param(i, id=i.id) for i in found]


def parser_for(kind: str, name: str) -> OpenAIChatParser | OpenAIResponsesParser:
    if kind == "responses" or kind.startswith("openai-responses"):
        return OpenAIResponsesParser(name)
    return OpenAIChatParser(name)


@pytest.mark.parametrize(
    "interaction", [*recorded("openai-chat"), *recorded("openai-responses")]
)
def test_recorded_response_gives_the_expected_usage(interaction: Interaction) -> None:
    events = parse(parser_for(interaction.api, interaction.file), interaction.body)

    [obs] = of(events, UsageObserved)
    assert figures(obs) == interaction.usage
    assert obs.request_id is not None
    [message] = of(events, Message)
    assert message.request_id == obs.request_id
    assert of(events, Progress) == []


async def _ingest_all(tmp_path: Path, parsed: list[list[AnyEvent]]) -> Outcome:
    """Run parsed inputs' events through one session; return its outcome."""
    ledger = Ledger()
    outcomes: list[Outcome] = []

    class Keep:
        name = "keep"

        async def handle(self, event: AnyEvent) -> None:
            if isinstance(event, Outcome):
                outcomes.append(event)

    async def produce(handle: SessionHandle) -> None:
        for events in parsed:
            for event in events:
                await handle.publish(event)

    spec = SessionSpec(action="ingest", source="openai", cwd=str(tmp_path))
    async with Bus([DedupStage(), ledger]) as bus:
        bus.subscribe(Keep())
        await run_session(bus, ledger, spec, produce)
    [outcome] = outcomes
    return outcome


def recorded_files() -> list[Any]:
    try:
        found = load_interactions("openai-chat") + load_interactions("openai-responses")
    except pytest.skip.Exception as skip:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(skip)))]
    files = sorted({i.file for i in found})
    return [
        pytest.param([i for i in found if i.file == f], id=f.split("/")[1])
        for f in files
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("interactions", recorded_files())
async def test_recorded_file_total_is_the_sum_of_its_calls(
    tmp_path: Path, interactions: list[Interaction]
) -> None:
    parsed = [parse(parser_for(i.api, i.file), i.body) for i in interactions]

    outcome = await _ingest_all(tmp_path, parsed)

    usage = outcome.outcome.token_usage
    assert usage is not None
    total = expected()[interactions[0].file]["file_total_over_interactions"]
    assert {
        "prompt_tokens": usage.prompt_total,
        "completion_tokens": usage.completion_total,
        "total_tokens": usage.total,
        "cached_tokens": usage.cached_input_total,
        "reasoning_tokens": usage.reasoning_output_total,
    } == total
    assert (usage.calls, usage.unknown_calls) == (len(interactions), 0)


def test_recorded_streams_back_to_back_in_one_capture() -> None:
    found = [
        i
        for i in load_interactions("openai-chat")
        if i.file.endswith("run_stream_sync_streams_real_model.yaml")
    ]
    assert len(found) == 2

    events = parse(OpenAIChatParser("both.sse"), found[0].body + found[1].body)

    assert [figures(o) for o in of(events, UsageObserved)] == [
        found[0].usage,
        found[1].usage,
    ]
