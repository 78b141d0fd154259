"""The Major TOM grid: known cells, counts, UTM zones, the antimeridian, other spacings, footprints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from pyproj import Transformer

from eo_etl.grid import CellNameError, MajorTomGrid, get_grid, utm_epsg


@pytest.fixture(scope="module")
def grid() -> MajorTomGrid:
    return get_grid("majortom", 10)


def name_of(grid: MajorTomGrid, lat: float, lon: float) -> str:
    rows, cols, inside = grid.locate([lat], [lon])
    assert inside[0]
    return str(grid.names(rows, cols)[0])


@pytest.mark.parametrize(
    ("lat", "lon", "cell"),
    [
        (40.8518, 14.2681, "454U_120R"),  # Naples
        (-33.8688, 151.2093, "378D_1396R"),  # Sydney
        (0.0, 0.0, "1D_1L"),  # on both zero lines: the cell below and to the left
    ],
)
def test_known_places_fall_in_their_published_cells(grid, lat, lon, cell):
    assert name_of(grid, lat, lon) == cell


def test_the_10km_grid_has_the_reference_size(grid):
    assert grid.n_rows == 1893
    assert grid.n_cells == 5_094_350
    assert int(grid.n_cols[grid.row_u == -946][0]) == 352
    assert grid.names(grid.row_u[[0, -1]], [0, 0]).tolist() == ["946D_0R", "946U_0R"]
    assert np.all(np.abs(grid.row_lat) <= 85)


def test_signed_integers_and_names_round_trip(grid):
    rows, cols = grid.all_cells()
    pick = np.random.default_rng(0).choice(len(rows), 5000, replace=False)
    names = grid.names(rows[pick], cols[pick])
    back_rows, back_cols = grid.parse(names)
    assert np.array_equal(back_rows, rows[pick]) and np.array_equal(back_cols, cols[pick])
    assert grid.parse(["454U_120R"]) == ([454], [120])
    assert grid.parse(["378D_1396R"]) == ([-378], [1396])


@pytest.mark.parametrize("bad", ["454U-120R", "0D_5R", "5U_0L", "454u_120r", "9999U_1R", "0U_99999R", ""])
def test_malformed_or_missing_cell_names_are_refused(grid, bad):
    with pytest.raises(CellNameError, match=repr(bad)):
        grid.parse([bad])


def test_a_point_is_inside_the_bounds_of_its_cell(grid):
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-84.9, 84.9, 20000), rng.uniform(-179.99, 179.99, 20000)
    rows, cols, _ = grid.locate(lat, lon)
    west, south, east, north = grid.bounds(rows, cols)
    assert np.all((south < lat) & (lat <= north))
    # the eastmost cell of a row with an odd number of columns reaches past 180°, into -180° onwards
    lon = np.where(lon <= west, lon + 360, lon)
    assert np.all((west < lon) & (lon <= east))


def test_points_outside_the_grid_have_no_cell(grid):
    lat = np.array([89.0, -89.0, -85.0, np.nan, 10.0])
    lon = np.array([0.0, 0.0, 0.0, 0.0, np.nan])
    _, _, inside = grid.locate(lat, lon)
    assert not inside.any()
    with pytest.raises(ValueError, match="longitude outside"):
        grid.locate([0.0], [181.0])


def test_utm_zone_comes_from_the_bottom_left_grid_point(grid):
    # Naples: zone 33N. Sydney: zone 56S.
    assert grid.utm_epsg(*grid.parse(["454U_120R"]))[0] == 32633
    assert grid.utm_epsg(*grid.parse(["378D_1396R"]))[0] == 32756
    # a cell that straddles 12°E takes the zone of its west corner, as the reference does
    rows, cols, _ = grid.locate([45.0], [12.0])
    west = grid.bounds(rows, cols)[0][0]
    assert west < 12.0 and grid.utm_epsg(rows, cols)[0] == 32632


@pytest.mark.parametrize(
    ("lat", "lon", "epsg"),
    [
        (60.39, 5.32, 32632),  # Bergen: zone 32V is widened west to 3°E
        (60.39, 2.50, 32631),  # west of 3°E stays in 31V
        (63.90, 11.90, 32632),
        (64.50, 5.32, 32631),  # north of 64°N the Norway exception ends
        (78.22, 15.65, 32633),  # Longyearbyen: Svalbard zone 33X
        (78.00, 8.00, 32631),
        (78.00, 20.00, 32633),
        (78.00, 25.00, 32635),
        (80.00, 40.00, 32637),
        (70.00, 25.00, 32635),  # south of 72°N: regular zones
        (-10.0, -174.34, 32701),
        (0.5, 179.9, 32660),
    ],
)
def test_norway_and_svalbard_exceptions(lat, lon, epsg):
    assert utm_epsg(lat, lon) == epsg


def test_svalbard_cells_use_the_exception_zones(grid):
    rows, cols, _ = grid.locate([78.22, 79.0, 78.0], [15.65, 10.0, 30.0])
    assert grid.utm_epsg(rows, cols).tolist() == [32633, 32633, 32635]


def test_the_antimeridian(grid):
    lats = grid.row_lat + 0.01
    rows, cols, _ = grid.locate(lats, np.full_like(lats, -180.0))
    # -180° is "on the line": it goes to the cell to its left, the eastmost column across the antimeridian
    assert np.array_equal(cols, grid.n_east - 1)
    # +180° goes to the column whose span (west, east] holds 180°
    rows, cols, _ = grid.locate(lats, np.full_like(lats, 180.0))
    west, _, east, _ = grid.bounds(rows, cols)
    assert np.all((west < 180) & (east + 1e-9 >= 180))  # the last width is a difference: allow rounding
    # In a few rows the reference's wrapped linspace puts the eastmost grid point exactly on 180.0;
    # that cell then spans 180° to 180° + Δλ, so ±180 land in different cells there, as in the reference.
    eastmost_west = grid.bounds(grid.row_u, grid.n_east - 1)[0]
    assert 0 < np.count_nonzero(eastmost_west == 180.0) < grid.n_rows // 10
    # a box across the antimeridian holds cells from both ends of the rows, and only those
    rows, cols = grid.cells_in_bbox(179.8, -0.2, -179.8, 0.2)
    west, south, east, north = grid.bounds(rows, cols)
    assert (west > 179).any() and (east < -179).any()
    assert np.all((west >= 179.5) | (east <= -179.5))


def test_the_eastmost_cell_of_an_odd_row_reaches_across_180(grid):
    odd = np.flatnonzero(grid.n_cols % 2 == 1)[0]
    lat = float(grid.row_lat[odd]) + 0.01
    row, col, _ = grid.locate([lat], [-179.9999])
    assert col[0] == grid.n_east[odd] - 1  # the eastmost column
    assert grid.bounds(row, col)[2][0] > 180
    rows, cols = grid.cells_in_bbox(-180.0, lat - 0.001, -179.999, lat + 0.001)
    assert (row[0], col[0]) in set(zip(rows.tolist(), cols.tolist()))


def test_cells_in_bbox_are_exactly_the_overlapping_ones():
    grid = get_grid("majortom", 100)
    box = (-20.3, 30.1, 12.7, 55.0)
    rows, cols = grid.cells_in_bbox(*box)
    all_rows, all_cols = grid.all_cells()
    west, south, east, north = grid.bounds(all_rows, all_cols)
    brute = (west < box[2]) & (east > box[0]) & (south < box[3]) & (north > box[1])
    assert set(zip(rows.tolist(), cols.tolist())) == set(zip(all_rows[brute].tolist(), all_cols[brute].tolist()))
    # every point inside the box lies in one of them
    rng = np.random.default_rng(2)
    r, c, _ = grid.locate(rng.uniform(30.1, 55.0, 5000), rng.uniform(-20.3, 12.7, 5000))
    assert set(zip(r.tolist(), c.tolist())) <= set(zip(rows.tolist(), cols.tolist()))


def test_a_box_on_grid_lines_does_not_take_the_cells_it_only_touches(grid):
    rows, cols = grid.parse(["454U_120R"])
    west, south, east, north = (float(v[0]) for v in grid.bounds(rows, cols))
    got_rows, got_cols = grid.cells_in_bbox(west, south, east, north)
    assert grid.names(got_rows, got_cols).tolist() == ["454U_120R"]


@pytest.mark.parametrize("dist", [50.0, 100.0])
def test_other_spacings_follow_the_same_rules(dist):
    grid = get_grid("majortom", dist)
    n_div = math.ceil(math.pi * 6378.137 / dist)
    assert np.allclose(np.diff(grid.row_lat), 180 / n_div)
    assert grid.row_lat[grid.row_u == 0][0] == 0.0
    # columns: the fewest that keep neighbouring grid points at most `dist` apart along the row
    circumference = 2 * np.pi * 6378.137 * np.cos(np.radians(grid.row_lat))
    assert np.all(circumference / grid.n_cols <= dist)
    assert np.all(circumference / (grid.n_cols - 1) > dist)
    # (0, 0) is on both zero lines at every spacing
    assert name_of(grid, 0.0, 0.0) == "1D_1L"
    # cells are bigger at coarser spacings: Naples' 10 km cell lies inside its coarse cell
    rows, cols = grid.parse([name_of(grid, 40.8518, 14.2681)])
    w, s, e, n = (float(v[0]) for v in grid.bounds(rows, cols))
    fine = get_grid("majortom", 10)
    fw, fs, fe, fn = (float(v[0]) for v in fine.bounds(*fine.parse(["454U_120R"])))
    assert s <= 40.8518 <= n and w <= 14.2681 <= e
    assert (e - w) > (fe - fw) and (n - s) > (fn - fs)


def test_footprint_is_the_projected_grid_point_minus_the_margin(grid):
    rows, cols = grid.parse(["454U_120R", "378D_1396R"])
    fp = grid.footprints(rows, cols)
    assert grid.footprint_m == 10_680.0
    np.testing.assert_allclose(fp.xmax - fp.xmin, 10_680.0)
    np.testing.assert_allclose(fp.ymax - fp.ymin, 10_680.0)
    assert round((fp.xmax[0] - fp.xmin[0]) / 10) == 1068  # 1068 × 1068 px at 10 m
    lat, lon = grid.grid_point(rows, cols)
    for i, epsg in enumerate(fp.epsg):
        x, y = Transformer.from_crs(4326, int(epsg), always_xy=True).transform(lon[i], lat[i])
        assert fp.xmin[i] == pytest.approx(x - 340, abs=1e-6)
        assert fp.ymin[i] == pytest.approx(y - 340, abs=1e-6)


def test_footprint_covers_the_cell_near_the_central_meridian(grid):
    # Naples is 0.7° from zone 33's central meridian (15°E): the cell fits the 10,680 m square
    rows, cols = grid.parse(["454U_120R"])
    fp = grid.footprints(rows, cols)
    west, south, east, north = (float(v[0]) for v in grid.bounds(rows, cols))
    to_utm = Transformer.from_crs(4326, int(fp.epsg[0]), always_xy=True)
    xs, ys = to_utm.transform([west, east, east, west], [south, south, north, north])
    cell = shapely.Polygon(zip(xs, ys))
    square = shapely.box(fp.xmin[0], fp.ymin[0], fp.xmax[0], fp.ymax[0])
    assert square.contains(cell)


def test_a_bad_distance_is_refused():
    for distance in (0, -1, 0.001, 20_000):
        with pytest.raises(ValueError, match=f"grid distance must be 0.1 to 1000 km, got {distance:g}"):
            MajorTomGrid(distance)
