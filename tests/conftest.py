"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import Daemon
from tests.helpers import Env

pytest_plugins = ["tests.conftest_openai"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A private state dir, config dir and project dir for one test.

    The environment is set for this process too, so in-process pipelines and
    `vizier` subprocesses see the same directories.
    """
    e = Env.make(tmp_path)
    for key, value in e.environ().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(e.project)
    yield e
    os.environ.pop("VIZIER_SOCKET", None)


@pytest.fixture
def daemon(env: Env) -> Iterator[Daemon]:
    """A short private socket path for a real daemon, stopped at teardown.

    Nothing is started: call ``daemon.start()``.  Every process the test
    starts through it, and any daemon autostarted on its socket, is stopped
    (SIGTERM, then SIGKILL) when the test ends.
    """
    d = Daemon.make(env)
    try:
        yield d
    finally:
        d.cleanup()
