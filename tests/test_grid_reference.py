"""The vectorised grid agrees with a literal restatement of the reference, number for number."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eo_etl.grid import MajorTomGrid
from tests.reference_grid import ReferenceGrid

DISTANCES = [10.0, 50.0, 100.0, 7.3, 333.0]
GRID_10KM, REFERENCE_10KM = MajorTomGrid(10), ReferenceGrid(10)


@pytest.fixture(scope="module", params=DISTANCES, ids=lambda d: f"{d:g}km")
def grids(request):
    return MajorTomGrid(request.param), ReferenceGrid(request.param)


def test_every_row_and_column_is_the_references_bit_for_bit(grids):
    grid, ref = grids
    assert np.array_equal(grid.row_lat, ref.lats)
    assert grid.names(grid.row_u, np.zeros_like(grid.row_u)).tolist() == [f"{r}_0R" for r in ref.rows]
    rows, cols = grid.all_cells()
    lat, lon = grid.grid_point(rows, cols)
    start = 0
    for r in range(len(ref.lats)):
        ref_lons, ref_cols = ref.row(r)
        stop = start + len(ref_lons)
        assert np.array_equal(lon[start:stop], ref_lons), f"row {ref.rows[r]}"
        assert np.all(lat[start:stop] == ref.lats[r])
        zero = ref_cols.index("0R")
        assert np.array_equal(cols[start:stop], np.arange(len(ref_lons)) - zero), f"row {ref.rows[r]}"
        start = stop
    assert start == grid.n_cells == len(rows)


def test_random_points_fall_in_the_references_cells(grids):
    grid, ref = grids
    rng = np.random.default_rng(7)
    lat = rng.uniform(ref.lats[0] + 1e-9, 85.0, 3000)
    lon = rng.uniform(-180.0, 180.0, 3000)
    rows, cols, inside = grid.locate(lat, lon)
    assert inside.all()
    assert grid.names(rows, cols).tolist() == [ref.locate(a, o) for a, o in zip(lat, lon)]


def test_points_on_grid_lines_go_below_and_left_as_in_the_reference(grids):
    grid, ref = grids
    rng = np.random.default_rng(11)
    rows, cols = grid.all_cells()
    pick = rng.choice(len(rows), 2000, replace=False)
    lat, lon = grid.grid_point(rows[pick], cols[pick])
    lat, lon = lat[lat > ref.lats[0]], lon[lat > ref.lats[0]]
    # grid points themselves, points on a row line only, on a column line only, and the meridians ±180, 0
    just_east = np.nextafter(lon, 180)
    cases = [(lat, lon), (lat, just_east), (np.nextafter(lat, 90), lon)]
    cases += [(lat, np.full_like(lat, value)) for value in (-180.0, 180.0, 0.0)]
    for case_lat, case_lon in cases:
        r, c, inside = grid.locate(case_lat, case_lon)
        assert inside.all()
        assert grid.names(r, c).tolist() == [ref.locate(a, o) for a, o in zip(case_lat, case_lon)]


def test_bounds_and_utm_zones_are_the_references(grids):
    grid, ref = grids
    rows, cols = grid.all_cells()
    rng = np.random.default_rng(3)
    # random cells plus every row's first and last column and the whole top row
    top = rows == rows.max()
    ends = np.r_[0, np.flatnonzero(np.diff(rows)), np.flatnonzero(np.diff(rows)) + 1, len(rows) - 1]
    pick = np.unique(np.r_[rng.choice(len(rows), 500, replace=False), ends, np.flatnonzero(top)])
    west, south, east, north = grid.bounds(rows[pick], cols[pick])
    epsg = grid.utm_epsg(rows[pick], cols[pick])
    for i, name in enumerate(grid.names(rows[pick], cols[pick])):
        assert (west[i], south[i], east[i], north[i]) == ref.bounds(name), name
        assert epsg[i] == ref.utm_epsg(name), name


@settings(max_examples=400, deadline=None)
@given(
    lat=st.floats(min_value=-84.9, max_value=85.0, allow_nan=False),
    lon=st.floats(min_value=-180.0, max_value=180.0, allow_nan=False),
)
def test_any_point_falls_in_the_references_cell(lat, lon):
    rows, cols, inside = GRID_10KM.locate([lat], [lon])
    assert inside[0]
    assert GRID_10KM.names(rows, cols)[0] == REFERENCE_10KM.locate(lat, lon)
