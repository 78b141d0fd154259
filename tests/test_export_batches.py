"""The closing step's exports (STAC items, TACO, Major TOM's metadata) read the merged index in bounded batches
of rows, and give the same files whatever the batch size."""

from __future__ import annotations

import hashlib

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

import eo_etl.store.catalog
import eo_etl.store.dataset
import eo_etl.store.index_batches
from eo_etl.build import build
from eo_etl.store.catalog import write_catalog
from eo_etl.store.dataset import stored_samples
from eo_etl.store.index import write_index
from eo_etl.store.location import Location
from eo_etl.store.read import stored_rows
from eo_etl.store.zarr import STORE_NAME
from tests.test_scale import synthetic_recipe

BOX = [10.0, 45.0, 10.45, 45.3]  # about 15 cells of the 10 km grid


def files(root):
    """Every file of a dataset but the build's own state and the recipe (which names the folder), by path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] not in ("_build", "_build.lock", "recipe.json")
    }


ITEMS_ROW_GROUP = 5  # several row groups, filled across batches


def build_with(root, monkeypatch, batch: int):
    """The synthetic recipe built into ``root`` with every format, the exports reading ``batch`` rows at a time."""
    monkeypatch.setattr(eo_etl.store.catalog, "ITEMS_ROW_GROUP", ITEMS_ROW_GROUP)
    monkeypatch.setattr(eo_etl.store.index_batches, "EXPORT_BATCH", batch)
    recipe = synthetic_recipe(root, BOX, formats=["zarr", "taco", "majortom"])
    return recipe, build(recipe, options={"direct_running_mode": "in_memory"})


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Built with the whole index read at once."""
    root = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as monkeypatch:
        recipe, _ = build_with(root, monkeypatch, 100_000)
    return recipe, root / "out"


def test_the_exports_read_the_index_in_small_batches_and_write_the_same_files(whole, tmp_path, monkeypatch):
    read = []
    iter_batches = pq.ParquetFile.iter_batches

    def counted(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            if kwargs.get("batch_size") == 3:
                read.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted)
    _, report = build_with(tmp_path, monkeypatch, 3)
    stored = report.metrics["samples written"]
    # STAC's, TACO's and Major TOM's passes over the index: each 3 rows at a time
    assert stored > 10 and max(read) == 3 and len(read) == 3 * -(-stored // 3)
    root = tmp_path / "out"
    built = files(root)
    assert built == files(whole[1])
    assert {"items.parquet", "taco/sentinel-2-l2a/.tacocat/COLLECTION.json",
            "majortom/sentinel-2-l2a/metadata.parquet"} <= set(built)  # fmt: skip
    assert pq.ParquetFile(root / "items.parquet").num_row_groups == -(-stored // ITEMS_ROW_GROUP)
    items = pq.read_table(root / "items.parquet").to_pandas()
    index = gpd.read_parquet(root / "index.parquet")
    assert sorted(items["id"]) == sorted(index.loc[index.zarr_index.notna(), "sample_id"])
    metadata = pq.read_table(root / "majortom" / "sentinel-2-l2a" / "metadata.parquet").to_pandas()
    in_store_order = index[index.zarr_index.notna()].sort_values("zarr_index")
    assert metadata["sample_id"].tolist() == in_store_order["sample_id"].tolist()


def test_items_of_batches_with_different_properties_are_written_as_the_whole_index_is(whole, tmp_path):
    recipe, root = whole
    index = gpd.read_parquet(root / "index.parquet")
    index.loc[:3, "cloud_cover"] = np.nan  # no eo:cloud_cover (radar): a property the first batch lacks
    index["processing_baseline"] = "05.11"
    index.loc[:6, "processing_baseline"] = None  # null in every item of the first two batches
    statistics = {"sentinel-2-l2a": {"B02": {"mean": 1.0}}}
    written = {}
    for name, batch in (("whole", None), ("batched", 3)):
        write_catalog(tmp_path / name, index, recipe, statistics, batch_size=batch)
        written[name] = {f: (tmp_path / name / f).read_bytes() for f in ("items.parquet", "collection.json")}
    assert written["whole"] == written["batched"]
    write_index(index, tmp_path / "index.parquet")  # from a file as from memory
    write_catalog(tmp_path / "from-file", Location(tmp_path / "index.parquet"), recipe, statistics, batch_size=2)
    assert (tmp_path / "from-file" / "items.parquet").read_bytes() == written["whole"]["items.parquet"]
    items = pq.read_table(tmp_path / "whole" / "items.parquet").to_pandas()
    assert items["eo:cloud_cover"].isna().sum() == 4 and items["processing:version"].notna().sum() == len(items) - 7


def test_an_export_reads_the_pixels_of_consecutive_samples_at_once_and_only_the_columns_it_needs(whole, monkeypatch):
    recipe, root = whole
    source = recipe.sources[0].name
    index = gpd.read_parquet(root / "index.parquet")
    pixels = zarr.open_array(str(root / STORE_NAME / source / "pixels"), mode="r")
    expected = [(row.sample_id, pixels[int(row.zarr_index)]) for row in stored_rows(index, source).itertuples()]
    reads, columns = [], []
    get, batches = zarr.Array.__getitem__, eo_etl.store.dataset.index_batches
    monkeypatch.setattr(zarr.Array, "__getitem__", lambda array, key: reads.append(key) or get(array, key))
    monkeypatch.setattr(
        eo_etl.store.dataset, "index_batches", lambda *a, **k: columns.append(k["columns"]) or batches(*a, **k)
    )
    sample_bytes = pixels.nbytes // pixels.shape[0]
    monkeypatch.setattr(eo_etl.store.dataset, "PIXELS_AT_ONCE", 3 * sample_bytes)  # runs of three samples at most
    samples = list(stored_samples(Location(root), source, Location(root / "index.parquet"), batch_size=8))
    assert [(str(s.sample_id), s.pixels.tolist()) for s in samples] == [(i, p.tolist()) for i, p in expected]
    # one source, one version: a batch's stored samples lie side by side in the store, read in runs of three
    stored = [int(index.zarr_index.iloc[start : start + 8].notna().sum()) for start in range(0, len(index), 8)]
    assert len(samples) > 10 and len(reads) == sum(-(-count // 3) for count in stored) < len(samples) / 2
    assert all(key.stop - key.start <= 3 for key in reads)
    assert "geometry" not in columns[0] and "zarr_index" in columns[0]
