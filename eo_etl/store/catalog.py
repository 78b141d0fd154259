"""The dataset described in STAC: ``collection.json`` (extent, bands, statistics, the stores as assets) and
``items.parquet``, one item per stored sample as stac-geoparquet (one file, not a million JSON files).

Items (id: the sample id) carry the Major TOM cell (``grid:code``: ``MAJORTOM-454U_120R`` on the 10 km grid,
``MAJORTOM1000M-5327D_5052L`` on others, the form the grid extension's pattern accepts), projection
(``proj:code``, ``proj:shape``, ``proj:transform``), cloud cover, the source scenes, a ``collection`` link and
where the pixels are (``eo_etl:zarr_index`` in the ``pixels`` asset, with STAC 1.1 band objects). Both validate
against the STAC 1.1 and extension schemas, and rustac and stac-geoparquet read ``items.parquet``.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pystac
import shapely
from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

from eo_etl.recipe import Recipe
from eo_etl.store.location import Location
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
    root: Location | Path | str, index: gpd.GeoDataFrame, recipe: Recipe, statistics: dict[str, dict]
) -> Path | str:
    """Write ``items.parquet`` and ``collection.json``; ``statistics``: source → band → statistics."""
    root = Location.of(root)
    stored = index[index.zarr_index.notna()]
    if stored.empty:
        bbox, interval = [-180.0, -90.0, 180.0, 90.0], [None, None]
    else:
        bbox = list(stored.total_bounds)
        interval = [stored.timestamp.min().to_pydatetime(), stored.timestamp.max().to_pydatetime()]
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
    items = stac_items(index, recipe.name, recipe.grid.distance_km)
    if items:
        with (root / ITEMS_NAME).staged_file() as partial:
            to_parquet(parse_stac_items_to_arrow(items), partial)
    target = root / COLLECTION_NAME
    target.write_text(json.dumps(collection.to_dict(include_self_link=False, transform_hrefs=False), indent=2))
    return target.native
