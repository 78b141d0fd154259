"""The Major TOM export, read the way ESA's own Major TOM code reads Major TOM Core.

ESA's code (github.com/ESA-PhiLab/Major-TOM, read at commit f7078cd0e9d8bade846c1ea448cd53ac874eb727) is not on
the package index and cannot be vendored, so the few calls it makes are restated below, each naming the lines
it follows; torchvision (which ``MajorTOMDataset.py`` imports) cannot be imported here, so its dataset is restated
with ``tif_transforms=None``. The demo is built through the pipeline with ``formats: [zarr, majortom]`` and its
folder served over loopback HTTP with range requests, as the Hub serves Core.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
from datetime import date
from pathlib import Path

import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from fsspec.parquet import open_parquet_file
from PIL import Image
from rasterio.io import MemoryFile
from shapely.geometry import box

from eo_etl import extras
from eo_etl.build import build
from eo_etl.pipeline.state import BuildState, staged_name
from eo_etl.recipe import load_recipe, parse_recipe
from eo_etl.sample import Sample
from eo_etl.sources.profile import find_profile
from eo_etl.store.location import Location
from eo_etl.store.majortom import (
    METADATA_SCHEMA,
    absolute_urls,
    cloud_mask,
    part_name,
    thumbnail,
    write_metadata,
    write_part,
)
from tests.servers import file_server
from tests.test_cli import demo_recipe
from tests.test_extras import setting
from tests.test_pipeline import archive, write_recipe  # noqa: F401 (a fixture)
from tests.test_recipe import problems_of, recipe_with

SOURCE, SHARD = "s2l2a", 5
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12", "SCL"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("majortom")
    outputs = {"path": str(tmp / "demo"), "formats": ["zarr", "majortom"], "shard_size": SHARD}
    report = build(load_recipe(demo_recipe(tmp, outputs=outputs)))
    return report.output


@pytest.fixture(scope="module")
def served(demo):
    """The dataset folder over HTTP; yields the URL of the source's Major TOM folder."""
    with file_server(demo) as url:
        yield f"{url}/majortom/{SOURCE}"


def stored(demo: Path) -> tuple[pd.DataFrame, zarr.Array]:
    index = pd.read_parquet(demo / "index.parquet")
    pixels = zarr.open_array(demo / "pixels.zarr" / SOURCE / "pixels", mode="r")
    return index[index.zarr_index.notna()].set_index("sample_id"), pixels


# ---- ESA's calls, restated --------------------------------------------------------------------------------------
def metadata_from_url(access_url: str, local_url: Path) -> gpd.GeoDataFrame:
    """metadata_helpers.py lines 16-23: download, read with pyarrow, points from centre_lon/centre_lat."""
    local_url, _ = urllib.request.urlretrieve(access_url, local_url)
    df = pq.read_table(local_url).to_pandas()
    df["timestamp"] = pd.to_datetime(df.timestamp)
    return gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df.centre_lon, df.centre_lat), crs=df.crs.iloc[0])


def filter_metadata(df, region=None, daterange=None, cloud_cover=(0, 100), nodata=(0, 1.0)):
    """metadata_helpers.py lines 25-63: inclusive date strings, the spatial index's query, inclusive ranges."""
    if daterange is not None:
        df = df[df.timestamp >= daterange[0]]
        df = df[df.timestamp <= daterange[1]]
    if region is not None:
        df = df.take(df.sindex.query(region))
    if cloud_cover is not None:
        df = df[(df.cloud_cover >= cloud_cover[0]) & (df.cloud_cover <= cloud_cover[1])]
    if nodata is not None:
        df = df[(df.nodata >= nodata[0]) & (df.nodata <= nodata[1])]
    return df


def read_tif_bytes(tif_bytes: bytes) -> np.ndarray:
    """sample_helpers.py lines 13-16."""
    with MemoryFile(tif_bytes) as mem_f, mem_f.open(driver="GTiff") as f:
        return f.read().squeeze()


def read_row(row, columns=("thumbnail",)) -> dict:
    """metadata_helpers.py lines 65-93: fsspec's parquet opener fetches only the row group's byte ranges."""
    columns = list(columns)
    with open_parquet_file(row.parquet_url, columns=columns) as f, pq.ParquetFile(f) as pf:
        row_group = pf.read_row_group(row.parquet_row, columns=columns)
    return {
        col: Image.open(io.BytesIO(row_group[col][0].as_py())) if col == "thumbnail"
        else read_tif_bytes(row_group[col][0].as_py())
        for col in columns
    }  # fmt: skip


def filter_download(df, local_dir: Path, source_name: str) -> None:
    """metadata_helpers.py lines 95-159 with by_row=True: each parquet opened over HTTP (fsspec), its rows' groups
    read, band columns (starting with 'B') and cloud_mask written as .tif, the thumbnail as .png, under
    <source_name>/<row>/<grid_cell>/<product_id>/."""
    for url in df.parquet_url.unique():
        rows = df[df.parquet_url == url].parquet_row.unique()
        f = fsspec.open(url)
        with f.open() as temp, pq.ParquetFile(temp) as pf:
            for row_idx in rows:
                table = pf.read_row_group(row_idx)
                product_id, grid_cell = table["product_id"][0].as_py(), table["grid_cell"][0].as_py()
                dest = local_dir / source_name / grid_cell.split("_")[0] / grid_cell / product_id
                dest.mkdir(exist_ok=True, parents=True)
                for col in [col for col in table.column_names if col[0] == "B"] + ["cloud_mask"]:
                    (dest / f"{col}.tif").write_bytes(table[col][0].as_py())
                (dest / "thumbnail.png").write_bytes(table["thumbnail"][0].as_py())


def majortom_item(df, local_dir: Path, idx: int, tif_bands=("B04", "B03", "B02")) -> dict:
    """MajorTOMDataset.py lines 40-64 (tif_transforms=None, png_transforms=None)."""
    meta = df.iloc[idx]
    path = local_dir / meta.grid_cell.split("_")[0] / meta.grid_cell / meta.product_id
    out = {"meta": meta}
    for band in tif_bands:
        with rasterio.open(path / f"{band}.tif") as f:
            out[band] = f.read()
    out["thumbnail"] = Image.open(path / "thumbnail.png")
    return out


# ---- the export, through ESA's calls ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metadata(demo, served, tmp_path_factory) -> gpd.GeoDataFrame:
    local = tmp_path_factory.mktemp("download") / "metadata.parquet"
    return absolute_urls(metadata_from_url(f"{served}/metadata.parquet", local), served)


def test_read_row_over_http_gives_the_zarr_stores_pixels_with_their_georeference(demo, metadata):
    index, pixels = stored(demo)
    assert len(metadata) == len(index) == 12
    for row in metadata.itertuples():
        out = read_row(row, columns=[*BANDS, "thumbnail"])
        expected = pixels[int(index.zarr_index[row.sample_id])]
        for b, band in enumerate(BANDS):
            np.testing.assert_array_equal(out[band], expected[b])
        assert out["thumbnail"].format == "PNG" and out["thumbnail"].size == (64, 64)
    first = metadata.iloc[0]
    with open_parquet_file(first.parquet_url, columns=["B04"]) as f, pq.ParquetFile(f) as pf:
        tif = pf.read_row_group(first.parquet_row, columns=["B04"])["B04"][0].as_py()
    with MemoryFile(tif) as memory, memory.open() as band:
        record = index.loc[first.sample_id]
        assert band.crs.to_string() == record.crs == first.crs
        assert tuple(band.transform)[:6] == tuple(record["transform"])
        assert band.nodata == record.nodata_value == 0
        assert band.dtypes[0] == record["dtype"] == "uint16"


def test_filter_download_by_row_and_the_majortom_dataset_give_the_zarr_stores_pixels(demo, metadata, tmp_path):
    index, pixels = stored(demo)
    chosen = metadata[metadata.nodata < 0.5]  # some rows of each part: by_row reads just those
    assert chosen.parquet_url.nunique() == 3 and len(chosen) == 6
    filter_download(chosen, tmp_path, source_name="L2A")
    for i in range(len(chosen)):
        item = majortom_item(chosen, tmp_path / "L2A", i)
        expected = pixels[int(index.zarr_index[item["meta"].sample_id])]
        for band in ("B04", "B03", "B02"):
            np.testing.assert_array_equal(item[band][0], expected[BANDS.index(band)])
        assert item["thumbnail"].mode == "RGB"
        cell = item["meta"].grid_cell
        folder = tmp_path / "L2A" / cell.split("_")[0] / cell / item["meta"].product_id
        with rasterio.open(folder / "cloud_mask.tif") as f:
            mask = f.read(1)
        scl = expected[BANDS.index("SCL")]
        np.testing.assert_array_equal(mask == 255, scl == 0)  # the scene's clear pixels: no cloud in the demo
        assert set(np.unique(mask[scl != 0])) <= {0}


@pytest.mark.parametrize(
    ("region", "daterange", "cloud", "nodata", "finds"),
    [
        (box(-67.70, -47.87, -67.60, -47.84), ("2019-01-01", "2019-12-31"), (0, 100), (0, 1.0), "all"),
        (box(-67.65, -47.87, -67.60, -47.85), ("2019-03-15", "2019-03-16"), (0, 10), (0.0, 0.5), "some"),
        (box(-67.70, -47.87, -67.64, -47.84), None, (0, 100), (0.0, 0.0), "some"),
        (None, ("2019-04-01", "2019-12-31"), (0, 100), (0, 1.0), "none"),  # after the only scene
        (None, None, (0, 100), (0.8, 1.0), "some"),
    ],
)
def test_filter_metadata_finds_what_the_same_query_on_the_index_finds(
    demo, metadata, region, daterange, cloud, nodata, finds
):
    found = filter_metadata(metadata, region=region, daterange=daterange, cloud_cover=cloud, nodata=nodata)
    index = pd.read_parquet(demo / "index.parquet")
    when = pd.to_datetime(index.timestamp, utc=True)
    query = (index.status == "ok") & index.cloud_cover.between(*cloud) & index.nodata.between(*nodata)
    if daterange:
        query &= (when >= pd.Timestamp(daterange[0], tz="UTC")) & (when <= pd.Timestamp(daterange[1], tz="UTC"))
    if region is not None:
        west, south, east, north = region.bounds
        query &= index.centre_lon.between(west, east) & index.centre_lat.between(south, north)
    assert sorted(found.sample_id) == sorted(index[query].sample_id)
    assert {"all": len(found) == 12, "some": 0 < len(found) < 12, "none": len(found) == 0}[finds]


# ---- the layout -------------------------------------------------------------------------------------------------
def test_one_row_group_per_sample_with_cores_columns_in_parts_of_a_shard(demo):
    folder = demo / "majortom" / SOURCE
    assert sorted(p.name for p in (folder / "images").iterdir()) == [part_name(k) for k in range(3)]
    assert part_name(0) == "part_00001.parquet"  # Core counts its parts from 1
    for k, expected_rows in enumerate((5, 5, 2)):
        part = pq.ParquetFile(folder / "images" / part_name(k))
        assert part.num_row_groups == part.metadata.num_rows == expected_rows
        assert part.schema_arrow.names == ["product_id", "grid_cell", "product_datetime", "thumbnail", *BANDS,
                                           "cloud_mask"]  # fmt: skip
        assert str(part.schema_arrow.field("thumbnail").type) == "binary"
    table = pq.read_table(folder / "metadata.parquet")
    assert table.schema == METADATA_SCHEMA and table.schema.names[:12] == [
        "grid_cell", "grid_row_u", "grid_col_r", "product_id", "timestamp", "cloud_cover", "nodata",
        "centre_lat", "centre_lon", "crs", "parquet_url", "parquet_row",
    ]  # fmt: skip
    meta = table.to_pandas()
    assert list(meta.parquet_url) == [f"images/{part_name(i // SHARD)}" for i in range(12)]  # relative, store order
    assert list(meta.parquet_row) == [i % SHARD for i in range(12)]
    first = pq.ParquetFile(folder / "images" / part_name(0)).read_row_group(0)
    assert first["grid_cell"][0].as_py() == meta.grid_cell[0]
    assert first["product_datetime"][0].as_py() == f"{meta.timestamp[0]:%Y-%m-%dT%H:%M:%S}Z"


def test_the_thumbnail_is_cores_stretch_of_the_red_green_blue_reflectance(demo, metadata):
    index, pixels = stored(demo)
    row = metadata[metadata.nodata == 0].iloc[0]
    image = np.asarray(read_row(row)["thumbnail"])
    record = index.loc[row.sample_id]
    rgb = [BANDS.index(b) for b in ("B04", "B03", "B02")]
    values = pixels[int(record.zarr_index)][rgb].astype(float)
    reflectance = values * np.array(record.scales)[rgb, None, None] + np.array(record.offsets)[rgb, None, None]
    expected = (1.3 * np.clip(reflectance, 0, None) ** 0.6).clip(0, 1) * 255  # extras/thumbnail_s2.py, lines 18-24
    np.testing.assert_array_equal(image, np.moveaxis(expected, 0, -1).astype(np.uint8))
    assert image.std() > 5  # a picture, not a flat field


def test_a_resumed_build_writes_the_missing_part_and_every_file_comes_out_the_same(demo, tmp_path):
    folder = demo / "majortom" / SOURCE
    before = {p.name: hashlib.sha256(p.read_bytes()).digest() for p in folder.rglob("*.parquet")}
    # As a build killed after shard 1's Zarr write leaves it: no part (a half-written one), no shard record, no
    # index, and the shard's pixels still staged (they are let go only once the index is written).
    state, (_, pixels) = BuildState(demo), stored(demo)
    shard = {entry: pixels[position] for position, entry in enumerate(state.shard_entries(SOURCE, 1), start=SHARD)}
    for path in (demo / "_build" / "versions").glob(f"*/samples/{SOURCE}/rows-*.json"):  # back into their ranges
        version, (first, stop) = int(path.parts[-4]), map(int, path.stem.removeprefix("rows-").split("-"))
        names = {staged_name(record) for record in state.range_records(version, SOURCE, first, stop)}
        back = {entry.cell: array for entry, array in shard.items() if entry.version == version and entry.cell in names}
        if not back:
            continue
        with state.range_pixels(version, SOURCE, first, stop) as staged:
            held = set(staged)
        with state.staging(version, SOURCE, first, stop, keep=held) as add:
            for cell, array in back.items():
                add(cell, array)
    (folder / "images" / part_name(1)).rename(folder / "images" / f"{part_name(1)}.4242.partial")
    for suffix in (".json", ".npz"):
        (demo / "_build" / "shards" / SOURCE / f"shard-00001{suffix}").unlink()
    (demo / "index.parquet").unlink()
    report = build(load_recipe(demo.parent / "demo.yaml"))
    assert report.metrics["shards written"] == 1 and report.metrics["shards already written"] == 2
    after = {p.name: hashlib.sha256(p.read_bytes()).digest() for p in folder.rglob("*.parquet")}
    assert after == before
    assert not list(demo.rglob("*.partial"))


def test_a_later_version_rewrites_only_the_partial_last_part_and_metadata_lists_both(archive):  # noqa: F811
    api, _, folder = archive
    recipe = load_recipe(write_recipe(folder, api, outputs={"formats": ["zarr", "majortom"], "shard_size": SHARD}))
    out = build(recipe).output
    images = out / "majortom" / "s2l2a" / "images"
    before = {k: (images / part_name(k)).stat() for k in range(3)}  # 5 + 5 + 2 samples

    build(recipe, since="LAST", until=date(2019, 12, 31))  # September's pass: 12 more
    for k in (0, 1):  # full parts of version 1 are the same files, untouched
        after = (images / part_name(k)).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[k].st_ino, before[k].st_mtime_ns)
    assert sorted(p.name for p in images.iterdir()) == [part_name(k) for k in range(5)]
    metadata = pd.read_parquet(out / "majortom" / "s2l2a" / "metadata.parquet")
    index = pd.read_parquet(out / "index.parquet").set_index("sample_id")
    assert len(metadata) == 24 and metadata.sample_id.is_unique
    assert sorted(metadata.timestamp.dt.month.unique()) == [3, 9]
    pixels = zarr.open_array(out / "pixels.zarr" / "s2l2a" / "pixels", mode="r")
    for row in metadata.itertuples():
        group = pq.ParquetFile(images.parent / row.parquet_url).read_row_group(row.parquet_row, columns=["B08"])
        expected = pixels[int(index.zarr_index[row.sample_id])][BANDS.index("B08")]
        np.testing.assert_array_equal(read_tif_bytes(group["B08"][0].as_py()), expected)


# ---- units ------------------------------------------------------------------------------------------------------
def sample(profile: str, bands: tuple[str, ...], pixels: np.ndarray, nodata=0) -> Sample:
    return Sample(
        cell="454U_120R", row_u=454, col_r=120, source="x", crs="EPSG:32633",
        transform=(10.0, 0.0, 440000.0, 0.0, -10.0, 4520000.0), bands=bands, pixels=pixels, nodata=nodata,
        scales=(1.0,) * len(bands), offsets=(0.0,) * len(bands), timestamp=pd.Timestamp("2022-07-19T09:55:59Z"),
        product_id=f"{profile}-product",
    )  # fmt: skip


def test_cloud_mask_takes_sensei_v2s_four_classes_from_scl():
    scl = np.array([[0, 3, 4, 8], [9, 10, 11, 6]], dtype=np.uint16)
    s2 = sample("sentinel-2-l2a", ("B04", "SCL"), np.stack([np.full_like(scl, 900), scl]))
    np.testing.assert_array_equal(
        cloud_mask(s2, find_profile("sentinel-2-l2a")), [[255, 3, 0, 2], [2, 1, 0, 0]]
    )  # clear 0, thin 1, thick 2, shadow 3; no data 255
    assert cloud_mask(sample("sentinel-2-l2a", ("B04",), scl[None]), find_profile("sentinel-2-l2a")) is None


def test_sentinel_1_and_dem_columns_are_named_as_core_names_them(tmp_path):
    rng = np.random.default_rng(0)
    sar = rng.uniform(0.001, 0.5, (2, 8, 8)).astype(np.float32)
    sar[:, 0, 0] = -32768.0
    dem = rng.uniform(100, 900, (1, 8, 8)).astype(np.float32)
    for profile, bands, pixels, nodata, columns, mode in (
        ("sentinel-1-rtc", ("vv", "vh"), sar, -32768.0, ["vv", "vh"], "RGB"),
        ("cop-dem-glo-30", ("data",), dem, None, ["DEM"], "L"),
    ):
        item = sample(profile, bands, pixels, nodata)
        part = write_part(Location(tmp_path / profile), 0, [item, item], find_profile(profile))
        table = pq.ParquetFile(part.url).read_row_group(1)
        assert table.column_names == ["product_id", "grid_cell", "product_datetime", "thumbnail", *columns]
        np.testing.assert_array_equal(read_tif_bytes(table[columns[0]][0].as_py()), pixels[0])
        image = Image.open(io.BytesIO(table["thumbnail"][0].as_py()))
        assert image.mode == mode and image.size == (8, 8)
    sar_thumbnail = thumbnail(sample("sentinel-1-rtc", ("vv", "vh"), sar, -32768.0), find_profile("sentinel-1-rtc"))
    assert tuple(sar_thumbnail[0, 0]) == (0, 0, 0) and sar_thumbnail[1:, 1:].max() == 255  # nodata black, stretched


def test_the_same_samples_give_the_same_bytes(tmp_path):
    pixels = np.random.default_rng(1).integers(1, 10000, (3, 16, 16), dtype=np.uint16)
    items = [sample("sentinel-2-l2a", ("B02", "B03", "B04"), pixels)]
    profile = find_profile("sentinel-2-l2a")
    first = write_part(Location(tmp_path / "a"), 3, items, profile)
    again = write_part(Location(tmp_path / "b"), 3, items, profile)
    assert Path(first.url).name == "part_00004.parquet"
    assert Path(first.url).read_bytes() == Path(again.url).read_bytes()


def test_metadata_is_in_store_order_whatever_order_the_index_batches_come_in(tmp_path):
    # the index is sorted by cell, not by position: its batches of 2 rows hold positions out of order
    positions = [7, None, 2, 5, 0, None, 6, 1, 4, 3]
    index = pd.DataFrame({
        "source": ["s", "s", "s", "other", *["s"] * 6], "zarr_index": pd.array(positions, dtype="Int64"),
        "grid_cell": [f"{n}U_1R" for n in range(10)], "grid_row_u": range(10), "grid_col_r": 1,
        "product_id": "p", "timestamp": pd.Timestamp("2022-07-19T09:55:59Z"), "cloud_cover": 1.0, "nodata": 0.0,
        "centre_lat": 45.0, "centre_lon": 10.0, "crs": "EPSG:32632", "sample_id": [f"id{n}" for n in range(10)],
    })  # fmt: skip
    target = write_metadata(Location(tmp_path), index, "s", shard_size=3, batch_size=2)
    meta = pq.read_table(target.url)
    assert meta.schema == METADATA_SCHEMA  # Core's columns: the position only put them in order
    stored = {p: f"id{n}" for n, p in enumerate(positions) if p is not None and index.source[n] == "s"}
    assert meta["sample_id"].to_pylist() == [stored[p] for p in sorted(stored)]
    assert meta["parquet_url"].to_pylist() == [f"images/{part_name(p // 3)}" for p in sorted(stored)]
    assert meta["parquet_row"].to_pylist() == [p % 3 for p in sorted(stored)]


def test_absolute_urls_join_relative_ones_to_where_the_folder_is_served():
    meta = pd.DataFrame({"parquet_url": ["images/part_00001.parquet", "https://elsewhere/part_00009.parquet"]})
    hub = "https://huggingface.co/datasets/me/demo/resolve/main/majortom/s2l2a/"
    assert list(absolute_urls(meta, hub).parquet_url) == [
        "https://huggingface.co/datasets/me/demo/resolve/main/majortom/s2l2a/images/part_00001.parquet",
        "https://elsewhere/part_00009.parquet",
    ]


def test_the_format_needs_its_extra_fake_missing_module(monkeypatch):
    change = {"outputs": {"formats": ["zarr", "majortom"]}}
    assert parse_recipe(recipe_with(**change)).outputs.formats == ["zarr", "majortom"]  # installed here
    monkeypatch.setitem(extras.MODULES, "majortom", ("eo_etl_fake_missing_module",))
    assert problems_of(recipe_with(**change)) == [setting("outputs.formats", "majortom", "majortom")]
