"""Plugins: real entry points, failures that are reported and survived."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import anyio
import jsonschema
import pytest

from subscribers import session_log
from tests.helpers import REPO, Env
from vizierd.events import AnyEvent
from vizierd.ingest.runner import InputSource, ingest
from vizierd.pipeline import Pipeline
from vizierd.plugins import PluginContext

EXAMPLE = REPO / "examples" / "codex-rollout-demo.jsonl"
SESSION_SCHEMA = json.loads((REPO / "schemas" / "vizier.session.v1.json").read_text())


def install_plugins(
    site: Path, entries: dict[str, str], modules: dict[str, str]
) -> None:
    """Make a distribution with entry points importable from ``site``."""
    info = site / "vizier_test_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vizier-test-plugins\nVersion: 0.1\n"
    )
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[vizierd.subscribers]\n{lines}\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


RAISING = """
class Raiser:
    name = "raiser"
    async def handle(self, event):
        raise RuntimeError("plugin bug")

def create(context):
    return Raiser()
"""

HANGING = """
import anyio

class Hanger:
    name = "hanger"
    timeout = 0.2
    async def handle(self, event):
        await anyio.sleep_forever()

def create(context):
    return Hanger()
"""


def test_broken_raising_and_hanging_plugins_do_not_stop_the_session(env: Env) -> None:
    site = env.root / "site"
    install_plugins(
        site,
        {
            "broken": "vizier_no_such_module:create",
            "raiser": "raising_plugin:create",
            "hanger": "hanging_plugin:create",
        },
        {"raising_plugin": RAISING, "hanging_plugin": HANGING},
    )
    result = env.run(
        "--no-daemon",
        "ingest",
        "--json",
        str(EXAMPLE),
        extra_env={"PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token_usage"]["total"] == 72073
    assert "plugin broken failed to load and was skipped" in result.stderr
    assert "[subscriber] failed — raiser quarantined (RuntimeError: plugin bug)" in (
        result.stderr
    )
    assert "hanger quarantined (handler timed out" in result.stderr
    assert "Traceback" not in result.stderr
    (path,) = env.sessions()
    assert json.loads(path.read_text())["outcome"]["token_usage"]["total"] == 72073


def test_plugins_lists_states_and_failures(env: Env) -> None:
    site = env.root / "site"
    install_plugins(site, {"broken": "vizier_no_such_module:create"}, {})
    result = env.run("--no-daemon", "plugins", extra_env={"PYTHONPATH": str(site)})
    assert result.returncode == 0
    assert "session-log" in result.stdout and "journal" in result.stdout
    assert "failed to load: broken (ModuleNotFoundError" in result.stdout
    as_json = env.run(
        "--no-daemon", "plugins", "--json", extra_env={"PYTHONPATH": str(site)}
    )
    doc = json.loads(as_json.stdout)
    assert "broken" in doc["failed_plugins"]
    assert {s["name"] for s in doc["subscribers"]} >= {"journal", "session-log"}


def test_config_can_disable_a_subscriber(env: Env) -> None:
    (env.config / "config.toml").write_text("[subscribers.journal]\nenabled = false\n")
    env.run("--no-daemon", "ingest", "-q", str(EXAMPLE))
    assert not (env.state / "journal.jsonl").exists()
    assert len(env.sessions()) == 1


def test_vizier_plugins_env_limits_what_loads(env: Env) -> None:
    result = env.run(
        "--no-daemon", "plugins", "--json", extra_env={"VIZIER_PLUGINS": "session-log"}
    )
    doc = json.loads(result.stdout)
    assert [s["name"] for s in doc["subscribers"]] == ["session-log"]
    assert "dedup" in doc["stages"]


def test_bad_config_toml_is_one_clear_line(env: Env) -> None:
    (env.config / "config.toml").write_text("[subscribers\n")
    result = env.run("--no-daemon", "ingest", "-q", str(EXAMPLE))
    assert result.returncode == 2
    assert "config.toml" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_session_log_is_valid_json_after_every_write(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[dict[str, object]] = []
    real = session_log.write_atomic

    def checked(path: Path, data: bytes) -> None:
        real(path, data)
        doc = json.loads(path.read_text())
        jsonschema.validate(doc, SESSION_SCHEMA)
        writes.append(doc)

    monkeypatch.setattr(session_log, "write_atomic", checked)
    # Reports come faster than the coalescing interval; make every one count.
    monkeypatch.setattr(session_log, "WRITE_INTERVAL", 0.0)
    monkeypatch.setattr(session_log, "WRITE_COST_FACTOR", 0)

    async with Pipeline("inprocess", env.state, config={}) as pipeline:
        outcome = await ingest(
            pipeline, InputSource(name=str(EXAMPLE), path=EXAMPLE), cwd=str(env.project)
        )
    assert outcome.status == "ok"
    statuses = [w["outcome"]["status"] for w in writes]  # type: ignore[index]
    assert statuses[0] == "running" and statuses[-1] == "ok"
    assert len(writes) >= 7  # the start, six reports, the end
    assert not list(env.project.rglob("*.tmp"))


@pytest.mark.anyio
async def test_slow_subscriber_slows_nothing_it_should_not(env: Env) -> None:
    """A slow observer with drop_oldest never holds the session back."""
    release = anyio.Event()
    seen: list[AnyEvent] = []

    class Slow:
        name = "slow"
        policy = "drop_oldest"
        capacity = 2

        async def handle(self, event: AnyEvent) -> None:
            await release.wait()
            seen.append(event)

    def factory(context: PluginContext) -> Slow:
        return Slow()

    async with Pipeline(
        "inprocess", env.state, config={}, extra_plugins={"slow": factory}
    ) as pipeline:
        outcome = await ingest(
            pipeline, InputSource(name=str(EXAMPLE), path=EXAMPLE), cwd=str(env.project)
        )
        assert outcome.status == "ok"
        stats = {s["name"]: s for s in pipeline.bus.stats()}
        assert stats["slow"]["dropped"] > 0
        release.set()
    assert 0 < len(seen) <= 3


def test_contrib_budget_guard_warns_once(env: Env) -> None:
    site = env.root / "site"
    install_plugins(
        site,
        {"budget-guard": "vizier_budget_guard:create"},
        {
            "vizier_budget_guard": (
                REPO / "contrib" / "budget_guard" / "vizier_budget_guard.py"
            ).read_text()
        },
    )
    (env.config / "config.toml").write_text(
        "[subscribers.budget-guard]\nmax_tokens = 30000\n"
    )
    result = env.run(
        "--no-daemon", "ingest", "-q", str(EXAMPLE), extra_env={"PYTHONPATH": str(site)}
    )
    assert result.returncode == 0
    assert result.stderr.count("passed its budget: 32255 tokens (budget 30000)") == 1


@pytest.mark.anyio
async def test_runs_of_one_session_never_overlap_and_are_never_cut(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vizierd import pipeline as pipeline_module
    from vizierd.errors import SessionBusy
    from vizierd.events import UsageObserved
    from vizierd.sessions import SessionHandle, SessionSpec

    wait = 0.01
    monkeypatch.setattr(pipeline_module, "SAME_SESSION_WAIT", wait)
    release = anyio.Event()
    spec = SessionSpec(action="test", source="t", cwd=str(env.project), session_id="s1")

    async def long_run(handle: SessionHandle) -> None:
        await release.wait()
        await handle.observe(
            UsageObserved(
                source="t", request_id="r", prompt_tokens=1, completion_tokens=1
            )
        )

    async def short_run(handle: SessionHandle) -> None:
        raise AssertionError("must not run while the other run holds the session")

    async with Pipeline("inprocess", env.state, config={}) as pipeline:
        outcomes = []

        async def first() -> None:
            outcomes.append(await pipeline.run(spec, long_run))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(SessionBusy):
                await pipeline.run(spec, short_run)
            # The first run has now lasted far past the wait: it goes on.
            await anyio.sleep(wait * 20)
            release.set()
    (outcome,) = outcomes
    assert outcome.status == "ok"
    assert outcome.token_usage is not None and outcome.token_usage.total == 2
