"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Env


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
