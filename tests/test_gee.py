"""Earth Engine sources against a stub of Earth Engine's REST API on loopback: no Earth Engine can be
reached offline. The client is the real earthengine-api over HTTP; the stub answers with the pixels of
real Sentinel-2 COGs read on the grid each request asks for, and records every request it gets."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np
import pytest
import rasterio
from google.auth.credentials import AnonymousCredentials

from eo_etl.demo import S2_EPSG, scene_classification, sentinel2_bands, write_cog
from eo_etl.plan import plan
from eo_etl.recipe import RecipeError, parse_recipe
from eo_etl.sample import FAILED, OK, REJECTED
from eo_etl.sources import gee
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.remote import RetryPolicy
from tests.imagery import read_on_grid
from tests.servers import EarthEngineStub

COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
CLEAR = "20190315T141729_20190315T141729_T19GCP"
CLOUDY = "20190601T141049_20190601T141047_T19GCP"
BANDS = ["B02", "B04", "B11", "SCL"]
EE_NAMES = {"B02": "B2", "B04": "B4", "B11": "B11", "SCL": "SCL"}
BBOX = [-67.664, -47.864, -67.622, -47.845]


def recipe(url: str, **source):
    source = {"name": "s", "kind": "gee", "url": url, "project": "stub-project", "collection": COLLECTION,
              "bands": BANDS, "patch_size": 64, "max_cloud": 20, **source}  # fmt: skip
    return parse_recipe({
        "name": "t", "aoi": {"bbox": BBOX}, "grid": {"distance_km": 1},
        "time": {"start": "2019-01-01", "end": "2019-12-31"}, "sources": [source],
    })  # fmt: skip


def acquire(r, policy=None) -> dict:
    policy = policy or RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05)
    return {s.cell: s for s in acquire_source(r, r.sources[0], cells_of(r, plan(r)), policy=policy)}


def constants(node) -> list:
    """Every constant in a serialised ee expression, lists flattened."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "constantValue":
                found += value if isinstance(value, list) else [value]
            else:
                found += constants(value)
    elif isinstance(node, list):
        for value in node:
            found += constants(value)
    return found


def functions(node) -> set[str]:
    text = json.dumps(node)
    return {part.split('"')[0] for part in text.split('"functionName": "')[1:]}


@pytest.fixture(scope="module")
def cogs(tmp_path_factory):
    """Reference COGs of the real scene: clear, and with its northern half cloudy (SCL 9)."""
    root = tmp_path_factory.mktemp("gee")
    bands = sentinel2_bands()
    for name, rows in ((CLEAR, None), (CLOUDY, slice(0, 50))):
        layers = dict(bands, SCL=scene_classification(bands, rows))
        for band, (pixels, transform) in layers.items():
            write_cog(root / name / f"{band}.tif", pixels, transform, S2_EPSG, 0)
    return root


def served_pixels(cogs, image_id: str, bands: list[str], crs: str, transform, shape) -> np.ndarray:
    """What Earth Engine would send: ``bands`` of one image on a grid, as a structured array."""
    out = np.zeros(shape, dtype=[(b, "u1" if b == "SCL" else "u2") for b in bands])
    for band in bands:
        out[band] = read_on_grid(cogs / image_id / f"{band}.tif", crs, transform, shape, out.dtype[band])
    return out


def answer_pixels(cogs, body) -> np.ndarray:
    """The stub's answer to computePixels: the requested bands of the top image, on the requested grid."""
    names = constants(body["expression"])
    image_ids = [c.rsplit("/", 1)[1] for c in names if isinstance(c, str) and c.startswith(COLLECTION + "/")]
    grid, t = body["grid"], body["grid"]["affineTransform"]
    transform = rasterio.Affine(t["scaleX"], t["shearX"], t["translateX"], t["shearY"], t["scaleY"], t["translateY"])
    shape = (grid["dimensions"]["height"], grid["dimensions"]["width"])
    bands = [b for b in BANDS if b in names]
    return served_pixels(cogs, image_ids[-1], bands, grid["crsCode"], transform, shape)  # the last is on top


def served_for(cogs, sample, image_id: str, bands: list[str]) -> np.ndarray:
    return served_pixels(cogs, image_id, bands, sample.crs, rasterio.Affine(*sample.transform), (64, 64))


@contextmanager
def stub_earth_engine(scenes, cogs):
    stub = EarthEngineStub(lambda body: scenes, lambda body: answer_pixels(cogs, body))
    with stub.serve() as url:
        gee.initialize(url, "stub-project", credentials=AnonymousCredentials())
        yield stub, url


def scene_row(scene_id: str, when: datetime, cloud: float) -> list:
    return [scene_id, int(when.timestamp() * 1000), cloud, "05.10"]


MARCH = datetime(2019, 3, 15, 14, 17, 29, tzinfo=UTC)
JUNE = datetime(2019, 6, 1, 14, 10, 49, tzinfo=UTC)


def test_requests_to_a_stub_earth_engine_name_collection_window_cloud_bands_and_grid(cogs):
    with stub_earth_engine([scene_row(CLEAR, MARCH, 3.5)], cogs) as (stub, url):
        samples = acquire(recipe(url))
    made = [s for s in samples.values() if s.status == OK]
    assert made
    listing = [body for kind, body in stub.requests if kind == "compute"]
    assert len(listing) == len(samples)  # one scene listing per cell
    names = constants(listing[0]["expression"])
    assert COLLECTION in names and "CLOUDY_PIXEL_PERCENTAGE" in names and 20 in names
    # cloud ≤ max is sent as not(cloud > max)
    assert {"ImageCollection.load", "Filter.intersects", "Filter.dateRangeContains", "Filter.not", "Filter.greaterThan",
            "Collection.reduceColumns"} <= functions(listing[0])  # fmt: skip
    assert "2019-01-01T00:00:00+00:00" in names and "2020-01-01T00:00:00+00:00" in names  # [start, end)
    pixels = [body for kind, body in stub.requests if kind == "computePixels"]
    sample = made[0]
    corner = (sample.transform[2], sample.transform[5])
    request = next(
        b for b in pixels
        if (b["grid"]["affineTransform"]["translateX"], b["grid"]["affineTransform"]["translateY"]) == corner
        and "B2" in constants(b)
    )  # fmt: skip
    assert request["fileFormat"] == "NPY"
    assert request["grid"]["dimensions"] == {"width": 64, "height": 64}
    assert request["grid"]["crsCode"] == sample.crs == "EPSG:32719"
    assert request["grid"]["affineTransform"]["scaleX"] == 10.0 and request["grid"]["affineTransform"]["scaleY"] == -10
    assert {EE_NAMES[b] for b in BANDS} | set(BANDS) <= set(constants(request))  # selected, then renamed
    assert f"{COLLECTION}/{CLEAR}" in constants(request)
    assert {"ImageCollection.mosaic", "Image.select", "Image.unmask"} <= functions(request)


def test_patches_from_a_stub_earth_engine_keep_its_pixels_bands_and_provenance(cogs):
    with stub_earth_engine([scene_row(CLEAR, MARCH, 3.5)], cogs) as (stub, url):
        samples = acquire(recipe(url))
    made = [s for s in samples.values() if s.status == OK]
    assert len(made) == 12
    for sample in made:
        assert sample.bands == tuple(BANDS) and sample.pixels.dtype == np.uint16
        served = served_for(cogs, sample, CLEAR, BANDS)
        for i, band in enumerate(BANDS):
            np.testing.assert_array_equal(sample.pixels[i], served[band])
        assert sample.product_id == CLEAR and sample.items == (CLEAR,) and sample.timestamp == MARCH
        assert sample.hrefs["B02"] == (f"ee://{COLLECTION}/{CLEAR}",)
        assert sample.scales == (0.0001, 0.0001, 0.0001, 1.0) and sample.offsets == (0.0, 0.0, 0.0, 0.0)
        assert sample.processing_baseline == "05.10" and sample.scene_cloud == 3.5
        assert sample.nodata_fraction == pytest.approx(float((sample.pixels[0] == 0).mean()))


def test_cloud_over_the_cell_decides_between_stub_earth_engine_scenes(cogs):
    # June has less scene cloud (10 % vs 15 %) and is nearer mid-year, but its northern half is cloud:
    # where the cell sees any of it, March (clear over the cell) wins; elsewhere the tie goes to June.
    scenes = [scene_row(CLEAR, MARCH, 15.0), scene_row(CLOUDY, JUNE, 10.0)]
    with stub_earth_engine(scenes, cogs) as (stub, url):
        samples = acquire(recipe(url))
    made = [s for s in samples.values() if s.status == OK]
    assert {s.product_id for s in made} == {CLEAR, CLOUDY}
    for sample in made:
        assert sample.cloud_fraction * 100 <= 20
        if sample.product_id == CLEAR:
            june = served_for(cogs, sample, CLOUDY, ["SCL"])["SCL"]
            assert (june == 9).any()
        else:
            assert sample.cloud_fraction == 0


def test_a_stub_earth_engine_answering_429_then_200_costs_retries_not_samples(cogs):
    with stub_earth_engine([scene_row(CLEAR, MARCH, 3.5)], cogs) as (stub, url):
        stub.faults.plan("computePixels", 429, 503)
        stub.faults.plan("compute", 429)
        policy = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05)
        samples = acquire(recipe(url), policy)
    assert stub.faults.sent["computePixels"] == [429, 503] and stub.faults.sent["compute"] == [429]
    assert policy.retries == 3
    assert {s.status for s in samples.values()} == {OK}


def test_a_request_a_stub_earth_engine_refuses_fails_the_cell_with_its_message(cogs):
    stub = EarthEngineStub(lambda body: [scene_row(CLEAR, MARCH, 3.5)], lambda body: 1 / 0)
    policy = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.05)
    with stub.serve() as url:
        gee.initialize(url, "stub-project", credentials=AnonymousCredentials())
        samples = acquire(recipe(url), policy)
    assert {s.status for s in samples.values()} == {FAILED}
    assert all(s.reason == "EEException: division by zero" for s in samples.values())
    assert policy.retries == 0  # a 400 is not retried


def test_no_scene_from_a_stub_earth_engine_is_a_recorded_rejection(cogs):
    with stub_earth_engine([], cogs) as (stub, url):
        samples = acquire(recipe(url))
    assert {s.status for s in samples.values()} == {REJECTED}
    assert {s.reason for s in samples.values()} == {"no scene over the cell in the time window"}
    assert {kind for kind, _ in stub.requests} == {"compute"}


def test_a_band_earth_engine_does_not_name_fails_validation_with_the_field():
    with pytest.raises(RecipeError) as error:
        recipe("http://unused", collection="LANDSAT/LC08/C02/T1_L2", bands=["blue", "lwir11"])
    assert "sources[0]" in str(error.value) and "Earth Engine has no band for ['lwir11']" in str(error.value)
