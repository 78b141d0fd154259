"""The dataset index: GeoParquet, one row per (cell, source, version) — failures included — with the Major TOM
columns, provenance, quality, status and where the sample's pixels live. Written atomically.

``geometry`` is the footprint of the pixels in lon/lat, or the grid cell's when there are none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import pandas as pd
import shapely
from rasterio.transform import Affine, array_bounds

from eo_etl.store.location import Location

INDEX_NAME = "index.parquet"

# Where a stored sample's pixels are, beside its record; None where the format was not written.
LOCATION_COLUMNS = {
    "zarr_group": "pixels.zarr group (the source) holding the sample",
    "zarr_index": "position along the group's sample dimension",
    "video_path": "video cube folder holding the sample",
    "video_frame": "frame of the sample in that cube",
}


def index_frame(records: Iterable[dict], cells: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Sample records (``Sample.record()`` plus locations) as a GeoDataFrame, by source then cell."""
    frame = pd.DataFrame(list(records))
    if frame.empty:
        return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=4326))
    for column in LOCATION_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["zarr_index"] = frame["zarr_index"].astype("Int64")
    frame["video_frame"] = frame["video_frame"].astype("Int64")
    frame["geometry"] = _footprints(frame)
    cell_shapes = cells.set_index("grid_cell").geometry
    missing = frame["geometry"].isna()
    frame.loc[missing, "geometry"] = frame.loc[missing, "grid_cell"].map(cell_shapes)
    frame["hrefs"] = frame["hrefs"].map(json.dumps)  # band -> hrefs; bands vary by source
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    index = gpd.GeoDataFrame(frame, geometry="geometry", crs=4326)
    order = ["source", "grid_cell", *(["version"] if "version" in index else [])]
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


def write_index(index: gpd.GeoDataFrame, path: Location | Path | str) -> Path | str:
    target = Location.of(path)
    with target.staged_file() as partial:
        index.to_parquet(partial, index=False, write_covering_bbox=True)
    return target.native
