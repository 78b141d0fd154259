"""JSON Schemas generated from the code, kept in the repository's ``schemas/`` folder: the recipe (from its
pydantic models) and a row of the dataset index (from its declared Arrow schema, each column's Arrow type kept
as ``x-arrow-type``).

Editors validate recipes against ``schemas/recipe.schema.json``; a test fails when a file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from eo_etl.recipe import Recipe
from eo_etl.store.index import INDEX_SCHEMA

SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"


def generated_schemas() -> dict[str, str]:
    """File name → schema text, for every schema the package generates."""
    recipe = {"$schema": SCHEMA_URL, "$id": "recipe.schema.json", **Recipe.model_json_schema()}
    return {
        "recipe.schema.json": json.dumps(recipe, indent=2, ensure_ascii=False) + "\n",
        "index.schema.json": json.dumps(index_json_schema(), indent=2, ensure_ascii=False) + "\n",
    }


def index_json_schema() -> dict:
    """A row of ``index.parquet`` as JSON Schema: every column, its JSON type, its Arrow type, and what it holds."""
    properties = {}
    for field in INDEX_SCHEMA:
        column = _json_type(field.type)
        if field.nullable:
            column["type"] = [column["type"], "null"]
        column["x-arrow-type"] = str(field.type)
        column["description"] = field.metadata[b"description"].decode()
        properties[field.name] = column
    return {
        "$schema": SCHEMA_URL,
        "$id": "index.schema.json",
        "title": "Index row",
        "description": "One row of a dataset's index.parquet (GeoParquet): a (cell, source, version), failures "
        "included. geometry is WKB; bbox is its GeoParquet covering.",
        "type": "object",
        "properties": properties,
        "required": list(INDEX_SCHEMA.names),
        "additionalProperties": False,
    }


def _json_type(kind: pa.DataType) -> dict:
    if pa.types.is_integer(kind):
        return {"type": "integer"}
    if pa.types.is_floating(kind):
        return {"type": "number"}
    if pa.types.is_timestamp(kind):
        return {"type": "string", "format": "date-time"}
    if pa.types.is_binary(kind):
        return {"type": "string", "contentEncoding": "base64"}
    if pa.types.is_list(kind):
        return {"type": "array", "items": _json_type(kind.value_type)}
    if pa.types.is_struct(kind):
        fields = [kind.field(i) for i in range(kind.num_fields)]
        return {"type": "object", "properties": {f.name: _json_type(f.type) for f in fields}}
    return {"type": "string"}


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
