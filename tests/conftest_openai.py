"""Fixtures for tests that talk to the scripted OpenAI server.

A plugin module: load it with ``pytest_plugins = ["tests.conftest_openai"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.openai_server import OpenAIServer


@pytest.fixture(scope="session")
def openai_server_session() -> Iterator[OpenAIServer]:
    """One server for the whole run: starting and stopping costs half a second."""
    server = OpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def openai_server(openai_server_session: OpenAIServer) -> Iterator[OpenAIServer]:
    """The scripted server, with an empty script; fails the test if it was
    sent a request nothing was scripted for."""
    server = openai_server_session
    server.reset()
    yield server
    unexpected = list(server.unexpected)
    server.reset()
    assert not unexpected, f"requests nobody scripted a reply for: {unexpected}"
