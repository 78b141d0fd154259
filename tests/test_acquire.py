"""End to end: a real STAC API (`rustac serve`) on loopback, real COGs served over HTTP with range requests,
searched with pystac-client and read with GDAL; patches checked pixel for pixel against rasterio reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling
from rasterio.windows import from_bounds

from eo_etl.demo import S2_EPSG, scene_classification, sentinel2_bands, sentinel2_item, write_cog, write_demo_catalog
from eo_etl.plan import plan
from eo_etl.recipe import parse_recipe
from eo_etl.sample import FAILED, OK, REJECTED
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.remote import RetryPolicy
from tests.imagery import LANDSAT_SCENES, landsat_item, read_on_grid, write_item_collection
from tests.servers import Faults, faulty_proxy, file_server, stac_api

S2_BBOX = [-67.664, -47.864, -67.622, -47.845]
S2_BANDS = ["B02", "B04", "B08", "B11", "SCL"]
WEST, EAST, CLOUDY = "S2B_20190315_west", "S2B_20190315_east", "S2A_20190601_cloudy"


def fast_policy() -> RetryPolicy:
    return RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05)


def recipe(url: str, *, bbox=S2_BBOX, distance_km=1, kind="stac", year=2019, **source):
    source = {"name": "s", "kind": kind, "url": url, "collection": "sentinel-2-l2a", "bands": S2_BANDS,
              "patch_size": 64, "resampling": "nearest", **source}  # fmt: skip
    return parse_recipe({
        "name": "t", "aoi": {"bbox": bbox}, "grid": {"distance_km": distance_km},
        "time": {"start": f"{year}-01-01", "end": f"{year}-12-31"}, "sources": [source],
    })  # fmt: skip


def acquire(r, policy=None) -> dict:
    return {s.cell: s for s in acquire_source(r, r.sources[0], cells_of(r, plan(r)), policy=policy or fast_policy())}


def direct_read(path: Path, sample, resampling=Resampling.nearest) -> np.ndarray:
    """The same footprint read by rasterio alone: warped onto the sample's grid, nodata outside the file."""
    transform = rasterio.Affine(*sample.transform)
    return read_on_grid(path, sample.crs, transform, sample.pixels.shape[1:], sample.pixels.dtype, resampling)


@pytest.fixture(scope="module")
def s2(tmp_path_factory):
    """Two halves of the Sentinel-2 scene as neighbouring tiles of one pass, a cloudier later scene, and the
    whole scene as reference COGs; served over HTTP and by a STAC API."""
    root = tmp_path_factory.mktemp("s2")
    reference = root / "reference"
    bands = sentinel2_bands()
    bands["SCL"] = scene_classification(bands)
    for band, (pixels, transform) in bands.items():
        write_cog(reference / f"{band}.tif", pixels, transform, S2_EPSG, 0)
    faults = Faults()
    with file_server(root, faults) as files:
        when = datetime(2019, 3, 15, 14, 17, 29, tzinfo=UTC)
        items = [
            sentinel2_item(root, WEST, when, columns=slice(0, 150), href_base=files),
            sentinel2_item(root, EAST, when, columns=slice(150, None), href_base=files),
            # the top half of the 20 m grid is cloud: 50 % scene cover
            sentinel2_item(
                root, CLOUDY, datetime(2019, 6, 1, 14, 0, tzinfo=UTC), cloudy_rows=slice(0, 50), href_base=files
            ),  # fmt: skip
        ]
        with stac_api(write_item_collection(root / "items.json", items)) as api:
            yield {"root": root, "reference": reference, "api": api, "files": files, "faults": faults}


def test_patches_equal_a_direct_rasterio_read_and_tiles_of_one_pass_are_mosaicked(s2):
    samples = acquire(recipe(s2["api"], max_cloud=20))  # the 50 % cloudy scene is out
    made = [s for s in samples.values() if s.status == OK]
    assert len(made) >= 8
    assert any(s.items == (WEST, EAST) or s.items == (EAST, WEST) for s in made)  # one patch from two tiles
    for sample in made:
        assert sample.crs == "EPSG:32719" and sample.pixels.shape == (5, 64, 64)
        assert sample.timestamp == datetime(2019, 3, 15, 14, 17, 29, tzinfo=UTC)
        for i, band in enumerate(S2_BANDS):
            expected = direct_read(s2["reference"] / f"{band}.tif", sample)
            np.testing.assert_array_equal(sample.pixels[i], expected, err_msg=f"{sample.cell} {band}")
        # 10 m bands sit on the file's own pixels: a plain windowed read gives the same
        with rasterio.open(s2["reference"] / "B02.tif") as src:
            left, bottom, right, top = rasterio.transform.array_bounds(64, 64, rasterio.Affine(*sample.transform))
            window = from_bounds(left, bottom, right, top, src.transform)
            plain = src.read(1, window=window, boundless=True, fill_value=0)
        np.testing.assert_array_equal(sample.pixels[0], plain)
        assert sample.nodata_fraction == pytest.approx(float((sample.pixels[0] == 0).mean()))
        assert sample.scales[0] == 0.0001 and sample.offsets[0] == -0.1 and sample.processing_baseline == "05.10"
        assert all(href.startswith(s2["files"]) for hrefs in sample.hrefs.values() for href in hrefs)


def test_cells_partly_outside_every_scene_record_their_nodata(s2):
    samples = acquire(recipe(s2["api"], max_cloud=20))
    partial = [s for s in samples.values() if s.status == OK and 0 < s.nodata_fraction < 1]
    assert partial, "the AOI reaches past the scene"
    for sample in partial:
        outside = sample.pixels[0] == 0
        assert (sample.pixels[[0, 1, 2, 4]][:, outside] == 0).all()  # nothing invented off the 10 m bands' extent
    outside = [s for s in samples.values() if s.status == REJECTED]
    assert all(s.pixels is None and s.reason for s in outside)


def test_cloud_over_the_cell_decides_between_scenes(s2):
    # The cloudy scene (50 % over all) passes max_cloud 60 and is nearer mid-year, so it wins where its
    # cells are clear (south) and loses to the clear March pass where they are cloudy (north).
    samples = acquire(recipe(s2["api"], max_cloud=60))
    made = [s for s in samples.values() if s.status == OK]
    chosen = {s.product_id for s in made}
    assert CLOUDY in chosen and chosen & {WEST, EAST}
    for sample in made:
        assert sample.cloud_fraction * 100 <= 60
        june_scl = direct_read(s2["root"] / CLOUDY / "SCL.tif", sample)
        june_cloud = (june_scl == 9).sum() / (june_scl != 0).sum()
        if sample.product_id == CLOUDY:
            assert sample.cloud_fraction == 0 and june_cloud == 0  # a tie on cloud: the nearer date wins
        else:
            assert june_cloud > 0  # March only where June has cloud over the cell


def test_a_cloudy_scene_alone_is_rejected_with_its_reason(tmp_path):
    item = sentinel2_item(tmp_path, CLOUDY, datetime(2019, 6, 1, tzinfo=UTC), cloudy_rows=slice(0, 100))
    with stac_api(write_item_collection(tmp_path / "items.json", [item])) as api:
        by_scene = acquire(recipe(api, max_cloud=20))
        by_cell = acquire(recipe(api, max_cloud=100))  # scene passes; every cell is 100 % cloud
    assert {s.status for s in by_scene.values()} == {REJECTED}
    assert {s.reason for s in by_scene.values()} == {"no scene over the cell in the time window"}
    assert {s.cloud_fraction for s in by_cell.values() if s.status == OK} == {1.0}


def test_bilinear_20m_bands_match_gdal_within_one_count(tmp_path):
    catalog = write_demo_catalog(tmp_path / "catalog")  # a static catalog: walked, not searched
    samples = acquire(recipe(str(catalog), kind="local", resampling="bilinear"))
    made = [s for s in samples.values() if s.status == OK]
    assert made
    reference = tmp_path / "reference.tif"
    pixels, transform = sentinel2_bands()["B11"]
    write_cog(reference, pixels, transform, S2_EPSG, 0)
    for sample in made:
        expected = direct_read(reference, sample, Resampling.bilinear)
        difference = np.abs(sample.pixels[3].astype(int) - expected.astype(int))
        assert difference.max() <= 1, sample.cell


def test_a_stac_api_answering_429_then_200_costs_retries_not_samples(s2):
    faults = Faults()
    faults.plan("/search", 429, 503)
    policy = fast_policy()
    with faulty_proxy(s2["api"], faults) as api:
        samples = acquire(recipe(api, max_cloud=20), policy)
    assert faults.sent["/search"] == [429, 503]
    assert policy.retries >= 2
    assert sum(s.status == OK for s in samples.values()) >= 8


def test_an_asset_answering_429_then_200_costs_a_retry(tmp_path):
    faults = Faults()
    faults.plan(f"/{WEST}/B04.tif", 429)
    policy = fast_policy()
    with file_server(tmp_path, faults) as files:
        item = sentinel2_item(tmp_path, WEST, datetime(2019, 3, 15, tzinfo=UTC), href_base=files)
        with stac_api(write_item_collection(tmp_path / "items.json", [item])) as api:
            samples = acquire(recipe(api), policy)
    assert faults.sent[f"/{WEST}/B04.tif"] == [429]
    assert policy.retries >= 1
    assert not [s for s in samples.values() if s.status == FAILED]
    assert [s for s in samples.values() if s.status == OK]


def test_an_asset_that_404s_fails_the_cell_at_once_with_its_reason(tmp_path):
    policy = fast_policy()
    with file_server(tmp_path) as files:
        item = sentinel2_item(tmp_path, "gone", datetime(2019, 3, 15, tzinfo=UTC), href_base=files)
        (tmp_path / "gone" / "B04.tif").unlink()
        with stac_api(write_item_collection(tmp_path / "items.json", [item])) as api:
            samples = acquire(recipe(api), policy)
    failed = [s for s in samples.values() if s.status == FAILED]
    assert failed and not [s for s in samples.values() if s.status == OK]
    assert all("404" in s.reason for s in failed)
    assert policy.retries == 0  # a 404 is not worth retrying


def test_a_truncated_cog_fails_the_cell_with_its_reason_naming_the_file_and_the_band(tmp_path):
    with file_server(tmp_path) as files:
        item = sentinel2_item(tmp_path, "corrupt", datetime(2019, 3, 15, tzinfo=UTC), href_base=files)
        cog = tmp_path / "corrupt" / "B08.tif"
        cog.write_bytes(cog.read_bytes()[:3000])  # the header is there, the tiles are not
        with stac_api(write_item_collection(tmp_path / "items.json", [item])) as api:
            samples = acquire(recipe(api), fast_policy())
    failed = [s for s in samples.values() if s.status == FAILED]
    assert failed and not [s for s in samples.values() if s.status == OK]
    href = f"{files}/corrupt/B08.tif"
    for sample in failed:  # not transient: the server serves the file, every read of it fails
        assert sample.reason.startswith(f"ReadError: band B08 of {href}: "), sample.reason
        assert "got 0 bytes" in sample.reason and "it is damaged" in sample.reason


@pytest.fixture(scope="module")
def landsat(tmp_path_factory):
    root = tmp_path_factory.mktemp("landsat")
    with file_server(root) as files:
        items = [landsat_item(root, scene, href_base=files) for scene in LANDSAT_SCENES]
        with stac_api(write_item_collection(root / "items.json", items)) as api:
            yield {"root": root, "api": api}


def test_landsat_from_a_northern_zone_grid_and_two_scenes_of_one_pass(landsat):
    # USGS delivers southern scenes in the northern zone's CRS (EPSG:32621, negative northings); the cells
    # are in EPSG:32721. The two scenes (rows 77 and 78 of path 224) overlap and are mosaicked.
    r = recipe(
        landsat["api"], bbox=[-54.9, -25.5, -54.3, -25.1], distance_km=10, year=2020, collection="landsat-c2-l2",
        bands=["blue", "green", "red", "qa_pixel"], patch_size=356,
    )  # fmt: skip
    made = [s for s in acquire(r).values() if s.status == OK]
    assert len(made) >= 10 and {s.crs for s in made} == {"EPSG:32721"}
    assert any(len(s.items) == 2 for s in made)
    root = landsat["root"]
    for sample in made:
        assert sample.pixels.shape == (4, 356, 356) and sample.transform[0] == 30.0
        for i, band in enumerate(["blue", "green", "red"]):
            expected = direct_read(root / sample.items[0] / f"{band}.tif", sample)
            for extra in sample.items[1:]:
                more = direct_read(root / extra / f"{band}.tif", sample)
                expected = np.where(expected == 0, more, expected)
            np.testing.assert_array_equal(sample.pixels[i], expected, err_msg=f"{sample.cell} {band}")
        assert sample.nodata_fraction == pytest.approx(float((sample.pixels[0] == 0).mean()))


def test_a_retried_read_gets_past_gdals_cached_429(tmp_path):
    # GDAL remembers an error answer for a URL; a retry that did not bypass that memory would fail forever.
    from eo_etl.recipe.models import Source
    from eo_etl.sources.acquire import StacReader
    from eo_etl.sources.patch_grid import patch_grid
    from eo_etl.sources.remote import gdal_env

    faults = Faults()
    with file_server(tmp_path, faults) as files:
        item = sentinel2_item(tmp_path, "cached", datetime(2019, 3, 15, tzinfo=UTC), href_base=files)
        faults.plan("/cached/B02.tif", 429)
        source = Source(name="s", url=files, collection="sentinel-2-l2a", bands=["B02"], patch_size=64)
        policy = fast_policy()
        reader = StacReader(source, (datetime(2019, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)), policy=policy)
        grid = patch_grid(S2_EPSG, (600000.0, 4698020.0, 603000.0, 4700020.0), 10.0, 64, (600000.0, 4700020.0))
        with gdal_env():  # as StacReader.acquire runs it
            pixels, _ = reader.read(item, "B02", grid)
    assert faults.sent["/cached/B02.tif"] == [429] and policy.retries == 1
    with rasterio.open(tmp_path / "cached" / "B02.tif") as src:
        np.testing.assert_array_equal(pixels, src.read(1, window=from_bounds(*grid.bounds, src.transform)))


def test_a_static_catalog_is_walked_once_for_all_batches(tmp_path, monkeypatch):
    import eo_etl.sources.acquire as acquire_module
    from eo_etl.sources.stac import StacCatalog

    walks = []
    original = StacCatalog._static_items

    def counted(self):
        walks.append(self._walked is None)
        return original(self)

    monkeypatch.setattr(StacCatalog, "_static_items", counted)
    monkeypatch.setattr(acquire_module, "SEARCH_BATCH", 3)  # 12 cells: four searches
    samples = acquire(recipe(str(write_demo_catalog(tmp_path / "catalog")), kind="local"))
    assert sum(s.status == OK for s in samples.values()) == 12
    assert walks == [True, False, False, False]  # read on the first search, reused after


def test_items_without_the_quality_band_fall_back_to_the_scene_cloud_unless_the_recipe_asks_for_it(tmp_path):
    catalog = write_demo_catalog(tmp_path / "catalog")
    masked = acquire(recipe(str(catalog), kind="local", bands=["B02", "B04"]))
    (item_path,) = (tmp_path / "catalog").rglob("S2B_*.json")
    item = json.loads(item_path.read_text())
    del item["assets"]["scl"]  # a catalogue without SCL
    item["properties"]["eo:cloud_cover"] = 7.5
    item_path.write_text(json.dumps(item))

    unmasked = acquire(recipe(str(catalog), kind="local", bands=["B02", "B04"]))
    assert {s.status for s in unmasked.values()} == {OK} and unmasked.keys() == masked.keys()
    assert {s.cloud_basis for s in masked.values()} == {"SCL"}
    assert {s.cloud_basis for s in unmasked.values()} == {"scene"}  # said in the index's cloud_basis column
    for cell, sample in unmasked.items():
        assert sample.cloud_fraction is None and sample.record()["cloud_cover"] == 7.5
        np.testing.assert_array_equal(sample.pixels, masked[cell].pixels)
    asked = acquire(recipe(str(catalog), kind="local", bands=["B02", "SCL"]))
    assert {(s.status, s.reason) for s in asked.values()} == {(FAILED, "items lack assets for bands ['SCL']")}
