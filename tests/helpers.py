"""Helpers for tests: where the real data is, running `vizier`, fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
VIZIER = [sys.executable, "-m", "vizierd.cli"]


def real_data() -> Path:
    """Return the folder of public real logs and recordings, or skip.

    It sits next to the repository (``../shared/data/real``) wherever the
    project is checked out for CI; ``VIZIER_REAL_DATA`` overrides it.
    """
    explicit = os.environ.get("VIZIER_REAL_DATA")
    folder = Path(explicit) if explicit else REPO.parent / "shared" / "data" / "real"
    if not (folder / "expected.json").is_file():
        pytest.skip(f"real data folder not found at {folder}; set VIZIER_REAL_DATA")
    return folder


def expected() -> dict[str, Any]:
    """Return expected.json of the real data folder (or skip)."""
    data: dict[str, Any] = json.loads((real_data() / "expected.json").read_text())
    return data["files"]


@dataclass
class Env:
    """Private directories for one test."""

    root: Path
    state: Path
    config: Path
    project: Path

    @classmethod
    def make(cls, tmp_path: Path) -> Env:
        e = cls(
            root=tmp_path,
            state=tmp_path / "state",
            config=tmp_path / "config",
            project=tmp_path / "project",
        )
        for d in (e.state, e.config, e.project):
            d.mkdir()
        return e

    def environ(self) -> dict[str, str]:
        return {
            "VIZIER_STATE_DIR": str(self.state),
            "VIZIER_CONFIG_DIR": str(self.config),
            "NO_COLOR": "1",
            # A test that forgets --no-daemon must fail, not start a daemon
            # on the user's default socket.
            "VIZIER_NO_AUTOSTART": "1",
        }

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real `vizier` command in this env's project directory."""
        environ = {**os.environ, **self.environ(), **(extra_env or {})}
        return subprocess.run(
            [*VIZIER, *args],
            cwd=self.project,
            env=environ,
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sessions(self) -> list[Path]:
        """Return every session log written under the project."""
        return sorted((self.project / ".vizier" / "sessions").glob("*/session.json"))
