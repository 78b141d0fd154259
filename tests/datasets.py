"""Small built datasets for the stages after the store, written without Beam: a Zarr pixel store and an index
as a build leaves them, for samples at chosen places (stages read the index rows' pixel grids, not the scenes).

    write_dataset(root, [place_sample(k, lon, lat) for k, (lon, lat) in enumerate(places)])
    # → root/index.parquet and root/pixels.zarr/s2
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import zarr
from pyproj import CRS, Transformer

from eo_etl.sample import Sample
from eo_etl.store.index import INDEX_NAME, index_frame, write_index
from eo_etl.store.index_row import IndexRow
from eo_etl.store.zarr import STORE_NAME, PixelLayout, ZarrWriter

WINDOW = datetime(2019, 1, 1, tzinfo=UTC)


def utm_of(lon: float, lat: float) -> int:
    return (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) + 1


def place_sample(k: int, lon: float, lat: float, *, size: int = 64, gsd: float = 160.0, source: str = "s2",
                 window: datetime = WINDOW) -> Sample:  # fmt: skip
    """An ok sample centred on (lon, lat): ``size`` px of ``gsd`` m on the place's UTM grid, one band of
    pixels that vary from sample to sample."""
    epsg = utm_of(lon, lat)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    half = size * gsd / 2
    transform = (gsd, 0.0, round(x - half), 0.0, -gsd, round(y + half))
    pixels = np.random.default_rng(k).integers(1, 10_000, (1, size, size), dtype=np.uint16)
    return Sample(
        cell=f"{k:04d}U_{k:04d}R", row_u=k, col_r=k, source=source, crs=CRS.from_epsg(epsg).to_string(),
        transform=transform, bands=("B04",), pixels=pixels, nodata=0.0, scales=(1.0,), offsets=(0.0,),
        timestamp=window.replace(hour=10), product_id=f"item-{k}", items=(f"item-{k}",), centre_lat=lat,
        centre_lon=lon, cloud_fraction=0.0, nodata_fraction=0.0, window_start=window,
    )  # fmt: skip


def write_dataset(root: Path, samples: list[Sample], shard_size: int = 4, version: int = 1) -> Path:
    """A dataset of ``samples`` (all of one source, stored in this order) as a build writes it; an existing
    one grows (its samples first, then these: a later version)."""
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / INDEX_NAME
    before = gpd.read_parquet(index_path).to_dict("records") if index_path.exists() else []
    start = len(before)
    writer = ZarrWriter(root / STORE_NAME, samples[0].source, PixelLayout.of(samples[0]),
                        capacity=start + len(samples), shard_size=shard_size)  # fmt: skip
    # a whole store as a build writes it: every sample again, shard by shard (kept shards are skipped)
    old = [_sample_of(root, record) for record in before]
    everything = old + samples
    for k in range(0, len(everything), shard_size):
        writer.write_shard(k // shard_size, everything[k : k + shard_size])
    writer.close(len(everything))
    records = [IndexRow.from_dict(record) for record in before]
    for i, sample in enumerate(samples):
        records.append(replace(sample.row(version, "test"), zarr_group=sample.source, zarr_index=start + i))
    cells = gpd.GeoDataFrame({"grid_cell": []}, geometry=gpd.GeoSeries([], crs=4326))
    write_index(index_frame(records, cells), index_path)
    return root


def _sample_of(root: Path, record: dict) -> Sample:
    row = IndexRow.from_dict(record)
    return Sample.from_row(row, zarr.open_array(root / STORE_NAME / row.source / "pixels", mode="r")[row.zarr_index])
