"""The client half stays thin: a ``vizier`` command never loads the daemon.

A command must start about as fast as Python itself, so importing the CLI
and the client may load only the standard library, msgspec and vizier's
protocol-side modules.  Checked in a fresh interpreter, where nothing else
has been imported yet.
"""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "anyio",
    "openai",
    "platformdirs",
    "aiofiles",
    "httpx",
    "pydantic",
    "vizierd.server",
    "vizierd.daemon",
    "vizierd.pipeline",
    "vizierd.bus",
)


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def _forbidden(modules: set[str]) -> list[str]:
    return sorted(
        name
        for name in modules
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    )


def test_the_cli_and_the_client_import_nothing_of_the_daemon() -> None:
    loaded = _loaded_after("import vizierd.cli, vizierd.client, vizierd.control")
    assert _forbidden(loaded) == []


def test_building_a_request_imports_nothing_of_the_daemon() -> None:
    code = (
        "from vizierd.cli import build_parser, _request\n"
        "args = build_parser().parse_args(['usage', '--by', 'model'])\n"
        "_request(args)\n"
        "from vizierd.control import format_status\n"
        "from vizierd.client import exit_code"
    )
    assert _forbidden(_loaded_after(code)) == []
