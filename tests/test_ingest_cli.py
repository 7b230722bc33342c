"""`vizier ingest` end to end, through the real command, in process."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.helpers import REPO, Env

EXAMPLE = REPO / "examples" / "codex-rollout-demo.jsonl"
OUTCOME_SCHEMA = json.loads((REPO / "schemas" / "vizier.outcome.v1.json").read_text())
SESSION_SCHEMA = json.loads((REPO / "schemas" / "vizier.session.v1.json").read_text())
SESSION_ID = "codex-0199f0a1-7c2e-7d41-9a55-3b6e2f1c0d42"

EXPECTED_STDERR = """\
[usage] token-usage — prompt=9120 (+9120) completion=412 (+412) total=9532 (+9532) cached_input=0 (+0) reasoning_output=256 (+256)
[usage] token-usage — prompt=19364 (+10244) completion=800 (+388) total=20164 (+10632) cached_input=8960 (+8960) reasoning_output=448 (+192)
[usage] token-usage — prompt=31254 (+11890) completion=1001 (+201) total=32255 (+12091) cached_input=19072 (+10112) reasoning_output=512 (+64)
[usage] token-usage — prompt=43894 (+12640) completion=1531 (+530) total=45425 (+13170) cached_input=30848 (+11776) reasoning_output=832 (+320)
[usage] token-usage — prompt=56906 (+13012) completion=1695 (+164) total=58601 (+13176) cached_input=43392 (+12544) reasoning_output=832 (+0)
[usage] token-usage — prompt=70283 (+13377) completion=1790 (+95) total=72073 (+13472) cached_input=56320 (+12928) reasoning_output=864 (+32)
ingest complete; session=codex-0199f0a1-7c2e-7d41-9a55-3b6e2f1c0d42 (tokens: prompt=70283 [+13377] completion=1790 [+95] total=72073 [+13472])
"""  # noqa: E501


def test_stderr_lines_and_epilogue_are_exact(env: Env) -> None:
    result = env.run("--no-daemon", "ingest", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == EXPECTED_STDERR


def test_verbose_adds_the_codex_style_summary(env: Env) -> None:
    result = env.run("--no-daemon", "ingest", "-v", str(EXAMPLE))
    assert result.stderr.splitlines()[-1] == (
        "Token usage: total=15,753 input=13,963 (+ 56,320 cached) output=1,790 "
        "(reasoning 864)"
    )


def test_quiet_leaves_stderr_empty_on_success(env: Env) -> None:
    result = env.run("--no-daemon", "ingest", "-q", str(EXAMPLE))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_json_prints_exactly_one_valid_outcome(env: Env) -> None:
    result = env.run("--no-daemon", "ingest", "--json", "-q", str(EXAMPLE))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    jsonschema.validate(doc, OUTCOME_SCHEMA)
    assert doc["status"] == "ok" and doc["exit_code"] == 0
    assert doc["session"]["id"] == SESSION_ID
    assert doc["token_usage"]["total"] == 72073
    assert doc["token_usage"]["cached_input_total"] == 56320
    assert doc["summary"] == "Added an entry under 'Unreleased' in CHANGELOG.md."
    assert doc["model"] == {"provider": "codex", "name": "gpt-5.3-codex"}


def test_several_inputs_print_one_document_and_epilogue_each(env: Env) -> None:
    other = env.root / "exec.jsonl"
    other.write_text(
        '{"type":"thread.started","thread_id":"t-1"}\n'
        '{"type":"turn.started"}\n'
        '{"type":"turn.completed","usage":{"input_tokens":10,'
        '"cached_input_tokens":4,"output_tokens":3}}\n'
    )
    result = env.run("--no-daemon", "ingest", "--json", str(EXAMPLE), str(other))
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["token_usage"]["total"] for d in docs] == [72073, 13]
    epilogues = [x for x in result.stderr.splitlines() if "complete;" in x]
    assert len(epilogues) == 2


def test_session_log_is_complete_and_valid(env: Env) -> None:
    env.run("--no-daemon", "ingest", "-q", str(EXAMPLE))
    (path,) = env.sessions()
    assert path.parent.name == SESSION_ID
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, SESSION_SCHEMA)
    assert doc["outcome"]["status"] == "ok"
    assert doc["outcome"]["token_usage"]["total"] == 72073
    assert len(doc["usage_reports"]) == 6
    assert doc["dedup"]["dropped"] == {"repeated": 3}
    roles = [m["role"] for m in doc["messages"]]
    assert roles.count("user") == 3 and roles.count("assistant") == 6


def test_reingest_updates_the_session_and_never_doubles(env: Env) -> None:
    first = env.run("--no-daemon", "ingest", "--json", "-q", str(EXAMPLE))
    again = env.run("--no-daemon", "ingest", "--json", "-q", str(EXAMPLE))
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["token_usage"]["total"] == b["token_usage"]["total"] == 72073
    (path,) = env.sessions()
    doc = json.loads(path.read_text())
    assert doc["outcome"]["token_usage"]["total"] == 72073
    assert len(doc["messages"]) == 9


def test_stdin_and_format_flag(env: Env) -> None:
    result = env.run(
        "--no-daemon",
        "ingest",
        "--format",
        "codex-rollout",
        "--json",
        "-",
        input=EXAMPLE.read_bytes(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token_usage"]["total"] == 72073


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the input is empty"),
        (b"\x00\x01\x02binary\x00", "binary file"),
        (b"this is not json\n", ":1:"),
        (b'{"type":"session_meta","payload":{"id":"x"}}\n{"type":"event_msg",', ":2:"),
    ],
    ids=["empty", "binary", "not-json", "truncated-last-line"],
)
def test_bad_input_is_one_clear_line_and_exit_1(
    env: Env, content: bytes, message: str
) -> None:
    bad = env.root / "bad.jsonl"
    bad.write_bytes(content)
    result = env.run("--no-daemon", "ingest", "-q", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(bad) in lines[0] and message in lines[0]


def test_bad_line_keeps_what_came_before(env: Env) -> None:
    good = EXAMPLE.read_bytes().splitlines(keepends=True)
    bad = env.root / "cut.jsonl"
    bad.write_bytes(b"".join(good[:25]) + b"{garbage\n" + b"".join(good[25:]))
    result = env.run("--no-daemon", "ingest", "--json", str(bad))
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["status"] == "error" and doc["error"]["kind"] == "input"
    assert f"{bad}:26:" in doc["error"]["message"]
    (path,) = env.sessions()
    saved = json.loads(path.read_text())
    assert saved["outcome"]["status"] == "error"
    assert saved["outcome"]["token_usage"]["total"] > 0


def test_unknown_event_types_are_skipped_and_counted(env: Env) -> None:
    lines = EXAMPLE.read_bytes().splitlines(keepends=True)
    odd = b'{"timestamp":"2026-11-28T09:20:00Z","type":"brand_new_kind","payload":{}}\n'
    path = env.root / "odd.jsonl"
    path.write_bytes(lines[0] + odd + b"".join(lines[1:]))
    result = env.run("--no-daemon", "ingest", str(path))
    assert result.returncode == 0
    assert "[ingest] skipped — 1 lines of unknown types skipped" in result.stderr


def test_missing_file_and_bad_flags_are_usage_errors(env: Env) -> None:
    missing = env.run("--no-daemon", "ingest", "nope.jsonl")
    assert missing.returncode == 2 and "nope.jsonl: no such file" in missing.stderr
    bad = env.run("--no-daemon", "ingest", "--format", "yaml", str(EXAMPLE))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_auto_detection_failure_names_the_file(env: Env) -> None:
    path = env.root / "other.jsonl"
    path.write_text('{"hello": "world"}\n')
    result = env.run("--no-daemon", "ingest", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr and "--format" in result.stderr


def test_help_explains_every_command(env: Env) -> None:
    result = env.run("--help")
    assert result.returncode == 0
    for command in ("ask", "ingest", "usage", "sessions", "watch", "plugins", "daemon"):
        assert command in result.stdout
    assert "exit codes" in result.stdout
    ingest = env.run("ingest", "--help")
    assert "--codex-home" in ingest.stdout and "--follow" in ingest.stdout


def test_project_root_is_the_git_root(env: Env) -> None:
    (env.project / ".git").mkdir()
    (env.project / ".git" / "HEAD").write_text("ref: refs/heads/trunk\n")
    sub = env.project / "src" / "deep"
    sub.mkdir(parents=True)
    import os
    import subprocess

    from tests.helpers import VIZIER

    subprocess.run(
        [*VIZIER, "--no-daemon", "ingest", "-q", str(EXAMPLE)],
        cwd=sub,
        env={**os.environ, **env.environ()},
        check=True,
    )
    (path,) = env.sessions()
    doc = json.loads(path.read_text())
    assert doc["repo"] == {"root": str(env.project), "branch": "trunk", "head": None}


def _journal(env: Env) -> list[dict[str, object]]:
    return [
        json.loads(x) for x in (env.state / "journal.jsonl").read_text().splitlines()
    ]


def test_journal_records_the_session(env: Env) -> None:
    env.run("--no-daemon", "ingest", "-q", str(EXAMPLE))
    types = [e["type"] for e in _journal(env)]
    assert types[0] == "session.started" and types[-1] == "session.ended"
    assert types.count("usage.report") == 6
    assert "text.delta" not in types


def test_an_agent_id_that_cannot_name_a_folder_is_hashed(env: Env) -> None:
    odd = env.root / "odd.jsonl"
    odd.write_text(
        '{"type":"thread.started","thread_id":"../../etc/x y"}\n'
        '{"type":"turn.completed","usage":{"input_tokens":5,'
        '"cached_input_tokens":0,"output_tokens":2}}\n'
    )
    result = env.run("--no-daemon", "ingest", "--json", "-q", str(odd))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["token_usage"]["total"] == 7
    (path,) = env.sessions()
    assert path.parent.parent == env.project / ".vizier" / "sessions"
    again = env.run("--no-daemon", "ingest", "--json", "-q", str(odd))
    assert json.loads(again.stdout)["session"]["id"] == doc["session"]["id"]
