"""Signed reads (a source's ``sign: planetary-computer``) against loopback servers: a STAC API (`rustac serve`) whose
items point at Azure Blob Storage hrefs as Planetary Computer's do, a stand-in for that storage which refuses any
request without the SAS signature, and a mock of Planetary Computer's SAS token endpoint (PC cannot be reached
offline). GDAL reaches the blob host through the stand-in as its HTTP proxy, so the hrefs stay as PC writes them.

The pixels are made up (float32 backscatter-like values, -32768 nodata, as sentinel-1-rtc's COGs hold): no real
Sentinel-1 scene ships in a package, and what is under test is the signing, the cloudless ranking and where the
token goes (nowhere: not the logs, the reasons, the index nor the STAC output).
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from planetary_computer import sas
from planetary_computer.settings import Settings
from rasterio.transform import array_bounds

from eo_etl.build import build
from eo_etl.demo import raster_asset, raster_item, write_cog
from eo_etl.plan import plan
from eo_etl.recipe import RecipeError, parse_recipe
from eo_etl.sample import FAILED, OK
from eo_etl.sources import signing
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.remote import HostLimiter, RetryPolicy
from eo_etl.text import REDACTED, public_href, redacted
from tests.imagery import read_on_grid, write_item_collection
from tests.servers import BlobStorage, stac_api

SECRET = "s3cr3t-signature-0123456789"
ACCOUNT, CONTAINER = "sentinel1euwestrtc", "sentinel1-grd-rtc"
BLOB = f"http://{ACCOUNT}.blob.core.windows.net/{CONTAINER}"
CELL = "454U_120R"
EARLY, MIDDLE = datetime(2023, 6, 2, 5, 0, tzinfo=UTC), datetime(2023, 6, 14, 5, 0, tzinfo=UTC)
NODATA = -32768.0


def recipe(api: str, folder=None, **source):
    return parse_recipe({
        "name": "s1", "aoi": {"cells": [CELL]}, "time": {"start": "2023-06-01", "end": "2023-06-30"},
        "sources": [{"name": "s1rtc", "url": api, "collection": "sentinel-1-rtc", "patch_size": 64,
                     "sign": "planetary-computer", **source}],
        "outputs": {"path": str(folder or "unused"), "shard_size": 4}, "runner": {"workers": 1, "threads": 2},
    })  # fmt: skip


def s1_item(root, item_id: str, when: datetime, cell, seed: int, *, broken: bool = False):
    """vv and vh COGs (10 m, the cell's UTM zone, its centre 1.28 km) under ``root/CONTAINER`` and their item with
    Blob Storage hrefs; no eo:cloud_cover, as Sentinel-1 items have none. ``broken``: vh is not a raster."""
    x0, y0, x1, y1 = cell.footprint
    transform = Affine(10, 0, round((x0 + x1) / 2 - 640), 0, -10, round((y0 + y1) / 2 + 640))
    rng = np.random.default_rng(seed)
    item = None
    for band in ("vv", "vh"):
        pixels = rng.gamma(1.0, 0.05, size=(128, 128)).astype(np.float32)
        pixels[:, :8] = NODATA  # a swath edge
        path = root / CONTAINER / item_id / f"{band}.tif"
        write_cog(path, pixels, transform, cell.epsg, NODATA)
        if broken and band == "vh":
            path.write_bytes(b"<html>not a raster</html>")
        if item is None:
            properties = {"platform": "SENTINEL-1A", "sar:polarizations": ["VV", "VH"]}
            bounds = array_bounds(*pixels.shape, transform)
            item = raster_item(item_id, "sentinel-1-rtc", when, cell.epsg, bounds, properties)
        item.add_asset(band, raster_asset(f"{BLOB}/{item_id}/{band}.tif", pixels, transform, NODATA))
    return item


@pytest.fixture
def pc(tmp_path, monkeypatch):
    """Two Sentinel-1 RTC items (early in June and mid-June) behind signed Blob Storage and a STAC API."""
    cell = cells_of(recipe("http://unused"), plan(recipe("http://unused")))[0]
    root = tmp_path / "blobs"
    items = [s1_item(root, "S1A_early", EARLY, cell, 1), s1_item(root, "S1A_middle", MIDDLE, cell, 2)]
    storage = BlobStorage(root, SECRET)
    with storage.serve(), stac_api(write_item_collection(tmp_path / "items.json", items)) as api:
        monkeypatch.setenv("GDAL_HTTP_PROXY", storage.proxy)  # the blob host is reached through the stand-in
        monkeypatch.setenv("PC_SDK_SAS_URL", storage.token_url)
        Settings.get.cache_clear()  # planetary-computer reads its settings once per process
        sas.TOKEN_CACHE.clear()
        yield {"api": api, "storage": storage, "root": root, "cell": cell, "folder": tmp_path}
    Settings.get.cache_clear()
    sas.TOKEN_CACHE.clear()


def acquire(r):
    policy = RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02)
    return list(acquire_source(r, r.sources[0], cells_of(r, plan(r)), policy=policy))


def test_signed_reads_via_a_mock_of_pcs_token_endpoint_match_rasterio_and_the_token_stays_out_of_logs(pc, caplog):
    caplog.set_level(logging.DEBUG)  # rasterio names every dataset it opens at DEBUG: the signed href among them
    [sample] = acquire(recipe(pc["api"]))

    assert sample.status == OK, sample.reason
    # no cloud cover: ranked by time alone, the scene nearest the window's middle (June 15th) wins
    assert sample.product_id == "S1A_middle" and sample.items == ("S1A_middle",)
    assert sample.scene_cloud is None and sample.cloud_basis is None and sample.record()["cloud_cover"] is None
    assert sample.pixels.dtype == np.float32 and sample.nodata == NODATA
    for i, band in enumerate(("vv", "vh")):
        local = pc["root"] / CONTAINER / "S1A_middle" / f"{band}.tif"
        expected = read_on_grid(local, sample.crs, Affine(*sample.transform), (64, 64), np.float32)
        np.testing.assert_array_equal(sample.pixels[i], expected)
    # every blob request carried the token; one token request served them all (cached until it expires)
    assert pc["storage"].requests and all(signed for _, signed in pc["storage"].requests)
    assert pc["storage"].token_requests == [f"/api/sas/v1/token/{ACCOUNT}/{CONTAINER}"]
    # provenance holds the unsigned hrefs; the logs said the hrefs, redacted
    assert sample.hrefs == {b: (f"{BLOB}/S1A_middle/{b}.tif",) for b in ("vv", "vh")}
    assert f"{BLOB}/S1A_middle/vv.tif{REDACTED}" in caplog.text
    assert SECRET not in caplog.text


def test_blob_storage_refuses_unsigned_reads_and_the_cell_fails_with_the_status(pc):
    [sample] = acquire(recipe(pc["api"], sign=None))
    assert sample.status == FAILED and "HTTP response code: 403" in sample.reason
    assert f"{BLOB}/S1A_middle/" in sample.reason  # the asset named, as it is recorded
    assert pc["storage"].requests and not any(signed for _, signed in pc["storage"].requests)
    assert pc["storage"].token_requests == []


def test_a_signed_read_that_fails_says_which_href_without_the_token(pc, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    # the check of a failed read asks the blob host too (through the stand-in); loopback services directly
    monkeypatch.setenv("HTTP_PROXY", f"http://{pc['storage'].proxy}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    broken = s1_item(pc["root"], "S1A_broken", datetime(2023, 6, 15, tzinfo=UTC), pc["cell"], 3, broken=True)
    with stac_api(write_item_collection(tmp_path / "broken.json", [broken])) as api:
        [sample] = acquire(recipe(api))
    assert sample.status == FAILED and f"band vh of {BLOB}/S1A_broken/vh.tif: not a raster" in sample.reason
    assert "not recognized as being in a supported file format" in caplog.text  # GDAL's words, path and all …
    assert f"{BLOB}/S1A_broken/vh.tif{REDACTED}" in caplog.text  # … redacted
    assert SECRET not in sample.reason and SECRET not in caplog.text


def test_a_token_endpoint_that_never_answers_costs_retries_and_a_recorded_failure_not_a_hung_worker(pc, monkeypatch):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (the kernel's backlog), never answers
    with silent:
        monkeypatch.setattr(signing, "TOKEN_TIMEOUT_S", 0.3)
        monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/api/sas/v1/token")
        Settings.get.cache_clear()
        policy = RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02)
        started = time.monotonic()
        r = recipe(pc["api"])
        [sample] = acquire_source(r, r.sources[0], cells_of(r, plan(r)), policy=policy)
    assert time.monotonic() - started < 20
    assert sample.status == FAILED and "timed out" in sample.reason.lower(), sample.reason
    assert policy.retries >= 1 and pc["storage"].requests == []  # retried, and no blob read went out unsigned


def test_a_token_that_could_expire_during_a_read_and_its_retries_is_renewed_before_the_read(pc):
    """A read retried for a minute or two must not outlive its signature: the expired token would turn a transient
    fault into a refused (permanent) read."""
    policy = RetryPolicy()  # the default budget: up to about two minutes of waits
    sign = signing.PlanetaryComputerSigner(policy, HostLimiter())
    href = f"{BLOB}/S1A_middle/vv.tif"
    cached = f"{pc['storage'].token_url}/{ACCOUNT}/{CONTAINER}"

    def cache_token(seconds_left: float, tag: str) -> None:
        expiry = datetime.fromtimestamp(time.time() + seconds_left, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sas.TOKEN_CACHE[cached] = sas.SASToken(**{"msft:expiry": expiry, "token": f"sig={tag}"})

    cache_token(3000, "plenty-left")
    assert sign(href).endswith("sig=plenty-left") and pc["storage"].token_requests == []
    needed = policy.longest_wait_s(f"{ACCOUNT}.blob.core.windows.net") + signing.READ_MARGIN_S
    cache_token(needed - 30, "expires-mid-retries")  # more than a minute left, less than a read with its retries
    assert sign(href).endswith(f"sig={SECRET}")  # a fresh token from the endpoint
    assert pc["storage"].token_requests == [f"/api/sas/v1/token/{ACCOUNT}/{CONTAINER}"]


def test_a_build_with_signed_reads_records_no_token_in_the_index_or_the_stac_output(pc):
    report = build(recipe(pc["api"], folder=pc["folder"] / "out"))  # the direct runner, one worker process
    index = pd.read_parquet(report.output / "index.parquet")
    assert list(index.status) == [OK] and index.loc[0, "hrefs"].count(BLOB) == 2
    assert index.loc[0, "cloud_cover"] != index.loc[0, "cloud_cover"]  # null: radar has no cloud
    written = [path for path in report.output.rglob("*") if path.is_file()]
    assert any(path.name == "items.parquet" for path in written) and any(p.name == "index.parquet" for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


def test_text_redaction_of_urls_in_messages():
    gdal = f"'/vsicurl/{BLOB}/a/vv.tif?st=1&sig={SECRET}' not recognized as being in a supported file format"
    assert redacted(gdal) == f"'/vsicurl/{BLOB}/a/vv.tif{REDACTED}' not recognized as being in a supported file format"
    assert redacted(redacted(gdal)) == redacted(gdal)  # said twice (a reason of a read error) it stays one mark
    assert public_href(f"{BLOB}/a/vv.tif?se=2&sig={SECRET}") == f"{BLOB}/a/vv.tif"
    assert public_href("/data/scene?.tif") == "/data/scene?.tif"  # a local path keeps its name


def test_cloudless_collections_refuse_a_cloud_limit_naming_the_field():
    with pytest.raises(RecipeError, match=r"sources\[0\]: max_cloud: sentinel-1-rtc scenes carry no cloud cover"):
        recipe("http://localhost", max_cloud=20)


def test_a_cloudless_collection_is_searched_without_a_cloud_filter(pc):
    from eo_etl.sources.stac import StacCatalog

    catalog = StacCatalog(pc["api"], "sentinel-1-rtc", cloud_property=None)
    found = catalog.search(pc["cell"].lonlat_bounds, datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 7, 1, tzinfo=UTC),
                           max_cloud=10)  # fmt: skip
    assert [item.id for item in found] == ["S1A_early", "S1A_middle"]


def test_signing_is_how_assets_are_reached_not_what_a_dataset_holds():
    signed, unsigned = recipe("http://localhost"), recipe("http://localhost", sign=None)
    assert signed.fingerprint() == unsigned.fingerprint()
    assert signed.series_fingerprint() == unsigned.series_fingerprint()
