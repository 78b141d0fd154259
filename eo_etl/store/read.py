"""Opening a built dataset, from a folder or any fsspec URL (``https://…``, ``s3://…``, ``gs://…``)."""

from __future__ import annotations

import pandas as pd
import xarray as xr
import zarr

from eo_etl.store.dataset import INDEX_NAME
from eo_etl.store.zarr import STORE_NAME, quiet_consolidated

# Index columns that describe a stored sample, attached to open_dataset's sample dimension.
SAMPLE_COLUMNS = ("product_id", "cloud_cover", "nodata", "processing_baseline", "crs")


def join_path(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


def read_index(root: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The dataset's index as a plain table (geometry as WKB); every (cell, source), failures included."""
    return pd.read_parquet(join_path(root, INDEX_NAME), storage_options=storage_options)


def sources(root: str, storage_options: dict | None = None) -> list[str]:
    """The sources with stored pixels, i.e. the groups of ``pixels.zarr``."""
    with quiet_consolidated():
        group = zarr.open_group(join_path(root, STORE_NAME), mode="r", storage_options=storage_options)
    return sorted(name for name, _ in group.groups())


def open_dataset(root, source: str | None = None, *, storage_options: dict | None = None) -> xr.Dataset:
    """One source's stored samples as a lazy xarray Dataset: ``pixels`` (sample, band, y, x) in the
    delivered dtype, labelled bands and cells, per-sample x/y/time/EPSG, band scale/offset, the band
    statistics in ``attrs``, and the index's quality and provenance columns per sample.

    ``source`` may be left out when the dataset has one.
    """
    names = sources(root, storage_options)
    if source is None:
        if len(names) != 1:
            raise ValueError(f"{root} holds the sources {names}: say which one")
        source = names[0]
    elif source not in names:
        raise ValueError(f"{root} has no source {source!r}; it has {names}")
    with quiet_consolidated():
        dataset = xr.open_zarr(
            join_path(root, STORE_NAME), group=source, storage_options=storage_options, mask_and_scale=False
        )
    index = read_index(root, storage_options)
    rows = index[(index.source == source) & index.zarr_index.notna()].sort_values("zarr_index")
    return dataset.assign_coords({column: ("sample", rows[column].to_numpy()) for column in SAMPLE_COLUMNS})
