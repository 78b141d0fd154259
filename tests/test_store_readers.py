"""Opening a built dataset: eo_etl.open_dataset, the PyTorch Dataset (local and over HTTP), the index in
GeoPandas and Hugging Face datasets, and the STAC collection and items."""

from __future__ import annotations

import json

import datasets
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import shapely
import tacoreader
import torch
import zarr
from stac_geoparquet.arrow import stac_table_to_items

import eo_etl
from eo_etl.build import build
from eo_etl.recipe import load_recipe
from eo_etl.store.torch_dataset import SampleDataset
from eo_etl.store.video import read_cube, read_sidecar
from tests.servers import file_server
from tests.test_cli import demo_recipe


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo dataset, built once for these tests."""
    tmp = tmp_path_factory.mktemp("demo")
    outputs = {"path": str(tmp / "demo"), "formats": ["zarr", "taco", "video"], "shard_size": 5}
    report = build(load_recipe(demo_recipe(tmp, outputs=outputs)))
    return report.output


def stored(root):
    return zarr.open_array(root / "pixels.zarr", path="s2l2a/pixels", mode="r")[:]


def test_open_dataset_gives_the_stored_pixels_with_labels_and_the_index_columns(demo):
    ds = eo_etl.open_dataset(demo)
    index = gpd.read_parquet(demo / "index.parquet").set_index("grid_cell")
    np.testing.assert_array_equal(ds.pixels.values, stored(demo))
    assert list(ds.band.values) == ["B02", "B03", "B04", "B08", "B11", "B12", "SCL"]
    for cell in ds.sample.values:
        one = ds.sel(sample=cell)
        assert float(one.nodata) == pytest.approx(index.loc[cell, "nodata"])
        assert str(one.product_id.values) == index.loc[cell, "product_id"]
    statistics = ds.attrs["band_statistics"]["B04"]
    red = stored(demo)[:, 2]
    assert statistics["mean"] == pytest.approx(red[red != 0].mean())


def test_open_dataset_names_the_sources_when_asked_for_one_it_lacks(demo):
    with pytest.raises(ValueError, match=r"has no source 'landsat'; it has \['s2l2a'\]"):
        eo_etl.open_dataset(demo, "landsat")


def test_the_index_is_geoparquet_that_hugging_face_datasets_loads(demo, tmp_path):
    metadata = json.loads(pq.read_schema(demo / "index.parquet").metadata[b"geo"])
    assert metadata["primary_column"] == "geometry" and "covering" in metadata["columns"]["geometry"]
    index = gpd.read_parquet(demo / "index.parquet")
    table = datasets.load_dataset("parquet", data_files=str(demo / "index.parquet"), cache_dir=str(tmp_path))["train"]
    assert table.num_rows == len(index)
    assert table["grid_cell"] == index.grid_cell.tolist()
    assert table["cloud_cover"] == pytest.approx(index.cloud_cover.tolist())
    assert table["zarr_index"] == index.zarr_index.tolist()


def expected_item(demo, i, bands=("B04", "B03", "B02")):
    group = zarr.open_group(demo / "pixels.zarr", path="s2l2a", mode="r")
    names = list(group["band"][:])
    raw = group["pixels"][i][[names.index(b) for b in bands]].astype(np.float32)
    stats = group.attrs["band_statistics"]
    mean = np.array([stats[b]["mean"] for b in bands], np.float32)[:, None, None]
    std = np.array([stats[b]["std"] for b in bands], np.float32)[:, None, None]
    valid = (raw != 0).all(axis=0)
    return np.where(valid, (raw - mean) / std, 0), valid


def test_the_torch_dataset_streams_normalised_band_subsets_through_a_multiprocess_loader(demo):
    data = SampleDataset(demo, bands=["B04", "B03", "B02"])
    assert len(data) == len(stored(demo))
    loader = torch.utils.data.DataLoader(data, batch_size=5, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["pixels"].dtype == torch.float32 and batch["pixels"].shape[1:] == (3, 64, 64)
        for pixels, valid, i in zip(batch["pixels"], batch["valid"], batch["index"]):
            want, want_valid = expected_item(demo, int(i))
            np.testing.assert_allclose(pixels.numpy(), want, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(valid.numpy(), want_valid)
            seen.append(int(i))
    assert sorted(seen) == list(range(len(data)))


def test_the_torch_dataset_reads_the_same_over_http_as_from_disk(demo):
    local = SampleDataset(demo, normalize=False)
    with file_server(demo) as url:
        remote = SampleDataset(url, normalize=False)
        assert remote.cells == local.cells
        for i in (0, len(local) - 1):
            np.testing.assert_array_equal(remote[i]["pixels"].numpy(), local[i]["pixels"].numpy())
        assert remote[0]["pixels"].numpy().max() > 0


def test_the_torch_dataset_refuses_unknown_bands(demo):
    with pytest.raises(ValueError, match=r"unknown bands \['B99'\]"):
        SampleDataset(demo, bands=["B04", "B99"])


def test_the_stac_collection_and_items_describe_the_stored_samples(demo):
    collection = pystac.Collection.from_file(str(demo / "collection.json"))
    index = gpd.read_parquet(demo / "index.parquet")
    made = index[index.status == "ok"]
    assert collection.id == "demo"
    assert collection.extent.spatial.bboxes[0] == pytest.approx(list(made.total_bounds))
    assert {b["name"] for b in collection.summaries.get_list("bands")} == {
        "B02",
        "B03",
        "B04",
        "B08",
        "B11",
        "B12",
        "SCL",
    }
    items = [pystac.Item.from_dict(i) for i in stac_table_to_items(pq.read_table(demo / "items.parquet"))]
    assert sorted(i.id for i in items) == sorted(made.sample_id)
    pixels = stored(demo)
    for item in items:
        row = made[made.grid_cell == item.properties["grid:code"].removeprefix("MAJORTOM1000M-")].iloc[0]
        assert item.id == row.sample_id
        assert shapely.geometry.shape(item.geometry).equals_exact(row.geometry, 1e-9)
        assert item.properties["proj:code"] == "EPSG:32719" and item.properties["proj:shape"] == [64, 64]
        asset = item.assets["pixels"]
        assert asset.href == "./pixels.zarr/s2l2a" and asset.extra_fields["eo_etl:zarr_index"] == row.zarr_index
        assert pixels[row.zarr_index].any()


@pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")  # tacoreader 2.4 on duckdb 1.5
def test_the_taco_export_holds_the_stored_pixels_and_tacoreader_opens_it(demo):
    rows = tacoreader.load(str(demo / "taco" / "s2l2a")).data.to_arrow().to_pylist()
    index = gpd.read_parquet(demo / "index.parquet").set_index("sample_id")  # a TACO row's id is its sample_id
    pixels = stored(demo)
    assert sorted(row["id"] for row in rows) == sorted(index.index[index.status == "ok"])
    for row in rows:
        with rasterio.open(row["internal:gdal_vsi"]) as src:
            np.testing.assert_array_equal(src.read(), pixels[index.loc[row["id"], "zarr_index"]])
        assert row["cloud_cover"] == pytest.approx(index.loc[row["id"], "cloud_cover"])
        assert row["product_id"] == index.loc[row["id"], "product_id"]


def test_the_video_cubes_hold_the_stored_pixels_bit_exact_where_the_index_says(demo):
    index = gpd.read_parquet(demo / "index.parquet")
    made = index[index.status == "ok"]
    pixels = stored(demo)
    assert sorted(made.video_path.unique()) == [
        "video/s2l2a/shard-00000",
        "video/s2l2a/shard-00001",
        "video/s2l2a/shard-00002",
    ]
    for row in made.itertuples():
        frame = read_cube(demo / row.video_path, frames=[row.video_frame])[0]
        np.testing.assert_array_equal(frame, pixels[row.zarr_index])  # lossless unless the recipe asks
    sidecar = read_sidecar(demo / "video/s2l2a/shard-00000")
    assert [b["name"] for b in sidecar["bands"] if b["mask"]] == ["SCL"]


def test_a_recipe_that_asks_for_lossy_video_gets_x265_data_bands_within_the_recorded_psnr(tmp_path):
    outputs = {"path": str(tmp_path / "demo"), "formats": ["zarr", "video"], "video": {"lossy": True, "crf": 16}}
    root = build(load_recipe(demo_recipe(tmp_path, outputs=outputs))).output
    sidecar = read_sidecar(root / "video/s2l2a/shard-00000")
    codecs = {b["name"]: sidecar["streams"][b["stream"]]["codec"] for b in sidecar["bands"]}
    assert codecs == {**dict.fromkeys(["B02", "B03", "B04", "B08", "B11", "B12"], "libx265"), "SCL": "ffv1"}
    original, back = stored(root)[: sidecar["shape"][0]], read_cube(root / "video/s2l2a/shard-00000")
    np.testing.assert_array_equal(back[:, 6], original[:, 6])  # the mask stays exact
    for b, band in enumerate(sidecar["bands"][:6]):
        valid = original[:, b] != 0
        error = back[:, b][valid].astype(float) - original[:, b][valid]
        peak = band["range"][1] - band["range"][0]
        assert 10 * np.log10(peak**2 / np.mean(error**2)) == pytest.approx(band["psnr_db"], abs=0.01)
