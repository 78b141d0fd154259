"""Sources other than optical imagery, through a real STAC API (`rustac serve`) and GDAL: a land-cover class map
(ESA WorldCover's layout: uint8 codes in EPSG:4326, 0 no data) is cut with nearest resampling whatever the recipe
asks, and Sentinel-1 GRD rasters in radar geometry (ground control points only) fail with that reason instead of
being placed wrong. The rasters are made here (no WorldCover tile or GRD scene ships in a package); what is under
test is how acquisition treats them, checked against rasterio's own reads."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rasterio.warp import Resampling

from eo_etl.demo import raster_asset, raster_item, write_cog
from eo_etl.plan import plan
from eo_etl.recipe import parse_recipe
from eo_etl.sample import FAILED, OK
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.profile import find_profile
from eo_etl.sources.remote import RetryPolicy
from tests.imagery import read_on_grid, write_item_collection
from tests.servers import stac_api

CELL = "454U_120R"
CLASSES = np.array([10, 20, 30, 40, 50, 60, 80, 90], dtype=np.uint8)
WHEN = datetime(2021, 1, 1, tzinfo=UTC)


def recipe(api: str, collection: str, **source):
    return parse_recipe({
        "name": "m", "aoi": {"cells": [CELL]}, "time": {"start": "2021-01-01", "end": "2021-12-31"},
        "sources": [{"name": "s", "url": api, "collection": collection, "patch_size": 64, **source}],
    })  # fmt: skip


def acquire(r):
    policy = RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02)
    return list(acquire_source(r, r.sources[0], cells_of(r, plan(r)), policy=policy))


@pytest.fixture
def cell():
    r = recipe("http://unused", "esa-worldcover")
    return cells_of(r, plan(r))[0]


def test_a_class_map_is_cut_with_nearest_whatever_the_recipe_resampling(tmp_path, cell):
    west, south, east, north = cell.lonlat_bounds
    transform = Affine(0.0001, 0, west, 0, -0.0001, north)  # ~8 × 11 m pixels, as WorldCover's 1/12000°
    shape = (round((north - south) / 0.0001), round((east - west) / 0.0001))
    rng = np.random.default_rng(4)
    codes = CLASSES[rng.integers(0, len(CLASSES), size=(shape[0] // 7 + 1, shape[1] // 7 + 1))]
    pixels = np.kron(codes, np.ones((7, 7), dtype=np.uint8))[: shape[0], : shape[1]]  # patches of 7 px a class
    pixels[:, :40] = 0  # no data
    path = write_cog(tmp_path / "wc" / "map.tif", pixels, transform, 4326, 0)
    item = raster_item("ESA_WorldCover_10m_2021_v200", "esa-worldcover", WHEN, 4326, array_bounds(*shape, transform),
                       {"esa_worldcover:product_version": "2.0.0"})  # fmt: skip
    item.add_asset("map", raster_asset(str(path), pixels, transform, 0))

    assert find_profile("esa-worldcover").bands["map"].categorical
    with stac_api(write_item_collection(tmp_path / "items.json", [item])) as api:
        [sample] = acquire(recipe(api, "esa-worldcover", resampling="bilinear", resolution_m=10))

    assert sample.status == OK, sample.reason
    assert sample.bands == ("map",) and sample.pixels.dtype == np.uint8 and sample.nodata == 0
    grid = (sample.crs, Affine(*sample.transform), (64, 64), np.uint8)
    nearest = read_on_grid(path, *grid, resampling=Resampling.nearest)
    np.testing.assert_array_equal(sample.pixels[0], nearest)
    assert set(np.unique(sample.pixels)) <= {0, *CLASSES.tolist()}
    assert not np.array_equal(read_on_grid(path, *grid, resampling=Resampling.bilinear), nearest)  # it would differ
    assert sample.scene_cloud is None and sample.cloud_basis is None  # land cover has no cloud


def test_radar_geometry_rasters_fail_with_that_reason_instead_of_being_placed_wrong(tmp_path, cell):
    west, south, east, north = cell.lonlat_bounds
    item = None
    for band in ("vv", "vh"):
        path = tmp_path / "grd" / f"{band}.tiff"
        path.parent.mkdir(exist_ok=True)
        gcps = [GroundControlPoint(0, 0, west, north), GroundControlPoint(0, 99, east, north),
                GroundControlPoint(99, 0, west, south), GroundControlPoint(99, 99, east, south)]  # fmt: skip
        with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint16") as dst:
            dst.gcps = (gcps, CRS.from_epsg(4326))
            dst.write(np.full((100, 100), 300, dtype=np.uint16), 1)
        if item is None:
            bounds = (west, south, east, north)
            item = raster_item("S1A_IW_GRDH_1SDV_20210601", "sentinel-1-grd", WHEN, 4326, bounds, {})
        item.add_asset(band, pystac.Asset(str(path), media_type=pystac.MediaType.GEOTIFF))  # no proj: fields
    with stac_api(write_item_collection(tmp_path / "items.json", [item])) as api:
        [sample] = acquire(recipe(api, "sentinel-1-grd"))
    assert sample.status == FAILED
    assert "georeferenced only by ground control points (radar geometry)" in sample.reason
