"""The dataset index: GeoParquet, one row per (cell, source, version, time slice) — failures included — with the
Major TOM columns, provenance, quality, status and where the sample's pixels live. Written atomically.

``geometry`` is the footprint of the pixels in lon/lat, or the grid cell's when there are none.

Every index has the Arrow schema generated from its declared row (``INDEX_SCHEMA``, from ``index_row.IndexRow``),
whatever its rows hold: a build whose samples all failed, or none did, gives the same types (nullable integers,
string columns), so indexes of two builds concatenate. ``schemas/index.schema.json`` publishes it (``eo-etl schema``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from geopandas.io.arrow import _geopandas_to_arrow  # GeoParquet's metadata, as to_parquet writes it
from rasterio.transform import Affine, array_bounds

from eo_etl.store.index_row import INDEX_SCHEMA, IndexRow
from eo_etl.store.location import Location

INDEX_NAME = "index.parquet"

TIME_COLUMNS = ("timestamp", "slice_start", "slice_end")
_GAPPED_INTEGERS = [field.name for field in INDEX_SCHEMA if pa.types.is_integer(field.type) and field.nullable]
_TEXT_COLUMNS = [field.name for field in INDEX_SCHEMA if pa.types.is_string(field.type)]
_FRAME_COLUMNS = [name for name in INDEX_SCHEMA.names if name not in ("geometry", "bbox")]  # the frame makes those


def index_frame(rows: Iterable[IndexRow], cells: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Index rows as a GeoDataFrame, by source then cell; each footprint from its pixels, else its cell's."""
    frame = pd.DataFrame([row.to_dict(_FRAME_COLUMNS) for row in rows])
    if frame.empty:
        return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=4326))
    frame["zarr_index"] = frame["zarr_index"].astype("Int64")
    frame["video_frame"] = frame["video_frame"].astype("Int64")
    frame["geometry"] = _footprints(frame)
    cell_shapes = cells.set_index("grid_cell").geometry
    missing = frame["geometry"].isna()
    frame.loc[missing, "geometry"] = frame.loc[missing, "grid_cell"].map(cell_shapes)
    frame["hrefs"] = frame["hrefs"].map(json.dumps)  # band -> hrefs; bands vary by source
    for column in TIME_COLUMNS:
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    index = gpd.GeoDataFrame(frame, geometry="geometry", crs=4326)
    # a place's slices follow each other in time: readers take a cell's series as consecutive rows
    order = ["source", "grid_cell", *(["version"] if "version" in index else []), "sample_id"]
    return index.sort_values(order, kind="stable", ignore_index=True)


def _footprints(frame: pd.DataFrame) -> pd.Series:
    """The pixels' bounds in their UTM zone as lon/lat polygons (edges densified, so they stay true)."""
    footprints = pd.Series(None, index=frame.index, dtype=object)
    stored = frame[frame["height"].notna()]
    for crs, rows in stored.groupby("crs"):
        boxes = [
            shapely.box(*array_bounds(row.height, row.width, Affine(*row.transform[:6]))).segmentize(100.0)
            for row in rows.itertuples()
        ]
        footprints[rows.index] = gpd.GeoSeries(boxes, index=rows.index, crs=crs).to_crs(4326).array
    return footprints


def index_table(index: gpd.GeoDataFrame) -> pa.Table:
    """The index as GeoParquet's Arrow table, in ``INDEX_SCHEMA`` whatever the rows hold."""
    unknown = sorted(set(index.columns) - set(INDEX_SCHEMA.names))
    if unknown:
        raise ValueError(f"index columns {unknown} are not in INDEX_SCHEMA (eo_etl/store/index_row.py): declare them")
    frame = index.copy()
    for name in INDEX_SCHEMA.names:
        if name not in frame and name != "bbox":
            frame[name] = None
    # pandas' types too (kept in the file's metadata for pandas readers): the same whatever the rows hold
    for name in _GAPPED_INTEGERS:  # nullable integers, also where a failure leaves a gap (not floats)
        frame[name] = frame[name].astype("Int64")
    for name in _TEXT_COLUMNS:  # text or None (pandas 2's astype(str) would make None "None")
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    for name in TIME_COLUMNS:  # UTC, handed to Arrow without its zone (the cast below gives INDEX_SCHEMA's): Arrow
        # < 26 reads a zoned column by Series.values, which pandas 3.1 deprecates (it would keep the zone)
        frame[name] = pd.to_datetime(frame[name], utc=True).dt.tz_convert(None).astype("datetime64[us]")
    table = _geopandas_to_arrow(frame[[n for n in INDEX_SCHEMA.names if n != "bbox"]], index=False,
                                write_covering_bbox=True)  # fmt: skip
    produced = {field.name: field for field in table.schema}
    # geometry keeps its GeoArrow field metadata (CRS) from geopandas; every other column takes the declared type
    schema = pa.schema(
        [field.with_metadata(produced["geometry"].metadata | field.metadata) if field.name == "geometry" else field
         for field in INDEX_SCHEMA],
        metadata=table.schema.metadata,
    )  # fmt: skip
    return table.select(schema.names).cast(schema)


INDEX_ROW_GROUP = 16_384  # rows (~1 kB each): what a reader decodes to see the first rows; bounds the driver's report


def write_index(index: gpd.GeoDataFrame, path: Location | Path | str) -> Path | str:
    target = Location.of(path)
    table = index_table(index)
    with target.staged_file() as partial:
        # ~16 MB row groups (rows are ~1 kB): one range read of the Hub viewer; all the driver decodes for its report
        pq.write_table(table, partial, row_group_size=INDEX_ROW_GROUP, write_page_index=True)
    return target.native
