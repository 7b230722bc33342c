"""``vizier ask`` through the daemon: the same output as in process, and the
API key in no file the daemon writes.

The daemon runs for real in a subprocess; the model API is the scripted
server on 127.0.0.1.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.daemon_helpers import Daemon
from tests.helpers import Env
from tests.openai_server import CHAT, OpenAIServer, chat_chunks, error_reply, sse_reply

SECRET = "sk-test-DoNotLeak-0123456789abcdef"
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def _same_session(text: bytes) -> str:
    # An ask gets a new session id each time.
    return re.sub(r"session=\S+", "session=<id>", text.decode())


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [
        path
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes()
    ]


def test_ask_through_the_daemon_prints_the_same_and_keeps_the_key_out(
    daemon: Daemon, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.always(CHAT, sse_reply(chat_chunks(["Hel", "lo"], usage=USAGE)))
    config = {
        "OPENAI_API_KEY": SECRET,
        "OPENAI_BASE_URL": openai_server.base_url,
        "VIZIER_MODEL": "gpt-test",
    }
    # Even at DEBUG, the daemon's log must not carry the key.
    daemon.start({"VIZIER_LOG_LEVEL": "DEBUG"})
    (tmp_path / "local").mkdir()
    local = Env.make(tmp_path / "local")

    for flags in ([], ["-v"]):
        here = local.run("--no-daemon", "ask", *flags, "Say hello.", extra_env=config)
        there = daemon.run("ask", *flags, "Say hello.", extra_env=config)
        assert there.returncode == here.returncode == 0, there.stderr
        assert there.stdout.decode() == here.stdout == "Hello\n"
        assert _same_session(there.stderr) == _same_session(here.stderr.encode())

    openai_server.script(
        CHAT, error_reply(401, f"Incorrect API key provided: {SECRET}.")
    )
    refused = daemon.run("ask", "Say hello.", extra_env=config)
    assert refused.returncode == 1
    assert SECRET.encode() not in refused.stderr

    assert daemon.env.sessions()
    assert _files_holding(daemon.env.root, SECRET.encode()) == []
    assert _files_holding(daemon.env.root, SECRET[-12:].encode()) == []
