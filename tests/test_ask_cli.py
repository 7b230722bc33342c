"""``vizier ask``, and ``vizier ingest`` of OpenAI recordings, through the real
command.

Every test runs the real ``vizier`` command in a subprocess, against the
scripted OpenAI-compatible server on 127.0.0.1 (:mod:`tests.openai_server`),
and checks what a person and a program see: stdout, stderr, the exit code,
the ``--json`` outcome and the session log on disk.

Most run ``--no-daemon``.  The ones where the daemon matters (its own
environment, Ctrl-C, the API key in its files) and the tables of cases (the
quirks of real servers, the failures, the replay of every real recording)
run through a real daemon, the way a command runs by default: one daemon
for the module, each test in a project folder of its own, so that the SDK
is loaded once rather than once per command.

Nothing waits a fixed time: a stream is held by the server until the test
lets it go, and output is polled with deadlines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.daemon_helpers import Daemon, Output
from tests.helpers import REPO, VIZIER, Env, expected, real_data
from tests.openai_server import (
    CHAT,
    RESPONSES,
    Interaction,
    OpenAIServer,
    Reply,
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

KEY = "sk-test-askcli-SECRET-9f8e7d6c5b4a39281706"
FIXTURES = REPO / "tests" / "fixtures" / "openai"
OUTCOME_SCHEMA = json.loads((REPO / "schemas" / "vizier.outcome.v1.json").read_text())
SESSION_SCHEMA = json.loads((REPO / "schemas" / "vizier.session.v1.json").read_text())

#: The usage of the contract's example line: cached and reasoning details set.
USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 80,
    "total_tokens": 1280,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 16, "audio_tokens": 0},
}
USAGE_LINE = (
    "[usage] token-usage — prompt=1200 (+1200) completion=80 (+80) "
    "total=1280 (+1280) cached_input=1024 (+1024) reasoning_output=16 (+16)"
)
EPILOGUE = "ask complete; session={} (tokens: prompt=1200 [+1200] completion=80 [+80] total=1280 [+1280])"  # noqa: E501
SUMMARY = "Token usage: total=256 input=176 (+ 1,024 cached) output=80 (reasoning 16)"
RESPONSES_USAGE = {
    "input_tokens": 30,
    "output_tokens": 7,
    "total_tokens": 37,
    "input_tokens_details": {"cached_tokens": 16},
    "output_tokens_details": {"reasoning_tokens": 3},
}
RESPONSES_LINE = (
    "[usage] token-usage — prompt=30 (+30) completion=7 (+7) total=37 (+37) "
    "cached_input=16 (+16) reasoning_output=3 (+3)"
)
UNKNOWN_LINE = "[usage] token-usage — unknown usage (backend omitted token counts)"
#: What a blank environment looks like to ``ask``: nothing set.
BLANK = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "VIZIER_MODEL": ""}
#: Retry at once rather than after the SDK's backoff.
RETRY_NOW = {"retry-after-ms": "1"}


# --- running the command ----------------------------------------------------------


def api(server: OpenAIServer) -> dict[str, str]:
    """The environment of a client configured for the scripted server."""
    return {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": server.base_url,
        "VIZIER_MODEL": "gpt-test",
        "VIZIER_MAX_RETRIES": "0",
        "VIZIER_TIMEOUT": "20",
    }


@dataclass
class Vizier:
    """Runs the real ``vizier`` command in one environment and project folder."""

    environ: dict[str, str]
    project: Path
    prefix: tuple[str, ...] = ()
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __call__(
        self,
        *args: str,
        stdin: str = "",
        extra: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``vizier [--no-daemon] ARGS``; return what it did."""
        return subprocess.run(
            [*VIZIER, *self.prefix, *args],
            cwd=cwd or self.project,
            env={**self.environ, **(extra or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``vizier [--no-daemon] ARGS``; stdout and stderr are pipes."""
        proc = subprocess.Popen(
            [*VIZIER, *self.prefix, *args],
            cwd=self.project,
            env=self.environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def session(self, session_id: str) -> dict[str, Any]:
        """Return the session log of ``session_id``, checked against its schema."""
        path = self.project / ".vizier" / "sessions" / session_id / "session.json"
        doc: dict[str, Any] = json.loads(path.read_text())
        jsonschema.validate(doc, SESSION_SCHEMA)
        return doc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def local(env: Env, openai_server: OpenAIServer) -> Iterator[Vizier]:
    """``vizier --no-daemon``, configured for the scripted server."""
    vizier = Vizier(
        {**os.environ, **env.environ(), **api(openai_server)},
        env.project,
        ("--no-daemon",),
    )
    yield vizier
    vizier.stop()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One real daemon for the module, logging at DEBUG (its log is checked
    for the key too)."""
    daemon = Daemon.make(Env.make(tmp_path_factory.mktemp("daemon")))
    try:
        daemon.start({**BLANK, "VIZIER_LOG_LEVEL": "DEBUG"})
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def remote(
    shared_daemon: Daemon, openai_server: OpenAIServer, tmp_path: Path
) -> Iterator[Vizier]:
    """``vizier`` through the module's daemon, in a project folder of its own."""
    project = tmp_path / "remote-project"
    project.mkdir()
    vizier = Vizier(shared_daemon.environ(api(openai_server)), project)
    yield vizier
    vizier.stop()


def session_of(result: subprocess.CompletedProcess[str]) -> str:
    """Return the session id the epilogue names."""
    found = re.findall(r"; session=(\S+) \(tokens: ", result.stderr)
    assert len(found) == 1, result.stderr
    session_id: str = found[0]
    return session_id


def outcome(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """Return the one ``vizier.outcome.v1`` document on stdout, validated."""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    doc: dict[str, Any] = json.loads(lines[0])
    jsonschema.validate(doc, OUTCOME_SCHEMA)
    return doc


def figures(token_usage: dict[str, Any]) -> dict[str, int | None]:
    """Return an outcome's totals under the names expected.json uses."""
    return {
        "prompt_tokens": token_usage["prompt_total"],
        "completion_tokens": token_usage["completion_total"],
        "total_tokens": token_usage["total"],
        "cached_tokens": token_usage.get("cached_input_total"),
        "reasoning_tokens": token_usage.get("reasoning_output_total"),
    }


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stream(*words: str, usage: dict[str, Any] | None = USAGE, **kw: Any) -> Reply:
    """A Chat Completions stream of ``words``, OpenAI style."""
    return sse_reply(chat_chunks(list(words), usage=usage, **kw))


# --- 1. configuration ---------------------------------------------------------------


def test_flags_beat_the_environment_which_beats_config_toml(
    env: Env, local: Vizier, openai_server: OpenAIServer
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    config = env.config / "config.toml"
    openai_server.always(CHAT, stream("ok"))

    config.write_text(
        "[ask]\n"
        f'api_key = "sk-from-toml"\nbase_url = "{openai_server.base_url}"\n'
        'model = "toml-model"\nmax_retries = 0\ntimeout = 20\n'
    )
    from_toml = local(
        "ask",
        "-q",
        "Hi.",
        extra={**BLANK, "VIZIER_MAX_RETRIES": "", "VIZIER_TIMEOUT": ""},
    )
    assert (from_toml.returncode, from_toml.stdout) == (0, "ok\n"), from_toml.stderr

    # The environment wins over the file: the file's base URL is dead.
    config.write_text(
        f'[ask]\napi_key = "sk-from-toml"\nbase_url = "{dead}"\nmodel = "toml-model"\n'
    )
    environment = {
        "OPENAI_API_KEY": "sk-from-env",
        "OPENAI_BASE_URL": openai_server.base_url,
        "VIZIER_MODEL": "env-model",
    }
    from_env = local("ask", "-q", "Hi.", extra=environment)
    assert from_env.returncode == 0, from_env.stderr
    flag = local("ask", "-q", "--model", "flag-model", "Hi.", extra=environment)
    assert flag.returncode == 0, flag.stderr

    models = [body["model"] for body in openai_server.bodies(CHAT)]
    assert models == ["toml-model", "env-model", "flag-model"]
    assert openai_server.keys() == ["sk-from-toml", "sk-from-env", "sk-from-env"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {},
            "vizier: nothing configured for ask: set OPENAI_API_KEY (and "
            "OPENAI_BASE_URL for a server other than OpenAI's) and VIZIER_MODEL, "
            "or api_key and model in [ask] of {config}",
        ),
        (
            {"VIZIER_MODEL": "gpt-test"},
            "vizier: no API configured: set OPENAI_API_KEY (and OPENAI_BASE_URL "
            "for a server other than OpenAI's), or api_key in [ask] of {config}",
        ),
        (
            {"OPENAI_API_KEY": KEY},
            "vizier: no model: pass --model, set VIZIER_MODEL, or set model in "
            "[ask] of {config}",
        ),
    ],
    ids=["nothing", "no-api", "no-model"],
)
def test_what_is_missing_is_one_line_and_exit_2(
    env: Env, local: Vizier, given: dict[str, str], message: str
) -> None:
    result = local("ask", "Hi.", extra={**BLANK, **given})

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == message.format(config=env.config / "config.toml") + "\n"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("VIZIER_TIMEOUT", "soon", "VIZIER_TIMEOUT must be a number of seconds"),
        ("VIZIER_MAX_RETRIES", "-1", "VIZIER_MAX_RETRIES must be a whole number"),
    ],
)
def test_a_bad_setting_is_a_configuration_error(
    local: Vizier, setting: str, value: str, message: str
) -> None:
    result = local("ask", "Hi.", extra={setting: value})

    assert result.returncode == 2
    assert result.stderr.startswith(f"vizier: {message}, not {value!r}")
    assert "Traceback" not in result.stderr


def test_a_daemon_started_elsewhere_uses_the_settings_of_the_client(
    daemon: Daemon, openai_server: OpenAIServer
) -> None:
    # The daemon's own environment points at a dead port, with another key
    # and model: a daemon that used it would fail or send the wrong model.
    daemon.start(
        {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1",
            "OPENAI_API_KEY": "sk-the-daemons-own",
            "VIZIER_MODEL": "daemon-model",
        }
    )
    client = Vizier(daemon.environ(api(openai_server)), daemon.env.project)
    openai_server.script(CHAT, stream("Hel", "lo"))

    result = client("ask", "Say hello.")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello\n"
    assert result.stderr == f"{USAGE_LINE}\n{EPILOGUE.format(session_of(result))}\n"
    [body] = openai_server.bodies(CHAT)
    assert body["model"] == "gpt-test"
    assert openai_server.keys() == [KEY]

    # Nor does a client with nothing configured borrow the daemon's settings.
    nothing = client("ask", "Say hello.", extra=BLANK)
    assert nothing.returncode == 2
    assert nothing.stderr.startswith("vizier: nothing configured for ask: ")
    assert len(openai_server.bodies()) == 1


# --- 2. the prompt ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "file", "stdin"])
def test_the_prompt_from_an_argument_a_file_or_stdin(
    tmp_path: Path, remote: Vizier, openai_server: OpenAIServer, how: str
) -> None:
    # The command reads the prompt and sends it to the daemon.
    prompt = "What is 2 + 2?\nAnswer with a number."
    args = {
        "argument": [prompt],
        "file": ["-f", str(tmp_path / "prompt.txt")],
        "stdin": ["-"],
    }[how]
    (tmp_path / "prompt.txt").write_text(prompt)
    openai_server.script(CHAT, stream("4"))

    result = remote("ask", "-q", *args, stdin=prompt if how == "stdin" else "")

    assert (result.returncode, result.stdout, result.stderr) == (0, "4\n", "")
    [body] = openai_server.bodies(CHAT)
    assert body["messages"] == [{"role": "user", "content": prompt}]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        ([""], "", "the prompt is empty"),
        (["  \n\t"], "", "the prompt is empty"),
        (["-"], "", "the prompt is empty"),
        (["-"], " \n", "the prompt is empty"),
        ([], "", "the prompt is empty"),
        (["-f", "{empty}"], "", "the prompt is empty"),
        (["-f", "{missing}"], "", "cannot read prompt file {missing}"),
        (["-f", "{empty}", "Hi."], "", "give the prompt as an argument or with -f"),
    ],
    ids=["empty", "blank", "stdin", "stdin-blank", "none", "file", "no-file", "both"],
)
def test_no_usable_prompt_is_a_usage_error(
    env: Env,
    local: Vizier,
    openai_server: OpenAIServer,
    args: list[str],
    stdin: str,
    message: str,
) -> None:
    paths = {"empty": env.root / "empty.txt", "missing": env.root / "missing.txt"}
    paths["empty"].write_text("")
    args = [arg.format(**paths) for arg in args]

    result = local("ask", *args, stdin=stdin)

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vizier: " + message.format(**paths))
    assert openai_server.bodies() == []
    assert env.sessions() == []


# --- 3. output ---------------------------------------------------------------------


def test_the_answer_streams_to_stdout_as_it_arrives(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    # The server sends the role chunk and "Hel", then holds the rest.
    openai_server.script(
        CHAT, sse_reply(chat_chunks(["Hel", "lo"], usage=USAGE), hold=2)
    )
    proc = local.popen("ask", "Say hello.")
    out = Output(proc.stdout)

    assert out.until(b"Hel") == b"Hel"
    assert proc.poll() is None  # still streaming: "lo" has not been sent

    openai_server.release.set()
    assert out.rest() == b"Hello\n"
    assert proc.wait(timeout=20) == 0
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert stderr.splitlines()[0] == USAGE_LINE


@pytest.mark.parametrize("verbosity", ["", "-q", "-v"])
def test_the_exact_stderr_lines(
    local: Vizier, openai_server: OpenAIServer, verbosity: str
) -> None:
    openai_server.script(CHAT, stream("Hel", "lo"))

    result = local("ask", *filter(None, [verbosity]), "Say hello.")

    assert result.returncode == 0
    assert result.stdout == "Hello\n"
    if verbosity == "-q":
        assert result.stderr == ""
        return
    lines = [USAGE_LINE, EPILOGUE.format(session_of(result))]
    if verbosity == "-v":
        lines.append(SUMMARY)
    assert result.stderr == "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("api_name", "streamed", "reply", "answer"),
    [
        ("chat", False, json_reply(chat_body("Hi!", usage=USAGE)), "Hi!"),
        (
            "responses",
            True,
            sse_reply(responses_events(["Hi", " there"], usage=RESPONSES_USAGE)),
            "Hi there",
        ),
        (
            "responses",
            False,
            json_reply(responses_body("Done.", usage=RESPONSES_USAGE)),
            "Done.",
        ),
    ],
    ids=["chat-no-stream", "responses", "responses-no-stream"],
)
def test_no_stream_and_the_responses_api(
    local: Vizier,
    openai_server: OpenAIServer,
    api_name: str,
    streamed: bool,
    reply: Reply,
    answer: str,
) -> None:
    path = RESPONSES if api_name == "responses" else CHAT
    openai_server.script(path, reply)
    flags = ["--api", api_name] + ([] if streamed else ["--no-stream"])

    result = local("ask", *flags, "Say hello.")

    assert result.returncode == 0, result.stderr
    assert result.stdout == answer + "\n"
    line = RESPONSES_LINE if api_name == "responses" else USAGE_LINE
    assert result.stderr.splitlines()[0] == line
    [body] = openai_server.bodies(path)
    assert bool(body.get("stream")) is streamed
    if api_name == "chat" and streamed:
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert "stream_options" not in body
    sent = body["input"] if api_name == "responses" else body["messages"]
    assert sent == [{"role": "user", "content": "Say hello."}]
    doc = local.session(session_of(result))
    assert doc["source"] == f"openai-{api_name}"


def test_system_prompt_is_sent_first_and_kept(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    openai_server.script(CHAT, stream("Paris."))

    result = local("ask", "--system", "Be brief.", "Capital of France?")

    assert result.returncode == 0
    [body] = openai_server.bodies(CHAT)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    doc = local.session(session_of(result))
    assert [(m["role"], m["content"]) for m in doc["messages"]] == [
        ("system", "Be brief."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
    ]


def test_json_prints_exactly_one_valid_outcome(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    openai_server.script(CHAT, stream("Hel", "lo"))

    result = local("ask", "--json", "Say hello.")

    assert result.returncode == 0
    doc = outcome(result)  # the answer itself is not printed
    assert doc["schema"] == "vizier.outcome.v1"
    assert (doc["action"], doc["status"], doc["exit_code"]) == ("ask", "ok", 0)
    assert doc["summary"] == "Hello"
    assert doc["model"] == {"provider": "openai", "name": "gpt-test"}
    assert doc["error"] is None
    assert doc["token_usage"] == {
        "prompt_total": 1200,
        "completion_total": 80,
        "total": 1280,
        "prompt_delta": 1200,
        "completion_delta": 80,
        "delta_total": 1280,
        "calls": 1,
        "unknown_calls": 0,
        "known": True,
        "cached_input_total": 1024,
        "cached_input_delta": 1024,
        "reasoning_output_total": 16,
        "reasoning_output_delta": 16,
    }
    session_id = doc["session"]["id"]
    assert result.stderr == f"{USAGE_LINE}\n{EPILOGUE.format(session_id)}\n"
    path = Path(doc["session"]["path"])
    assert path == local.project / ".vizier" / "sessions" / session_id / "session.json"
    saved = local.session(session_id)
    assert saved["outcome"]["status"] == "ok"
    assert saved["outcome"]["token_usage"] == doc["token_usage"]


# --- 4. what real servers do ------------------------------------------------------


def _chunk(
    choices: list[dict[str, Any]], usage: Any = None, **fields: Any
) -> dict[str, Any]:
    chunk = {
        "id": "chatcmpl-q1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test",
        "choices": choices,
        **fields,
    }
    if usage is not ...:
        chunk["usage"] = usage
    return chunk


def _counts(prompt: int, completion: int, **details: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **details,
    }


def _azure_first() -> list[dict[str, Any]]:
    # Azure's content-filter chunk: no id, no model, no choices, usage null.
    first = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "usage": None,
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    return [first, *chat_chunks(["Hel", "lo"], id="chatcmpl-q1", usage=USAGE)]


def _usage_on_content() -> list[dict[str, Any]]:
    # OpenRouter: the last content chunk carries the finish reason and usage,
    # and no chunk carries a usage key before it.
    first = _chunk([{"index": 0, "delta": {"content": "Hel"}}], usage=...)
    last = _chunk(
        [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
        usage=USAGE,
    )
    return [first, last]


def _continuous() -> list[dict[str, Any]]:
    # vLLM's continuous usage: a running snapshot on every chunk, then the
    # same snapshot again on a last chunk without choices.
    chunks = [
        _chunk([{"index": 0, "delta": {"content": w}}], _counts(46, n))
        for n, w in enumerate(["Hel", "lo", "!"], start=1)
    ]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    return [*chunks, _chunk([], _counts(46, 3))]


def _finished(usage: dict[str, Any] | None) -> list[dict[str, Any]]:
    return chat_chunks(["Hel", "lo"], id="chatcmpl-q1", usage=usage)


@dataclass
class Quirk:
    reply: Callable[[], Reply]
    lines: list[str]
    token_usage: dict[str, Any]
    requests: int = 1


QUIRKS = {
    "azure-first-chunk": Quirk(
        lambda: sse_reply(_azure_first()),
        [USAGE_LINE],
        {"prompt_total": 1200, "cached_input_total": 1024, "calls": 1},
    ),
    "usage-on-a-content-chunk": Quirk(
        lambda: sse_reply(_usage_on_content()),
        [USAGE_LINE],
        {"total": 1280, "reasoning_output_total": 16, "calls": 1},
    ),
    "vllm-continuous-usage": Quirk(
        lambda: sse_reply(_continuous()),
        ["[usage] token-usage — prompt=46 (+46) completion=3 (+3) total=49 (+49)"],
        {"prompt_total": 46, "completion_total": 3, "total": 49, "calls": 1},
    ),
    "no-usage": Quirk(
        lambda: sse_reply(_finished(None)),
        [UNKNOWN_LINE],
        {
            "prompt_total": None,
            "completion_total": None,
            "total": None,
            "calls": 1,
            "unknown_calls": 1,
            "known": False,
        },
    ),
    "details-absent": Quirk(
        lambda: sse_reply(_finished(_counts(10, 4))),
        ["[usage] token-usage — prompt=10 (+10) completion=4 (+4) total=14 (+14)"],
        {"total": 14, "cached_input_total": None, "reasoning_output_total": None},
    ),
    "details-null": Quirk(
        lambda: sse_reply(
            _finished(
                _counts(
                    10, 4, prompt_tokens_details=None, completion_tokens_details=None
                )
            )
        ),
        ["[usage] token-usage — prompt=10 (+10) completion=4 (+4) total=14 (+14)"],
        {"total": 14, "cached_input_total": None, "reasoning_output_total": None},
    ),
    "details-zero": Quirk(
        lambda: sse_reply(
            _finished(
                _counts(
                    10,
                    4,
                    prompt_tokens_details={"cached_tokens": 0},
                    completion_tokens_details={"reasoning_tokens": 0},
                )
            )
        ),
        [
            "[usage] token-usage — prompt=10 (+10) completion=4 (+4) total=14 (+14) "
            "cached_input=0 (+0) reasoning_output=0 (+0)"
        ],
        {"total": 14, "cached_input_total": 0, "reasoning_output_total": 0},
    ),
    "stream-options-refused": Quirk(
        lambda: refuses_stream_options(sse_reply(_finished(None))),
        [
            "[ask] retry — {base} refused the request with stream_options "
            "(HTTP 400); retrying once without it (Unrecognized request argument "
            "supplied: stream_options)",
            UNKNOWN_LINE,
        ],
        {"total": None, "calls": 1, "unknown_calls": 1},
        requests=2,
    ),
}


@pytest.mark.parametrize("name", QUIRKS)
def test_what_real_servers_send(
    remote: Vizier, openai_server: OpenAIServer, name: str
) -> None:
    quirk = QUIRKS[name]
    openai_server.always(CHAT, quirk.reply())

    result = remote("ask", "--json", "Say hello.")

    assert result.returncode == 0, result.stderr
    doc = outcome(result)
    answer = "Hello!" if name == "vllm-continuous-usage" else "Hello"
    assert doc["summary"] == answer
    usage = doc["token_usage"]
    assert {key: usage.get(key) for key in quirk.token_usage} == quirk.token_usage
    tokens = "unknown"
    if usage["known"]:
        tokens = (
            f"prompt={usage['prompt_total']} [+{usage['prompt_delta']}] "
            f"completion={usage['completion_total']} [+{usage['completion_delta']}] "
            f"total={usage['total']} [+{usage['delta_total']}]"
        )
    epilogue = f"ask complete; session={doc['session']['id']} (tokens: {tokens})"
    lines = [line.format(base=openai_server.base_url) for line in quirk.lines]
    assert result.stderr == "\n".join([*lines, epilogue]) + "\n"
    bodies = openai_server.bodies(CHAT)
    assert len(bodies) == quirk.requests
    assert "stream_options" not in bodies[-1] or quirk.requests == 1


# --- 5. continuing a session --------------------------------------------------------

FIRST_USAGE = _counts(
    1000,
    80,
    prompt_tokens_details={"cached_tokens": 0},
    completion_tokens_details={"reasoning_tokens": 16},
)


def test_a_session_continues_with_its_messages_and_its_totals(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    openai_server.script(
        CHAT,
        stream("Paris.", id="chatcmpl-1", usage=FIRST_USAGE),
        stream("Rome.", id="chatcmpl-2"),
    )
    first = local("ask", "--json", "--system", "Be brief.", "Capital of France?")
    session_id = outcome(first)["session"]["id"]

    second = local("ask", "--session", session_id, "And of Italy?")

    assert second.returncode == 0, second.stderr
    assert second.stdout == "Rome.\n"
    sent = openai_server.bodies(CHAT)[1]["messages"]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert second.stderr == (
        "[usage] token-usage — prompt=2200 (+1200) completion=160 (+80) "
        "total=2360 (+1280) cached_input=1024 (+1024) reasoning_output=32 (+16)\n"
        f"ask complete; session={session_id} (tokens: prompt=2200 [+1200] "
        "completion=160 [+80] total=2360 [+1280])\n"
    )

    doc = local.session(session_id)
    assert [(m["role"], m["content"]) for m in doc["messages"]] == [
        ("system", "Be brief."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
        ("assistant", "Rome."),
    ]
    answers = [m for m in doc["messages"] if m["role"] == "assistant"]
    assert [m["request_id"].partition("~")[0] for m in answers] == [
        "chatcmpl-1",
        "chatcmpl-2",
    ]
    assert [m["usage"]["prompt_tokens"] for m in answers] == [1000, 1200]
    assert [m["usage"]["cached_prompt_tokens"] for m in answers] == [0, 1024]
    assert [r["prompt_total"] for r in doc["usage_reports"]] == [1000, 2200]
    assert doc["outcome"]["token_usage"]["calls"] == 2
    assert doc["outcome"]["summary"] == "Rome."


def test_a_server_that_reuses_response_ids_still_counts_every_call(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    # Ollama draws its response ids from a thousand: two calls of a session
    # can share one, with identical counts, and both are billed.
    openai_server.script(
        CHAT,
        stream("One.", id="chatcmpl-7"),
        stream("Two.", id="chatcmpl-7"),
    )
    first = local("ask", "--json", "-q", "one")
    session_id = outcome(first)["session"]["id"]
    second = local("ask", "--json", "-q", "--session", session_id, "two")

    usage = outcome(second)["token_usage"]
    once = outcome(first)["token_usage"]
    assert usage["calls"] == 2
    assert usage["total"] == 2 * once["total"]


def test_a_session_continues_through_the_daemon(
    remote: Vizier, openai_server: OpenAIServer
) -> None:
    openai_server.script(
        CHAT, stream("Paris.", id="chatcmpl-1"), stream("Rome.", id="chatcmpl-2")
    )
    session_id = outcome(remote("ask", "--json", "Capital of France?"))["session"]["id"]

    second = remote("ask", "--json", "--session", session_id, "And of Italy?")

    doc = outcome(second)
    assert doc["session"]["id"] == session_id
    assert doc["token_usage"]["prompt_total"] == 2400
    assert doc["token_usage"]["prompt_delta"] == 1200
    assert len(openai_server.bodies(CHAT)[1]["messages"]) == 3


# ``--session`` with an id that names no session is an error (exit 2) that
# says where it looked, rather than the start of a new session under that
# id: the flag promises the earlier messages, and a mistyped id would
# otherwise start over silently without them.
@pytest.mark.parametrize("through", ["no-daemon", "daemon"])
def test_continuing_a_session_that_does_not_exist_is_an_error(
    local: Vizier, remote: Vizier, openai_server: OpenAIServer, through: str
) -> None:
    vizier = local if through == "no-daemon" else remote

    result = vizier("ask", "--session", "20260101T000000-deadbeef", "Hi.")

    assert result.returncode == 2
    assert result.stdout == ""
    where = vizier.project / ".vizier/sessions/20260101T000000-deadbeef/session.json"
    assert result.stderr == (
        f"vizier: no session 20260101T000000-deadbeef to continue: {where} does "
        "not exist (leave out --session to start a new session)\n"
    )
    assert openai_server.bodies() == []
    assert not (vizier.project / ".vizier").exists()


@pytest.mark.parametrize("session_id", ["../../escaped", "a/b", ".hidden", ""])
def test_a_session_id_must_be_a_plain_name(
    env: Env, local: Vizier, openai_server: OpenAIServer, session_id: str
) -> None:
    result = local("ask", "--session", session_id, "Hi.")

    assert result.returncode == 2
    assert result.stderr == (
        f"vizier: not a valid session id: {session_id!r} (use letters, digits, "
        "'.', '_' and '-', starting with a letter or digit)\n"
    )
    assert openai_server.bodies() == []
    assert list(env.root.rglob("session.json")) == []


def test_only_an_ask_session_can_be_continued(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    ingested = local("ingest", "--json", "-q", str(FIXTURES / "chat-body.json"))
    session_id = outcome(ingested)["session"]["id"]

    result = local("ask", "--session", session_id, "Hi.")

    assert result.returncode == 2
    assert result.stderr == (
        f"vizier: session {session_id} is an ingest session, not an ask session: "
        "only a conversation started by ask can be continued\n"
    )
    assert openai_server.bodies() == []


# --- 6. failures --------------------------------------------------------------------


@dataclass
class Failure:
    script: Callable[[OpenAIServer], None]
    #: How the error line starts; {base} is the server's URL, {dead} a
    #: closed port's.
    message: str
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    requests: int = 1
    partial: str | None = None  #: the text received before it failed


def _nothing(server: OpenAIServer) -> None:
    pass


FAILURES = {
    "refused": Failure(
        _nothing,
        "cannot connect to {dead} (",
        env={"OPENAI_BASE_URL": "{dead}"},
        requests=0,
    ),
    "timeout": Failure(
        lambda s: s.script(CHAT, held(json_reply(chat_body("late")))),
        "the request to {base} timed out after 1s",
        env={"VIZIER_TIMEOUT": "1"},
    ),
    "stalled-stream": Failure(
        lambda s: s.script(CHAT, sse_reply(chat_chunks(["Hel", "lo"]), hold=2)),
        "the stream from {base} stalled and timed out after 1s",
        env={"VIZIER_TIMEOUT": "1"},
        partial="Hel",
    ),
    "401": Failure(
        lambda s: s.script(
            CHAT,
            error_reply(
                401, f"Incorrect API key provided: {KEY}.", code="invalid_api_key"
            ),
        ),
        "{base} rejected the API key (HTTP 401): check OPENAI_API_KEY "
        "(Incorrect API key provided: [redacted].)",
    ),
    "404": Failure(
        lambda s: s.script(
            CHAT,
            error_reply(
                404,
                "The model `gpt-nope` does not exist or you do not have access to it.",
                code="model_not_found",
            ),
        ),
        "model 'gpt-nope' not found at {base} (HTTP 404): The model `gpt-nope` "
        "does not exist or you do not have access to it.",
        args=("--model", "gpt-nope"),
    ),
    "429": Failure(
        lambda s: s.always(
            CHAT, error_reply(429, "Rate limit reached.", headers=RETRY_NOW)
        ),
        "{base} is rate-limiting requests (HTTP 429) after 1 retry: "
        "Rate limit reached.",
        env={"VIZIER_MAX_RETRIES": "1"},
        requests=2,
    ),
    "503": Failure(
        lambda s: s.always(CHAT, error_reply(503, "Overloaded.", headers=RETRY_NOW)),
        "{base} failed with HTTP 503 after 1 retry: Overloaded.",
        env={"VIZIER_MAX_RETRIES": "1"},
        requests=2,
    ),
    "stream-cut-off": Failure(
        lambda s: s.script(CHAT, sse_reply(chat_chunks(["Hel", "lo", "!"]), cut=3)),
        "the stream from {base} was cut off mid-way (",
        partial="Hello",
    ),
}


@pytest.mark.parametrize("name", FAILURES)
def test_a_failure_is_one_line_exit_1_and_kept_in_the_session_log(
    remote: Vizier, openai_server: OpenAIServer, name: str
) -> None:
    failure = FAILURES[name]
    failure.script(openai_server)
    where = {
        "base": openai_server.base_url,
        "dead": f"http://127.0.0.1:{closed_port()}/v1",
    }
    extra = {key: value.format(**where) for key, value in failure.env.items()}

    result = remote("ask", *failure.args, "Say hello.", extra=extra)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert KEY not in result.stderr + result.stdout
    session_id = session_of(result)
    *before, error, epilogue = result.stderr.splitlines()
    assert before == ([UNKNOWN_LINE] if failure.partial else [])
    assert error.startswith("vizier: " + failure.message.format(**where))
    assert epilogue == f"ask failed; session={session_id} (tokens: unknown)"
    assert result.stdout == (f"{failure.partial}\n" if failure.partial else "")
    assert len(openai_server.bodies()) == failure.requests

    doc = remote.session(session_id)
    assert doc["outcome"]["status"] == "error"
    assert doc["outcome"]["exit_code"] == 1
    assert doc["outcome"]["error"]["kind"] == "backend"
    assert "vizier: " + doc["outcome"]["error"]["message"] == error
    said = [(m["role"], m["content"]) for m in doc["messages"]]
    kept = [("assistant", failure.partial)] if failure.partial else []
    assert said == [("user", "Say hello."), *kept]


def test_a_failed_call_keeps_the_usage_of_the_calls_before_it(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    openai_server.script(
        CHAT,
        stream("Paris.", id="chatcmpl-1"),
        sse_reply(chat_chunks(["Ro", "me", "."], id="chatcmpl-2", usage=USAGE), cut=3),
    )
    session_id = outcome(local("ask", "--json", "Capital of France?"))["session"]["id"]

    failed = local("ask", "--json", "--session", session_id, "And of Italy?")

    assert failed.returncode == 1
    doc = outcome(failed)
    assert doc["status"] == "error"
    assert doc["summary"] is None
    assert doc["error"]["kind"] == "backend"
    # The cut call's usage never came: it is unknown, and the totals are
    # those of the first call.
    usage = doc["token_usage"]
    assert (usage["prompt_total"], usage["total"]) == (1200, 1280)
    assert (usage["calls"], usage["unknown_calls"], usage["known"]) == (2, 1, False)
    assert usage["prompt_delta"] is None
    assert failed.stderr.splitlines()[-1] == (
        f"ask failed; session={session_id} (tokens: prompt=1200 [+?] "
        "completion=80 [+?] total=1280 [+?])"
    )
    saved = local.session(session_id)
    assert saved["outcome"]["token_usage"] == usage
    answers = [m for m in saved["messages"] if m["role"] == "assistant"]
    assert [(m["content"], m["usage"].get("known", True)) for m in answers] == [
        ("Paris.", True),
        ("Rome", False),
    ]


def _interrupt_mid_stream(vizier: Vizier, server: OpenAIServer) -> None:
    """Ctrl-C a streaming ``ask`` once its first words are on stdout."""
    server.script(CHAT, sse_reply(chat_chunks(["Hel", "lo"], usage=USAGE), hold=2))
    proc = vizier.popen("ask", "Say hello.")
    out = Output(proc.stdout)
    out.until(b"Hel")

    proc.send_signal(signal.SIGINT)

    assert proc.wait(timeout=20) == 130
    assert out.rest() == b"Hel\n"
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr
    *_, epilogue = stderr.splitlines()
    session_id = re.fullmatch(
        r"ask interrupted; session=(\S+) \(tokens: unknown\)", epilogue
    )
    assert session_id is not None, stderr
    doc = vizier.session(session_id.group(1))
    assert doc["outcome"]["status"] == "interrupted"
    assert doc["outcome"]["exit_code"] == 130
    assert [(m["role"], m["content"]) for m in doc["messages"]] == [
        ("user", "Say hello."),
        ("assistant", "Hel"),
    ]


def test_ctrl_c_ends_the_session_interrupted(
    local: Vizier, openai_server: OpenAIServer
) -> None:
    _interrupt_mid_stream(local, openai_server)


def test_ctrl_c_through_the_daemon_cancels_the_session(
    remote: Vizier, openai_server: OpenAIServer
) -> None:
    _interrupt_mid_stream(remote, openai_server)


# --- 7. ingesting OpenAI recordings -------------------------------------------------

#: Each fixture, its format, and what it comes to.  The JSON Lines files log
#: one response twice and the stream files hold the same stream twice: each
#: response id is counted once.
RECORDINGS = {
    "chat-body.json": (
        "openai-chat",
        1,
        "The capital of France is **Paris**.",
        {
            "prompt_tokens": 14,
            "completion_tokens": 9,
            "total_tokens": 23,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        },
    ),
    "chat-bodies.jsonl": (
        "openai-chat",
        2,
        "Rome.",
        {
            "prompt_tokens": 8051,
            "completion_tokens": 7,
            "total_tokens": 8058,
            "cached_tokens": 4012,
            "reasoning_tokens": 0,
        },
    ),
    "chat-stream.sse": (
        "openai-chat",
        1,
        "The capital is Paris.",
        {
            "prompt_tokens": 687,
            "completion_tokens": 187,
            "total_tokens": 874,
            "cached_tokens": 679,
            "reasoning_tokens": 118,
        },
    ),
    "responses-body.json": (
        "openai-responses",
        1,
        "It is sunny in Utrecht.",
        {
            "prompt_tokens": 9463,
            "completion_tokens": 660,
            "total_tokens": 10123,
            "cached_tokens": 8320,
            "reasoning_tokens": 512,
        },
    ),
    "responses-bodies.jsonl": (
        "openai-responses",
        2,
        "OK",
        {
            "prompt_tokens": 8040,
            "completion_tokens": 10,
            "total_tokens": 8050,
            "cached_tokens": 4012,
            "reasoning_tokens": 0,
        },
    ),
    "responses-stream.sse": (
        "openai-responses",
        1,
        "Six thousand six hundred sixty-six.",
        {
            "prompt_tokens": 53,
            "completion_tokens": 469,
            "total_tokens": 522,
            "cached_tokens": 0,
            "reasoning_tokens": 448,
        },
    ),
}


@pytest.mark.parametrize("how", ["named", "auto"])
@pytest.mark.parametrize("name", RECORDINGS)
def test_ingest_counts_each_recorded_response_once(
    local: Vizier, name: str, how: str
) -> None:
    fmt, calls, summary, want = RECORDINGS[name]

    named = fmt if how == "named" else "auto"
    result = local("ingest", "--format", named, "--json", "-q", str(FIXTURES / name))

    assert (result.returncode, result.stderr) == (0, "")
    doc = outcome(result)
    assert doc["status"] == "ok"
    assert doc["summary"] == summary
    assert figures(doc["token_usage"]) == want
    assert (doc["token_usage"]["calls"], doc["token_usage"]["unknown_calls"]) == (
        calls,
        0,
    )
    saved = local.session(doc["session"]["id"])
    assert saved["source"] == fmt
    assert [m["role"] for m in saved["messages"]] == ["assistant"] * calls


def test_json_lines_of_stream_chunks_with_azures_first_chunk(
    local: Vizier, tmp_path: Path
) -> None:
    # One stream's chunks, one per line: Azure's first chunk names no object
    # and has no choices; it is part of the stream, not a call of its own.
    data = (FIXTURES / "chat-stream.sse").read_text().split("data: [DONE]")[0]
    chunks = [line[6:] for line in data.splitlines() if line.startswith("data: {")]
    assert json.loads(chunks[0])["object"] == ""
    path = tmp_path / "chunks.jsonl"
    path.write_text("\n".join(chunks) + "\n")
    fmt, _, summary, want = RECORDINGS["chat-stream.sse"]

    for how in (fmt, "auto"):
        # Each in a project of its own: a second ingest would resume the first.
        project = tmp_path / how
        project.mkdir()
        result = local(
            "ingest", "--format", how, "--json", "-q", str(path), cwd=project
        )
        doc = outcome(result)

        assert doc["summary"] == summary
        assert figures(doc["token_usage"]) == want
        assert doc["token_usage"]["calls"] == 1


def test_ingesting_a_recording_again_never_doubles_it(local: Vizier) -> None:
    path = str(FIXTURES / "chat-stream.sse")
    first = outcome(local("ingest", "--json", "-q", path))
    again = outcome(local("ingest", "--json", "-q", path))

    assert again["session"]["id"] == first["session"]["id"]
    assert figures(again["token_usage"]) == figures(first["token_usage"])
    assert again["token_usage"]["calls"] == 1


# --- the real recordings --------------------------------------------------------------


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
def test_every_real_recording_through_ask_and_ingest(
    remote: Vizier,
    local: Vizier,
    openai_server: OpenAIServer,
    tmp_path: Path,
    interaction: Interaction,
) -> None:
    path = RESPONSES if interaction.api == "responses" else CHAT
    openai_server.script(path, replay(interaction))
    flags = ["--api", interaction.api]
    if not interaction.stream:
        flags.append("--no-stream")

    asked = remote("ask", "--json", "-q", *flags, "Replay the recording.")

    assert asked.returncode == 0, asked.stderr
    assert figures(outcome(asked)["token_usage"]) == interaction.usage
    [sent] = openai_server.bodies(path)
    assert bool(sent.get("stream")) == interaction.stream

    # The same response, recorded to a file and ingested; a raw capture as is.
    if interaction.file.endswith(".sse"):
        recording = real_data() / interaction.file
    else:
        recording = tmp_path / ("recording.sse" if interaction.stream else "body.json")
        recording.write_bytes(interaction.body)
    ingested = local("ingest", "--json", "-q", str(recording))

    assert ingested.returncode == 0, ingested.stderr
    doc = outcome(ingested)
    assert doc["session"]["id"].startswith(f"openai-{interaction.api}-")
    assert figures(doc["token_usage"]) == interaction.usage


def recorded_files() -> list[Any]:
    """Every real recording file whose interactions fit in one input."""
    try:
        found = load_interactions("openai-chat") + load_interactions("openai-responses")
    except pytest.skip.Exception as skip:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(skip)))]
    by_file: dict[str, list[Interaction]] = {}
    for interaction in found:
        by_file.setdefault(interaction.file, []).append(interaction)
    params = []
    for name, interactions in by_file.items():
        if len({i.stream for i in interactions}) == 1:
            params.append(pytest.param(interactions, id=name.split("__")[-1]))
    return params


@pytest.mark.parametrize("interactions", recorded_files())
def test_a_whole_recording_file_ingested_at_once(
    local: Vizier, tmp_path: Path, interactions: list[Interaction]
) -> None:
    # Every call of a cassette in one input: a JSON Lines file of its
    # bodies, or its streams back to back; each counted once.
    first = interactions[0]
    if first.stream:
        recording = tmp_path / "all.sse"
        recording.write_bytes(
            b"".join(i.body.rstrip(b"\n") + b"\n\n" for i in interactions)
        )
    else:
        recording = tmp_path / "all.jsonl"
        recording.write_bytes(b"".join(i.body + b"\n" for i in interactions))
    fmt = f"openai-{first.api}"

    result = local("ingest", "--format", fmt, "--json", "-q", str(recording))

    assert result.returncode == 0, result.stderr
    usage = outcome(result)["token_usage"]
    assert figures(usage) == expected()[first.file]["file_total_over_interactions"]
    assert (usage["calls"], usage["unknown_calls"]) == (len(interactions), 0)


# --- 8. the API key ---------------------------------------------------------------


def test_the_api_key_is_in_no_file_the_daemon_or_the_session_writes(
    shared_daemon: Daemon, remote: Vizier, openai_server: OpenAIServer
) -> None:
    openai_server.script(
        CHAT,
        stream("Hel", "lo"),
        error_reply(401, f"Incorrect API key provided: {KEY}."),
        sse_reply(chat_chunks(["Hel", "lo"]), cut=2),
        # Refused with stream_options, then answered without.
        error_reply(400, "Unrecognized request argument supplied: stream_options"),
        stream("ok"),
        # Refused twice, naming the key each time.
        error_reply(400, f"bad request from key {KEY}"),
        error_reply(400, f"bad request from key {KEY}"),
    )
    asked = remote("ask", "--json", "Say hello.")
    session_id = outcome(asked)["session"]["id"]
    results = [asked]
    for _ in range(4):
        results.append(remote("ask", "-v", "--session", session_id, "Again."))

    assert [r.returncode for r in results] == [0, 1, 1, 0, 1]
    for result in results:
        assert KEY not in result.stdout + result.stderr
    assert openai_server.keys() == [KEY] * 7
    # Everything the daemon wrote (journal, logs) and the session log, also
    # what this module's earlier tests left there with the same key.
    leaks = [
        path
        for root in (shared_daemon.env.root, remote.project)
        for path in root.rglob("*")
        if path.is_file() and KEY[-16:].encode() in path.read_bytes()
    ]
    assert leaks == []
    assert remote.session(session_id)["outcome"]["status"] == "error"
