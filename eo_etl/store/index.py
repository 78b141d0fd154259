"""The dataset index: GeoParquet, one row per (cell, source, version, time slice) — failures included — with the
Major TOM columns, provenance, quality, status and where the sample's pixels live. Written atomically.

``geometry`` is the footprint of the pixels in lon/lat, or the grid cell's when there are none.

Every index has the Arrow schema declared here (``INDEX_SCHEMA``), whatever its rows hold: a build whose
samples all failed, or none did, gives the same types (nullable integers, string columns), so indexes of two
builds concatenate. ``schemas/index.schema.json`` publishes it (``eo-etl schema``).
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

from eo_etl.store.location import Location

INDEX_NAME = "index.parquet"

# Where a stored sample's pixels are, beside its record; None where the format was not written.
LOCATION_COLUMNS = {
    "zarr_group": "pixels.zarr group (the source) holding the sample",
    "zarr_index": "position along the group's sample dimension",
    "video_path": "video cube folder holding the sample",
    "video_frame": "frame of the sample in that cube",
}


def _column(name: str, kind: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable=nullable, metadata={"description": description})


_TEXT, _FLOATS, _TEXTS = pa.string(), pa.list_(pa.float64()), pa.list_(pa.string())
INDEX_SCHEMA = pa.schema([
    _column("sample_id", _TEXT, "the sample's identity, CELL.SOURCE.WINDOW_START (eo_etl.sample.SampleId); "
            "every stage table is keyed by it", nullable=False),
    _column("grid_cell", _TEXT, "Major TOM cell name, e.g. 454U_120R", nullable=False),
    _column("grid_row_u", pa.int64(), "Major TOM row (signed: U north of the equator, D south)", nullable=False),
    _column("grid_col_r", pa.int64(), "Major TOM column (signed: R east of 0°, L west)", nullable=False),
    _column("source", _TEXT, "the recipe's source name", nullable=False),
    _column("product_id", _TEXT, "id of the item (scene) the pixels came from first"),
    _column("timestamp", pa.timestamp("us", tz="UTC"), "acquisition time of that item"),
    _column("cloud_cover", pa.float64(), "cloud, percent: over the cell from the quality band, else the scene's"),
    _column("scene_cloud_cover", pa.float64(), "the item's own cloud cover, percent"),
    _column("cloud_basis", _TEXT, "where cloud_cover comes from: a quality band's name (SCL, QA_PIXEL) or 'scene'"),
    _column("nodata", pa.float64(), "share of the patch's pixels with no data, 0-1"),
    _column("centre_lat", pa.float64(), "latitude of the cell's centre"),
    _column("centre_lon", pa.float64(), "longitude of the cell's centre"),
    _column("crs", _TEXT, "the pixels' CRS (the cell's UTM zone), e.g. EPSG:32719", nullable=False),
    _column("transform", _FLOATS, "affine (a, b, c, d, e, f) of the pixels; empty without pixels"),
    _column("bands", _TEXTS, "band names, in the order of the pixels"),
    _column("dtype", _TEXT, "numpy dtype of the pixels"),
    _column("height", pa.int64(), "pixel rows"),
    _column("width", pa.int64(), "pixel columns"),
    _column("nodata_value", pa.float64(), "the pixels' nodata value"),
    _column("scales", _FLOATS, "per band: physical value = pixel * scale + offset"),
    _column("offsets", _FLOATS, "per band offsets"),
    _column("items", _TEXTS, "every item the pixels came from, best first"),
    _column("hrefs", _TEXT, "JSON object: band -> the asset hrefs read"),
    _column("processing_baseline", _TEXT, "the provider's processing version of the item"),
    _column("slice_start", pa.timestamp("us", tz="UTC"), "start of the time slice the sample was chosen in "
            "(recipe time.slices); empty when the recipe does not slice time"),
    _column("slice_end", pa.timestamp("us", tz="UTC"), "end of that time slice (exclusive)"),
    _column("status", _TEXT, "ok, rejected or failed", nullable=False),
    _column("reason", _TEXT, "why a sample was rejected or failed"),
    _column("recipe_hash", _TEXT, "fingerprint of the recipe that built the row"),
    _column("version", pa.int64(), "dataset version (time window) of the row", nullable=False),
    *(_column(name, pa.int64() if name.endswith(("_index", "_frame")) else _TEXT, text)
      for name, text in LOCATION_COLUMNS.items()),
    _column("geometry", pa.binary(), "footprint of the pixels (else of the cell) in lon/lat, WKB", nullable=False),
    _column("bbox", pa.struct([(side, pa.float64()) for side in ("xmin", "ymin", "xmax", "ymax")]),
            "bounds of geometry (GeoParquet 1.1 covering)"),
])  # fmt: skip
TIME_COLUMNS = ("timestamp", "slice_start", "slice_end")
_GAPPED_INTEGERS = [field.name for field in INDEX_SCHEMA if pa.types.is_integer(field.type) and field.nullable]
_TEXT_COLUMNS = [field.name for field in INDEX_SCHEMA if field.type == _TEXT]


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
        raise ValueError(f"index columns {unknown} are not in INDEX_SCHEMA (eo_etl/store/index.py): declare them")
    frame = index.copy()
    for name in INDEX_SCHEMA.names:
        if name not in frame and name != "bbox":
            frame[name] = None
    # pandas' types too (kept in the file's metadata for pandas readers): the same whatever the rows hold
    for name in _GAPPED_INTEGERS:  # nullable integers, also where a failure leaves a gap (not floats)
        frame[name] = frame[name].astype("Int64")
    for name in _TEXT_COLUMNS:  # text or None (pandas 2's astype(str) would make None "None")
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    for name in TIME_COLUMNS:
        frame[name] = pd.to_datetime(frame[name], utc=True).astype("datetime64[us, UTC]")
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


INDEX_ROW_GROUP = 100_000


def write_index(index: gpd.GeoDataFrame, path: Location | Path | str) -> Path | str:
    target = Location.of(path)
    table = index_table(index)
    with target.staged_file() as partial:
        # ~100 MB row groups at most (rows are ~1 kB): what the Hub's viewer and range readers take in one read
        pq.write_table(table, partial, row_group_size=INDEX_ROW_GROUP, write_page_index=True)
    return target.native
