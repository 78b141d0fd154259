"""The index made by the workers: each writes the rows of its ranges of plan rows as a part (sorted, in the
index's own schema), and the closing step merges the parts into ``index.parquet`` a grid row at a time, so no
process holds every row.

The index is sorted by source, cell name, version and sample_id (``store/index.py``: a cell's time slices in time
order). A cell's name begins with its grid row (``454U_120R``: row ``454U``), and no row's name is a prefix of
another's (each ends in U or D), so the names sort row by row: the merge takes the rows in name order and, for
each, the parts that hold it. The file is the one ``write_index`` writes from all the rows at once, byte for
byte: the same row groups (``INDEX_ROW_GROUP`` rows), and the schema's metadata (GeoParquet's bbox and geometry
types, pandas' column types) combined from the parts' footers before the first row group is written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eo_etl.store.index import INDEX_ROW_GROUP, INDEX_SCHEMA
from eo_etl.store.location import Location
from eo_etl.store.row_groups import row_groups


def grid_row(cell: str) -> str:
    """The grid row a cell's name begins with (``454U_120R`` → ``454U``)."""
    return cell.split("_", 1)[0]


def write_part(table: pa.Table, target: Location) -> list[str]:
    """A part of the index (``index_table``'s rows of some ranges), sorted as the index is; its grid rows."""
    table = table.sort_by([("source", "ascending"), ("grid_cell", "ascending"), ("version", "ascending"),
                           ("sample_id", "ascending")])  # fmt: skip
    with target.staged_file() as partial:
        pq.write_table(table, partial)
    return sorted({grid_row(cell) for cell in table.column("grid_cell").to_pylist()})


def _read(part: Location) -> pa.Table:
    """A part as written (Parquet names a list's items ``element``; Arrow, and so the index's schema, ``item``)."""
    with part.fs.open(part.path, "rb") as file:
        table = pq.read_table(file)
    fields = [field.with_type(INDEX_SCHEMA.field(field.name).type) for field in table.schema]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def _footer(part: Location) -> dict[bytes, bytes]:
    with part.fs.open(part.path, "rb") as file:
        return pq.ParquetFile(file).schema_arrow.metadata


def merged_metadata(parts: list[Location]) -> dict[bytes, bytes]:
    """The schema metadata ``write_index`` gives all the parts' rows: the total bbox, every geometry type, and
    per column the pandas type of the parts where it holds values (``empty`` only where it never does)."""
    merged: dict[bytes, bytes] | None = None
    geo = pandas = None
    for part in parts:
        metadata = _footer(part)
        part_geo, part_pandas = json.loads(metadata[b"geo"]), json.loads(metadata[b"pandas"])
        if merged is None:
            merged, geo, pandas = dict(metadata), part_geo, part_pandas
            continue
        column, other = geo["columns"]["geometry"], part_geo["columns"]["geometry"]
        column["geometry_types"] = sorted(set(column["geometry_types"]) | set(other["geometry_types"]))
        if other.get("bbox"):
            box = column.get("bbox") or other["bbox"]
            column["bbox"] = [*map(min, box[:2], other["bbox"][:2]), *map(max, box[2:], other["bbox"][2:])]
        for i, entry in enumerate(part_pandas["columns"]):
            if pandas["columns"][i]["pandas_type"] == "empty" and entry["pandas_type"] != "empty":
                pandas["columns"][i] = entry
    merged[b"geo"] = json.dumps(geo).encode()
    merged[b"pandas"] = json.dumps(pandas).encode()
    return merged


def merge_parts(parts: dict[tuple[str, str], list[Location]], target: Location) -> int:
    """Write ``target`` from the parts holding each (source, grid row); the number of rows."""
    if not parts:
        raise ValueError("no index parts to merge")
    every = sorted({part for held in parts.values() for part in held}, key=str)
    metadata = merged_metadata(every)
    uses = defaultdict(int)  # grid rows still to take from each part: it is read once and kept till then
    for held in parts.values():
        for part in held:
            uses[part] += 1
    written = 0
    with target.staged_file() as partial:
        writer = None
        for group in row_groups(_blocks(parts, uses), INDEX_ROW_GROUP):
            group = group.replace_schema_metadata(metadata)
            if writer is None:
                writer = pq.ParquetWriter(partial, group.schema, write_page_index=True)
            writer.write_table(group, row_group_size=INDEX_ROW_GROUP)  # one row group, as pq.write_table cuts it
            written += len(group)
        writer.close()
    return written


def _blocks(parts: dict[tuple[str, str], list[Location]], uses: dict[Location, int]) -> Iterator[pa.Table]:
    """Each (source, grid row)'s rows from the parts holding it, in the index's order; a part is read once and
    kept until its last grid row is taken (``uses``: how many it holds)."""
    cache: dict[Location, pa.Table] = {}
    for source, row in sorted(parts):
        tables = []
        for part in parts[source, row]:
            table = cache[part] if part in cache else cache.setdefault(part, _read(part))
            uses[part] -= 1
            if not uses[part]:
                del cache[part]
            mine = pc.and_(pc.equal(table["source"], source), pc.starts_with(table["grid_cell"], f"{row}_"))
            tables.append(table.filter(mine))
        yield pa.concat_tables(tables).sort_by(
            [("grid_cell", "ascending"), ("version", "ascending"), ("sample_id", "ascending")]
        )
