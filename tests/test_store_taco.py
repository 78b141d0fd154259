"""TACO export: tacoreader opens what we write and gives back the very pixels, the STAC fields and our metadata;
shards are spatial blocks; the same samples give the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely.wkb
import tacoreader
from affine import Affine
from pyproj import Transformer

from eo_etl.demo import sentinel2_bands
from eo_etl.sample import Sample
from eo_etl.store.taco import COLUMNS, spatial_code, write_taco

# tacoreader 2.4 calls duckdb's fetch_arrow_table(), deprecated in duckdb 1.5 (and gone in 2.0).
pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

BANDS = ("B02", "B03", "B04", "B08")
# (pixel row, pixel col) of a 64 × 64 patch of the 200 × 300 scene, and the cell it stands for: the first three
# in Major TOM block 4740D_1140L (20 × 20 cells), the last two in block 4700D_1100L.
PATCHES = {
    (0, 0): (-4727, -1130),
    (0, 64): (-4726, -1130),
    (64, 0): (-4727, -1129),
    (100, 200): (-4700, -1100),
    (136, 236): (-4699, -1100),
}


def cell_name(row_u: int, col_r: int) -> str:
    return f"{abs(row_u)}{'U' if row_u >= 0 else 'D'}_{abs(col_r)}{'R' if col_r >= 0 else 'L'}"


def make_samples() -> list[Sample]:
    scene = sentinel2_bands()
    samples = []
    for i, ((y, x), (row_u, col_r)) in enumerate(PATCHES.items()):
        transform = scene["B02"][1] @ Affine.translation(x, y)
        samples.append(
            Sample(
                cell=cell_name(row_u, col_r),
                row_u=row_u,
                col_r=col_r,
                source="sentinel-2-l2a",
                crs="EPSG:32719",
                transform=tuple(transform)[:6],
                bands=BANDS,
                pixels=np.stack([scene[b][0][y : y + 64, x : x + 64] for b in BANDS]),
                nodata=0,
                scales=(0.0001,) * 4,
                offsets=(-0.1,) * 4,
                timestamp=datetime(2019, 3, 15, 14, 17, 29, 24000, tzinfo=UTC) + timedelta(days=5 * i),
                product_id=f"S2B_MSIL2A_2019031{i}_T19GCP",
                items=(f"item-{i}", f"item-{i}b"),
                hrefs={"B02": (f"https://example.org/{i}/B02.tif",), "B04": (f"https://example.org/{i}/B04.tif",)},
                processing_baseline="04.00" if i % 2 else None,
                cloud_fraction=None if i == 0 else 0.01 * i,
                scene_cloud=3.5 + i,
                nodata_fraction=0.0,
                centre_lat=-47.85,
                centre_lon=-67.64,
                window_start=datetime(2019, 1, 1, tzinfo=UTC),
            )  # fmt: skip
        )
    return samples


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return make_samples()


@pytest.fixture(scope="module")
def written(tmp_path_factory, samples) -> tuple[Path, list[Path]]:
    path = tmp_path_factory.mktemp("taco") / "demo"
    return path, write_taco(path, samples, dataset_id="s2-demo", description="Five patches of the demo scene")


def rows(path) -> list[dict]:
    return tacoreader.load(str(path)).data.to_arrow().to_pylist()


def test_pixels_come_back_exactly_through_tacoreader_paths(written, samples):
    by_cell = {str(s.sample_id): s for s in samples}  # the TACO's ids are the samples' identities
    table = rows(written[0])
    assert sorted(row["id"] for row in table) == sorted(by_cell)
    for row in table:
        sample = by_cell[row["id"]]
        with rasterio.open(row["internal:gdal_vsi"]) as src:
            pixels = src.read()
            assert pixels.dtype == sample.pixels.dtype == np.uint16
            np.testing.assert_array_equal(pixels, sample.pixels)
            assert src.crs == rasterio.CRS.from_string(sample.crs)
            assert src.transform == Affine(*sample.transform)
            assert src.descriptions == BANDS
            assert src.scales == sample.scales and src.offsets == sample.offsets
            assert src.nodata == 0
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_stac_fields_and_our_columns_hold_the_samples_values(written, samples):
    by_cell = {str(s.sample_id): s for s in samples}
    to_lonlat = Transformer.from_crs("EPSG:32719", "EPSG:4326", always_xy=True)
    table = rows(written[0])
    for row in table:
        sample = by_cell[row["id"]]
        a, b, c, d, e, f = sample.transform
        assert row["stac:crs"] == "EPSG:32719"
        assert row["stac:tensor_shape"] == [4, 64, 64]
        assert row["stac:geotransform"] == [c, a, b, f, d, e]
        naive_utc = sample.timestamp.astimezone(UTC).replace(tzinfo=None)
        assert row["stac:time_start"] == row["stac:time_end"] == row["stac:time_middle"] == naive_utc
        centroid = shapely.wkb.loads(row["stac:centroid"])
        assert (centroid.x, centroid.y) == pytest.approx(to_lonlat.transform(c + 32 * a, f + 32 * e), abs=1e-9)

        record = sample.record()
        for name in COLUMNS.keys() - {"spatial_code", "hrefs"}:
            assert row[name] == record[name], name
        assert {band: list(h) for band, h in row["hrefs"]} == record["hrefs"]
        assert row["spatial_code"] == spatial_code(sample.row_u, sample.col_r)
    # Values that come from the sample, not from defaults
    first = by_cell["4727D_1130L.sentinel-2-l2a.20190101"]
    row = next(r for r in table if r["id"] == str(first.sample_id))
    assert row["cloud_cover"] == 3.5 and row["processing_baseline"] is None and row["grid_row_u"] == -4727


def test_collection_says_what_the_columns_are(written):
    collection = json.loads((written[0] / ".tacocat" / "COLLECTION.json").read_text())
    assert collection["id"] == "s2-demo" and collection["description"] == "Five patches of the demo scene"
    assert collection["licenses"] == ["cc-by-4.0"]
    described = {name: text for name, _, text in collection["taco:field_schema"]["level0"]}
    assert described["grid_cell"] == COLUMNS["grid_cell"][1]
    assert described["stac:centroid"]  # tacotoolbox's own STAC descriptions ride along


def test_spatial_code_is_the_blocks_first_cell():
    assert spatial_code(454, 120) == "440U_120R"
    assert spatial_code(0, 0) == spatial_code(19, 19) == "0U_0R"
    assert spatial_code(-1, -1) == spatial_code(-20, -20) == "20D_20L"  # rows -20..-1 are one block
    assert spatial_code(-4727, -1130) == "4740D_1140L"
    assert spatial_code(454, 120, block=1) == "454U_120R"


def test_one_shard_per_spatial_block_in_a_fixed_order(written, samples):
    path, shards = written
    assert [s.name for s in shards] == ["s2-demo_4740D_1140L.tacozip", "s2-demo_4700D_1100L.tacozip"]
    assert sorted(p.name for p in path.iterdir()) == sorted([".tacocat", *(s.name for s in shards)])
    for shard in shards:
        code = shard.stem.removeprefix("s2-demo_")
        in_shard = rows(shard)
        assert {row["spatial_code"] for row in in_shard} == {code}
        expected = sorted((s.row_u, s.col_r) for s in samples if spatial_code(s.row_u, s.col_r) == code)
        assert [(row["grid_row_u"], row["grid_col_r"]) for row in in_shard] == expected
    # The dataset lists the blocks in order, each by row then column.
    assert [row["id"].split(".")[0] for row in rows(path)] == [
        "4727D_1130L", "4727D_1129L", "4726D_1130L", "4700D_1100L", "4699D_1100L",
    ]  # fmt: skip


def test_same_samples_give_the_same_bytes(written, tmp_path):
    again = tmp_path / "elsewhere"
    write_taco(again, reversed(make_samples()), dataset_id="s2-demo", description="Five patches of the demo scene")
    files = sorted(p.relative_to(written[0]) for p in written[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (written[0] / name).read_bytes() == (again / name).read_bytes(), name
    with zipfile.ZipFile(written[1][0]) as zf:
        assert zf.testzip() is None  # clearing the entry times kept every entry sound
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_tacoreader_and_rasterio_alone_open_it(written, samples):
    script = """
import hashlib, json, sys
import rasterio, tacoreader
out = {}
for row in tacoreader.load(sys.argv[1]).data.to_arrow().to_pylist():
    with rasterio.open(row["internal:gdal_vsi"]) as src:
        pixels = src.read()
        out[row["id"]] = [hashlib.sha256(pixels.tobytes()).hexdigest(), str(pixels.dtype), list(src.transform)[:6]]
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("eo_etl", "tacotoolbox"))
print(json.dumps({"samples": out, "ours": ours}))
"""
    done = subprocess.run([sys.executable, "-c", script, str(written[0])], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours"] == []
    assert result["samples"] == {
        str(s.sample_id): [hashlib.sha256(s.pixels.tobytes()).hexdigest(), "uint16", list(s.transform)] for s in samples
    }


def test_a_block_larger_than_the_shard_size_is_split(tmp_path, samples):
    shards = write_taco(tmp_path / "small", samples, dataset_id="s2-demo", shard_size="40KB")
    names = [s.name for s in shards]
    assert names[:3] == [f"s2-demo_4740D_1140L_part000{i}.tacozip" for i in (1, 2, 3)]
    assert len(rows(tmp_path / "small")) == len(samples)


def test_nothing_to_write_is_an_error_and_leaves_nothing(tmp_path, samples):
    with pytest.raises(ValueError, match="no samples with status 'ok'"):
        write_taco(tmp_path / "empty", [], dataset_id="s2-demo")
    rejected = make_samples()[0].reject("too cloudy")
    with pytest.raises(ValueError, match="no samples with status 'ok'"):
        write_taco(tmp_path / "empty", [rejected], dataset_id="s2-demo")
    assert list(tmp_path.iterdir()) == []


def test_a_cells_sample_of_a_later_window_gets_its_own_id_and_the_first_keeps_its_own(tmp_path, samples):
    later = dataclasses.replace(
        samples[0], timestamp=samples[0].timestamp + timedelta(days=180), pixels=samples[1].pixels,
        window_start=datetime(2019, 7, 1, tzinfo=UTC),
    )  # fmt: skip
    path = tmp_path / "two"
    write_taco(path, [samples[0], later], dataset_id="s2-demo")
    by_id = {row["id"]: row for row in rows(path)}
    first_id, later_id = f"{samples[0].cell}.sentinel-2-l2a.20190101", f"{samples[0].cell}.sentinel-2-l2a.20190701"
    assert sorted(by_id) == [first_id, later_id] == [str(samples[0].sample_id), str(later.sample_id)]
    for sample_id, sample in ((first_id, samples[0]), (later_id, later)):
        with rasterio.open(by_id[sample_id]["internal:gdal_vsi"]) as src:
            np.testing.assert_array_equal(src.read(), sample.pixels)


def test_bad_input_is_refused(tmp_path, samples):
    with pytest.raises(ValueError, match="two samples of cell 4727D_1130L"):
        write_taco(tmp_path / "dup", [samples[0], samples[0]], dataset_id="s2-demo")
    again = dataclasses.replace(samples[0], timestamp=samples[0].timestamp + timedelta(days=1))  # same window
    with pytest.raises(ValueError, match=r"two samples 4727D_1130L\.sentinel-2-l2a\.20190101: a TACO holds"):
        write_taco(tmp_path / "dup", [samples[0], again], dataset_id="s2-demo")
    with pytest.raises(ValueError, match="lowercase"):
        write_taco(tmp_path / "id", samples, dataset_id="S2 Demo")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_taco_is_replaced_only_when_asked(tmp_path, samples):
    path = tmp_path / "one"
    write_taco(path, samples[:1], dataset_id="s2-demo")
    with pytest.raises(FileExistsError):
        write_taco(path, samples[1:2], dataset_id="s2-demo")
    write_taco(path, samples[1:2], dataset_id="s2-demo", overwrite=True)
    assert [row["id"] for row in rows(path)] == [str(samples[1].sample_id)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]  # no .partial left behind
