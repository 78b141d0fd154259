"""JSON Schemas generated from the pydantic models, kept in the repository's ``schemas/`` folder.

Editors validate recipes against ``schemas/recipe.schema.json``; a test fails when a file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from eo_etl.recipe import Recipe

SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"


def generated_schemas() -> dict[str, str]:
    """File name → schema text, for every schema the package generates."""
    recipe = {"$schema": SCHEMA_URL, "$id": "recipe.schema.json", **Recipe.model_json_schema()}
    return {"recipe.schema.json": json.dumps(recipe, indent=2, ensure_ascii=False) + "\n"}


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_schemas().items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


def stale_schemas(folder: Path) -> list[Path]:
    """Schema files that are missing or differ from what the models generate."""
    return [
        folder / name
        for name, text in generated_schemas().items()
        if not (folder / name).is_file() or (folder / name).read_text() != text
    ]
