"""Arrow tables of any sizes, as they come, cut into row groups of one size: what a Parquet writer needs to write
a file whose row groups do not depend on how its rows arrived (a plan made band by band, STAC items batch by
batch, an index merged part by part)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa


def row_groups(tables: Iterable[pa.Table], size: int) -> Iterator[pa.Table]:
    """The tables' rows, in order, as contiguous tables of ``size`` rows, the last fewer (or empty, when no table
    had rows: the schema is kept). Holds less than one row group past the tables given."""
    pending: list[pa.Table] = []
    rows, sent = 0, False
    for table in tables:
        pending.append(table)
        rows += len(table)
        while rows >= size:
            whole = pa.concat_tables(pending).combine_chunks()
            yield whole.slice(0, size)
            pending, rows, sent = [whole.slice(size)], rows - size, True
    if pending and (rows or not sent):
        yield pa.concat_tables(pending).combine_chunks()
