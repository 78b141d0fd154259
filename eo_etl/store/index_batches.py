"""The index read back a batch of rows at a time. The closing step's exports (STAC items, TACO, Major TOM's
metadata) read it so, from the merged ``index.parquet``, and the process writing them holds a batch, not a
continent's rows. An index already in memory (a GeoDataFrame) is cut into the same batches, with the same
types, so both give the same files."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from geopandas.io.arrow import _arrow_to_geopandas  # what gpd.read_parquet makes of a table

from eo_etl.store.location import Location

EXPORT_BATCH = 2048  # index rows at once (and their STAC items): a few MB at the closing step

Index = gpd.GeoDataFrame | Location  # an index in memory, or where one is written


def index_batches(index: Index, columns: Sequence[str] | None = None, batch_size: int | None = None
                  ) -> Iterator[pd.DataFrame]:  # fmt: skip
    """The index's rows in order, ``batch_size`` (``EXPORT_BATCH``) at a time, as ``gpd.read_parquet`` gives them:
    GeoDataFrames, or plain DataFrames when ``columns`` leaves out the geometry."""
    size = batch_size or EXPORT_BATCH
    if isinstance(index, pd.DataFrame):
        for start in range(0, len(index), size):
            rows = index.iloc[start : start + size]
            yield rows if columns is None else rows[list(columns)]
        return
    with index.fs.open(index.path, "rb") as file:
        source = pq.ParquetFile(file)
        metadata = source.schema_arrow.metadata  # GeoParquet's and pandas' (the columns' types)
        for batch in source.iter_batches(batch_size=size, columns=columns):
            table = pa.Table.from_batches([batch]).replace_schema_metadata(metadata)
            yield _arrow_to_geopandas(table) if "geometry" in table.column_names else table.to_pandas()
