"""The JSON Schemas kept in the repository match the Structs they come from."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO
from vizierd.schema import SCHEMAS, render_schema


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_kept_schema_has_not_drifted(name: str) -> None:
    kept = REPO / "schemas" / f"{name}.json"
    assert kept.read_bytes() == render_schema(name), (
        f"{kept} is out of date: run `python -m vizierd.schema schemas`"
    )


def test_schemas_name_their_documents() -> None:
    for name in SCHEMAS:
        doc = json.loads(render_schema(name))
        assert doc["title"] == name
        schema_field = doc["$defs"][doc["$ref"].rsplit("/", 1)[1]]["properties"]
        assert schema_field["schema"]["default"] == name
