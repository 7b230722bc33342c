"""Conformance: the public Codex logs must give exactly their expected totals.

The logs were written by other people and live outside the repository
(``../shared/data/real``); each test skips, saying so, where that folder is
absent.  Every file goes through the real `vizier ingest` command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Env, expected, real_data

FIELDS = {
    "input_tokens": "prompt_total",
    "output_tokens": "completion_total",
    "total_tokens": "total",
    "cached_input_tokens": "cached_input_total",
    "reasoning_output_tokens": "reasoning_output_total",
}


def ingest_json(
    env: Env, *paths: Path, extra: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    result = env.run("--no-daemon", "ingest", "--json", "-q", *extra, *map(str, paths))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_usage(usage: dict[str, Any], want: dict[str, int]) -> None:
    for theirs, ours in FIELDS.items():
        if theirs in want:
            assert usage[ours] == want[theirs], (ours, usage)


def rollout_names() -> list[str]:
    try:
        return sorted(k for k in expected() if k.startswith("codex-rollout/"))
    except pytest.skip.Exception:
        return ["codex-rollout/(real data absent)"]


@pytest.mark.parametrize("name", rollout_names())
def test_rollout_totals(env: Env, name: str) -> None:
    want = expected()[name]
    (doc,) = ingest_json(env, real_data() / name)
    usage = doc["token_usage"]
    assert_usage(
        usage, want["usage_within_file_sum_of_last_token_usage_over_model_calls"]
    )
    assert usage["calls"] == want["distinct_model_calls"]
    assert usage["unknown_calls"] == 0
    assert usage["total"] != want[
        "naive_wrong_sum_of_last_token_usage_total_tokens_over_all_events"
    ] or (want["exact_reemits"] == 0)
    (path,) = env.sessions()
    dropped = json.loads(path.read_text())["dedup"]["dropped"]
    assert dropped.get("repeated", 0) + dropped.get("conflicting", 0) == (
        want["exact_reemits"] + want["non_advancing_changed_info_events"]
    )


def exec_names() -> list[str]:
    try:
        return sorted(k for k in expected() if k.startswith("codex-exec-json/"))
    except pytest.skip.Exception:
        return ["codex-exec-json/(real data absent)"]


@pytest.mark.parametrize("name", exec_names())
def test_exec_totals(env: Env, name: str) -> None:
    want = expected()[name]
    (doc,) = ingest_json(env, real_data() / name)
    final = want["final_cumulative_usage"]
    usage = doc["token_usage"]
    if final is None:
        assert usage["known"] is False and usage["total"] is None
        assert usage["unknown_calls"] == 1
        return
    assert usage["prompt_total"] == final["input_tokens"]
    assert usage["completion_total"] == final["output_tokens"]
    assert usage["cached_input_total"] == final["cached_input_tokens"]
    assert usage["total"] == final["input_tokens"] + final["output_tokens"]
    assert "reasoning_output_total" not in usage


def test_all_rollouts_in_one_command(env: Env) -> None:
    names = [n for n in rollout_names()]
    docs = ingest_json(env, *(real_data() / n for n in names))
    assert len(docs) == len(names)
    total = sum(d["token_usage"]["total"] for d in docs)
    want = sum(
        expected()[n]["usage_within_file_sum_of_last_token_usage_over_model_calls"][
            "total_tokens"
        ]
        for n in names
    )
    assert total == want


FAMILIES = [
    ("archived-fork-33ce-3869", "parent", "child"),
    ("live-fork-4d90-52bf", "parent", "child"),
]


@pytest.mark.parametrize(("family", "parent", "child"), FAMILIES)
def test_fork_with_parent_counts_only_its_own_calls(
    env: Env, family: str, parent: str, child: str
) -> None:
    folder = real_data() / "codex-forks"
    parent_name = f"codex-forks/codexbar__{family}__{parent}.jsonl"
    child_name = f"codex-forks/codexbar__{family}__{child}.jsonl"
    # Given child first: the command still takes the parent first.
    docs = ingest_json(
        env, folder / Path(child_name).name, folder / Path(parent_name).name
    )
    by_id = {d["session"]["id"]: d for d in docs}
    parent_doc = by_id["codex-parent-session"]
    child_doc = by_id["codex-child-session"]
    assert_usage(
        parent_doc["token_usage"], expected()[parent_name]["final_total_token_usage"]
    )
    assert_usage(child_doc["token_usage"], expected()[child_name]["fork_own_usage"])
    assert child_doc["token_usage"]["calls"] == expected()[child_name]["own_calls"]


def test_fork_waits_for_its_parent_then_is_recomputed(env: Env) -> None:
    folder = real_data() / "codex-forks"
    child_name = "codex-forks/codexbar__archived-fork-33ce-3869__child.jsonl"
    (alone,) = ingest_json(env, folder / Path(child_name).name)
    assert alone["token_usage"]["known"] is False
    assert alone["token_usage"]["total"] is None
    child_log = Path(alone["session"]["path"])
    assert json.loads(child_log.read_text())["waiting_for_parent"] == "parent-session"

    ingest_json(env, folder / "codexbar__archived-fork-33ce-3869__parent.jsonl")
    doc = json.loads(child_log.read_text())
    assert doc["waiting_for_parent"] is None
    assert_usage(
        doc["outcome"]["token_usage"], expected()[child_name]["fork_own_usage"]
    )
    assert doc["outcome"]["token_usage"]["unknown_calls"] == 0


def test_sibling_forks_of_a_missing_parent_are_unknown_not_guessed(env: Env) -> None:
    folder = real_data() / "codex-forks"
    docs = ingest_json(
        env,
        folder / "codexbar__missing-parent-siblings__sibling-a.jsonl",
        folder / "codexbar__missing-parent-siblings__sibling-b.jsonl",
    )
    for doc in docs:
        assert doc["token_usage"]["known"] is False
        assert doc["token_usage"]["total"] is None


def test_fork_parent_family_total_is_never_the_naive_sum(env: Env) -> None:
    folder = real_data() / "codex-forks"
    docs = ingest_json(
        env,
        folder / "codexbar__live-fork-4d90-52bf__parent.jsonl",
        folder / "codexbar__live-fork-4d90-52bf__child.jsonl",
    )
    family = sum(d["token_usage"]["total"] for d in docs)
    assert family == 24_992_392 + 1_809_519
