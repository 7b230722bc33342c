"""The JSON Schemas of the documents vizier writes, generated from the Structs.

``schemas/`` in the repository keeps the generated files; a test fails when
they drift from the Structs.  Regenerate them with
``python -m vizierd.schema schemas/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from vizierd.events import OUTCOME_SCHEMA, SESSION_SCHEMA, OutcomeDoc, SessionDoc

__all__ = ["SCHEMAS", "render_schema", "write_schemas"]

SCHEMAS: dict[str, type] = {OUTCOME_SCHEMA: OutcomeDoc, SESSION_SCHEMA: SessionDoc}


def render_schema(name: str) -> bytes:
    """Return the schema document for ``name`` as formatted JSON bytes."""
    schema = msgspec.json.schema(SCHEMAS[name])
    schema["$id"] = f"https://vizier.dev/schemas/{name}.json"
    schema["title"] = name
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def write_schemas(folder: Path) -> list[Path]:
    """Write every schema into ``folder``; return the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMAS:
        path = folder / f"{name}.json"
        path.write_bytes(render_schema(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_schemas(
        Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")
    ):
        sys.stdout.write(f"{written_path}\n")
