"""The dataset described in STAC: ``collection.json`` (extent, bands, statistics, the stores as assets) and
``items.parquet``, one item per stored sample as stac-geoparquet (one file, not a million JSON files).

Items (id: the sample id) carry the Major TOM cell (``grid:code``: ``MAJORTOM-454U_120R`` on the 10 km grid,
``MAJORTOM1000M-5327D_5052L`` on others, the form the grid extension's pattern accepts), projection
(``proj:code``, ``proj:shape``, ``proj:transform``), cloud cover, the source scenes, a ``collection`` link and
where the pixels are (``eo_etl:zarr_index`` in the ``pixels`` asset, with STAC 1.1 band objects). Both validate
against the STAC 1.1 and extension schemas, and rustac and stac-geoparquet read ``items.parquet``.

Written from the index a batch of rows at a time (``index_batches.py``): each batch's items are made, converted
to Arrow (stac-geoparquet infers a schema per batch) and spilled to a local scratch file, the extent gathered on
the way; then the batches' schemas are unified and the spilled tables read back one by one in that schema and
written in row groups of ``ITEMS_ROW_GROUP`` items. So the writer holds a batch and a row group, and the file is
the same whatever the batch size.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pystac
import shapely
from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

from eo_etl.recipe import Recipe
from eo_etl.store.index_batches import Index, index_batches
from eo_etl.store.location import Location
from eo_etl.store.row_groups import row_groups
from eo_etl.store.zarr import STORE_NAME

ZARR_TYPE = "application/vnd+zarr"
PARQUET_TYPE = "application/vnd.apache.parquet"
COLLECTION_NAME, ITEMS_NAME = "collection.json", "items.parquet"
EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
]
ITEMS_ROW_GROUP = 8192  # items in a row group of items.parquet: about 10 MB of Arrow, what the writer holds


def grid_prefix(distance_km: float) -> str:
    """``grid:code``'s prefix for the Major TOM grid at ``distance_km`` (upper-case letters and digits only)."""
    return "MAJORTOM" if distance_km == 10 else f"MAJORTOM{round(distance_km * 1000)}M"


def stac_items(index: gpd.GeoDataFrame, collection_id: str, distance_km: float = 10) -> list[dict]:
    """One STAC item (as a dict) per stored sample of the index."""
    items, prefix = [], grid_prefix(distance_km)
    for row in index[index.zarr_index.notna()].itertuples():
        item = pystac.Item(
            id=row.sample_id,
            geometry=shapely.geometry.mapping(row.geometry),
            bbox=list(row.geometry.bounds),
            datetime=row.timestamp.to_pydatetime(),
            collection=collection_id,
            stac_extensions=EXTENSIONS,
            properties={
                "grid:code": f"{prefix}-{row.grid_cell}",
                "proj:code": row.crs,
                "proj:shape": [int(row.height), int(row.width)],
                "proj:transform": list(row.transform)[:6],
                "eo:cloud_cover": None if pd.isna(row.cloud_cover) else float(row.cloud_cover),
                # a source without one (land cover) reads back as NaN beside another's strings
                "processing:version": None if pd.isna(row.processing_baseline) else str(row.processing_baseline),
                "eo_etl:source": row.source,
                "eo_etl:nodata_fraction": float(row.nodata),
                "eo_etl:source_items": list(row.items),
                "eo_etl:zarr_index": int(row.zarr_index),
                "eo_etl:recipe_hash": row.recipe_hash,
            },
        )
        if item.properties["eo:cloud_cover"] is None:  # radar, elevation: no cloud (the eo schema takes no null)
            del item.properties["eo:cloud_cover"]
        item.add_asset(
            "pixels",  # hrefs are relative to the dataset folder, where items.parquet is
            pystac.Asset(f"./{STORE_NAME}/{row.source}", media_type=ZARR_TYPE, roles=["data"],
                         extra_fields={"eo_etl:zarr_index": int(row.zarr_index),
                                       "bands": [{"name": band} for band in row.bands]}),
        )  # fmt: skip
        item.add_link(pystac.Link("collection", f"./{COLLECTION_NAME}", media_type=pystac.MediaType.JSON))
        items.append(item.to_dict(include_self_link=False, transform_hrefs=False))
    return items


def write_catalog(
    root: Location | Path | str,
    index: Index,
    recipe: Recipe,
    statistics: dict[str, dict],
    batch_size: int | None = None,
) -> Path | str:
    """Write ``items.parquet`` and ``collection.json`` from the index (in memory, or where it is written), read
    ``batch_size`` rows at a time; ``statistics``: source → band → statistics."""
    root = Location.of(root)
    with tempfile.TemporaryDirectory(prefix="eo-etl-items-") as scratch:
        bbox, interval, tables = _survey(index, recipe, batch_size, Path(scratch))
        if tables:
            schema = pa.unify_schemas([table.schema for table in tables], promote_options="permissive")
            conformed = (_conformed(feather.read_table(table.path), schema) for table in tables)
            with (root / ITEMS_NAME).staged_file() as partial:
                batches = (batch for group in row_groups(conformed, ITEMS_ROW_GROUP) for batch in group.to_batches())
                to_parquet(pa.RecordBatchReader.from_batches(schema, batches), partial)
    collection = _collection(recipe, bbox, interval, statistics)
    target = root / COLLECTION_NAME
    target.write_text(json.dumps(collection.to_dict(include_self_link=False, transform_hrefs=False), indent=2))
    return target.native


def _collection(recipe: Recipe, bbox: list, interval: list, statistics: dict[str, dict]) -> pystac.Collection:
    collection = pystac.Collection(
        id=recipe.name,
        description=recipe.description or f"{recipe.name}, built by eo-etl",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        license=recipe.publish.license if recipe.publish else "other",
        summaries=pystac.Summaries(
            {
                "eo_etl:sources": sorted(statistics),
                "bands": [
                    {"name": band, "source": source, "statistics": stats}
                    for source, bands in statistics.items()
                    for band, stats in bands.items()
                ],
            }
        ),  # fmt: skip
        extra_fields={"eo_etl:recipe_hash": recipe.fingerprint()},
    )
    collection.add_asset("pixels", pystac.Asset(f"./{STORE_NAME}", media_type=ZARR_TYPE, roles=["data"]))
    collection.add_asset("index", pystac.Asset("./index.parquet", media_type=PARQUET_TYPE, roles=["metadata"]))
    collection.add_link(pystac.Link("items", f"./{ITEMS_NAME}", media_type=PARQUET_TYPE, title="stac-geoparquet"))
    return collection


@dataclass(frozen=True)
class _Spilled:
    path: Path  # a batch's items as stac-geoparquet's Arrow table, in a scratch file
    schema: pa.Schema  # as inferred from that batch alone


def _survey(index: Index, recipe: Recipe, batch_size: int | None, scratch: Path):
    """One pass over the index: the stored samples' bbox and time interval, and each batch's items spilled to
    ``scratch``."""
    bounds, times, tables = [], [], []
    for rows in index_batches(index, batch_size=batch_size):
        stored = rows[rows.zarr_index.notna()]
        if stored.empty:
            continue
        bounds.append(stored.total_bounds)
        times += [stored.timestamp.min(), stored.timestamp.max()]
        table = parse_stac_items_to_arrow(stac_items(stored, recipe.name, recipe.grid.distance_km)).read_all()
        tables.append(_Spilled(scratch / f"{len(tables):06d}.arrow", table.schema))
        feather.write_feather(table, tables[-1].path)
    if not bounds:
        return [-180.0, -90.0, 180.0, 90.0], [None, None], []
    bbox = [*map(min, *(b[:2] for b in bounds)), *map(max, *(b[2:] for b in bounds))] if len(bounds) > 1 else bounds[0]
    return list(bbox), [min(times).to_pydatetime(), max(times).to_pydatetime()], tables


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A batch's items in the schema of all of them: a property no item of the batch has (``eo:cloud_cover`` of
    radar) is null there, one null in all of them takes the type it has elsewhere."""
    have = set(table.column_names)
    columns = [table[f.name].cast(f.type) if f.name in have else pa.nulls(len(table), f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
