"""Planning: the AOI of a recipe (box, vector file, cell list) → the cells it overlaps."""

from __future__ import annotations

import gc
import itertools
import tracemalloc
import weakref
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from pyproj import Transformer

import eo_etl.plan as plan_module
from eo_etl.grid import get_grid
from eo_etl.grid.table import CELL_COLUMNS, cells_frame
from eo_etl.plan import BAND_CELLS, TABLE_CELLS, aoi_cells, geometry_cells, plan, plan_bands, row_bands, write_plan
from eo_etl.recipe import parse_recipe


def recipe(aoi, base_dir=None, distance_km=10):
    data = {
        "name": "plan-test",
        "aoi": aoi,
        "grid": {"kind": "majortom", "distance_km": distance_km},
        "time": {"start": "2023-01-01", "end": "2023-12-31"},
    }
    return parse_recipe(data, base_dir=base_dir)


def test_a_bbox_plans_every_overlapped_cell_with_major_tom_columns():
    cells = plan(recipe({"bbox": [14.0, 40.6, 14.5, 41.0]}))
    assert list(cells.columns) == [*CELL_COLUMNS, "geometry"]
    assert cells.crs.to_epsg() == 4326
    assert "454U_120R" in set(cells.grid_cell)  # Naples
    # each planned cell overlaps the box; no two are the same; order is south→north, west→east
    box = shapely.box(14.0, 40.6, 14.5, 41.0)
    assert all(geom.intersection(box).area > 0 for geom in cells.geometry)
    assert cells.grid_cell.is_unique
    assert list(zip(cells.grid_row_u, cells.grid_col_r)) == sorted(zip(cells.grid_row_u, cells.grid_col_r))
    # the box is covered: its corners and random points lie in planned cells
    grid = get_grid()
    rng = np.random.default_rng(0)
    rows, cols, _ = grid.locate(rng.uniform(40.6, 41.0, 2000), rng.uniform(14.0, 14.5, 2000))
    assert set(grid.names(rows, cols)) <= set(cells.grid_cell)


def test_centre_and_crs_describe_the_utm_sample_footprint():
    cells = plan(recipe({"cells": ["454U_120R"]}))
    row = cells.iloc[0]
    assert row.crs == "EPSG:32633"
    grid = get_grid()
    fp = grid.footprints([454], [120])
    x, y = Transformer.from_crs(4326, 32633, always_xy=True).transform(row.centre_lon, row.centre_lat)
    assert x == pytest.approx((fp.xmin[0] + fp.xmax[0]) / 2, abs=1e-3)
    assert y == pytest.approx((fp.ymin[0] + fp.ymax[0]) / 2, abs=1e-3)
    # the sample centre lies inside the cell, near its middle
    assert row.geometry.contains(shapely.Point(row.centre_lon, row.centre_lat))


def test_a_cell_list_is_planned_as_given_sorted_and_deduplicated():
    cells = plan(recipe({"cells": ["454U_120R", "378D_1396R", "454U_120R"]}))
    assert cells.grid_cell.tolist() == ["378D_1396R", "454U_120R"]
    assert cells.grid_row_u.tolist() == [-378, 454] and cells.grid_col_r.tolist() == [1396, 120]


def test_a_polygon_file_in_another_crs_plans_only_the_cells_it_overlaps(tmp_path):
    # a triangle in UTM 33N around Naples, written as a GeoPackage
    to_utm = Transformer.from_crs(4326, 32633, always_xy=True)
    corners = [to_utm.transform(lon, lat) for lon, lat in [(14.0, 40.6), (14.6, 40.6), (14.0, 41.1)]]
    triangle = shapely.Polygon(corners)
    gpd.GeoDataFrame({"name": ["t"]}, geometry=[triangle], crs=32633).to_file(tmp_path / "area.gpkg", layer="aoi")
    cells = plan(recipe({"file": "area.gpkg", "layer": "aoi"}, base_dir=tmp_path))
    box_cells = plan(recipe({"bbox": [14.0, 40.6, 14.6, 41.1]}))
    in_lonlat = gpd.GeoSeries([triangle], crs=32633).to_crs(4326).iloc[0]
    assert set(cells.grid_cell) < set(box_cells.grid_cell)  # the triangle skips the box's far corner
    assert all(geom.intersection(in_lonlat).area > 0 for geom in cells.geometry)
    missed = box_cells[~box_cells.grid_cell.isin(cells.grid_cell)]
    assert all(geom.intersection(in_lonlat).area == 0 for geom in missed.geometry)


def test_points_in_a_file_select_the_cells_that_contain_them(tmp_path):
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy([14.2681, 151.2093, 0.0], [40.8518, -33.8688, 0.0]), crs=4326)
    points.to_file(tmp_path / "points.geojson")
    cells = plan(recipe({"file": "points.geojson"}, base_dir=tmp_path))
    assert sorted(cells.grid_cell) == ["1D_1L", "378D_1396R", "454U_120R"]


def test_an_aoi_across_the_antimeridian(tmp_path):
    by_box = plan(recipe({"bbox": [179.9, -17.2, -179.9, -17.0]}))
    lons = np.concatenate([np.asarray(g.exterior.coords)[:, 0] for g in by_box.geometry])
    assert (lons > 179).any() and (lons < -179).any()
    # the same area as a GeoJSON multipolygon split at the antimeridian (RFC 7946) plans the same cells
    split = shapely.MultiPolygon([shapely.box(179.9, -17.2, 180, -17.0), shapely.box(-180, -17.2, -179.9, -17.0)])
    gpd.GeoDataFrame(geometry=[split], crs=4326).to_file(tmp_path / "fiji.geojson")
    by_file = plan(recipe({"file": "fiji.geojson"}, base_dir=tmp_path))
    assert by_file.grid_cell.tolist() == by_box.grid_cell.tolist()


def test_other_distances_plan_coarser_cells():
    fine = plan(recipe({"bbox": [14.0, 40.6, 14.5, 41.0]}))
    coarse = plan(recipe({"bbox": [14.0, 40.6, 14.5, 41.0]}, distance_km=50))
    assert 0 < len(coarse) < len(fine)
    assert shapely.area(coarse.geometry.values).min() > shapely.area(fine.geometry.values).max()


def test_an_empty_aoi_file_is_an_error(tmp_path):
    gpd.GeoDataFrame({"a": []}, geometry=[], crs=4326).to_file(tmp_path / "empty.gpkg")
    with pytest.raises(ValueError, match="has no features"):
        plan(recipe({"file": "empty.gpkg"}, base_dir=tmp_path))


def banded(aoi, band_cells, table_cells, base_dir=None, distance_km=1):
    """The plan's tables of ``table_cells`` cells, found in bands of about ``band_cells``, and the same AOI's cells
    listed at once."""
    r = recipe(aoi, base_dir=base_dir, distance_km=distance_km)
    grid = get_grid("majortom", distance_km)
    tables = list(plan_bands(r, band_cells=band_cells, table_cells=table_cells))
    return tables, cells_frame(grid, *aoi_cells(grid, r.aoi))


def test_a_plan_in_bands_of_grid_rows_is_the_plan_listed_at_once(tmp_path):
    grid = get_grid("majortom", 1)
    edge = float(grid.row_lat[grid.row_index([4540])[0]])  # a point on a row's south edge belongs to the row below
    points = [shapely.Point(14.3, edge), shapely.Point(14.9, 40.95), shapely.Point(-60, -20)]
    polygons = [shapely.box(14.0, 40.6, 14.6, 41.1).difference(shapely.box(14.2, 40.8, 14.4, 40.9))]
    lines = [shapely.LineString([(15.0, 40.9), (15.4, 40.9)])]  # no height
    gpd.GeoDataFrame(geometry=points + polygons + lines, crs=4326).to_file(tmp_path / "mixed.gpkg")
    for aoi in ({"bbox": [14.0, 40.6, 14.5, 41.0]}, {"bbox": [179.5, -17.2, -179.5, -16.5]}, {"file": "mixed.gpkg"}):
        for band_cells, table_cells in ((300, 300), (1000, 300), (300, 1000)):  # bands smaller, larger than tables
            tables, whole = banded(aoi, band_cells, table_cells, base_dir=tmp_path)
            assert len(tables) > 1 and len(whole) > 1000
            cells = pd.concat(tables, ignore_index=True)
            assert cells.grid_cell.tolist() == whole.grid_cell.tolist()  # same cells, same order, no duplicates
            assert cells.drop(columns="geometry").equals(whole.drop(columns="geometry"))
            assert [len(table) for table in tables[:-1]] == [table_cells] * (len(tables) - 1)  # full, but the last
    rows, cols, _ = grid.locate([edge, -20], [14.3, -60])
    assert set(grid.names(rows, cols)) <= set(cells.grid_cell)  # the points, on an edge and far away
    assert rows[0] == 4539  # the row below the edge


def test_a_world_on_the_1_km_grid_is_planned_in_bounded_tables_south_to_north():
    world = recipe({"bbox": [-180, -90, 180, 90]}, distance_km=1)
    grid = get_grid("majortom", 1)
    bands = row_bands(grid, [world.aoi.bbox], BAND_CELLS)
    assert bands[0][0] == 0 and bands[-1][1] == grid.n_rows - 1  # every row, once, in order
    assert all(b[0] == a[1] + 1 for a, b in zip(bands, bands[1:]))
    tracemalloc.start()
    first = list(itertools.islice(plan_bands(world), 3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20  # not the 3.8 GiB of listing every cell
    assert [len(table) for table in first] == [TABLE_CELLS] * 3
    rows = np.concatenate([table.grid_row_u.to_numpy() for table in first])
    assert (np.diff(rows) >= 0).all() and rows[0] == grid.row_u[0]


def test_planning_holds_one_table_of_cells_at_a_time_whatever_the_plan_size(tmp_path):
    def written(bbox):
        """The plan written; the most tables alive at once and the traced peak while it was made."""
        made, most = [], [0]

        def watched(tables):
            for table in tables:
                gc.collect()
                most[0] = max(most[0], sum(ref() is not None for ref in made))  # those before it, still alive
                made.append(weakref.ref(table))
                yield table

        tracemalloc.start()
        target = write_plan(watched(plan_bands(recipe({"bbox": bbox}, distance_km=1), 1000, 500)), tmp_path / "p")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return pq.ParquetFile(target).metadata.num_rows, most[0], peak

    small, small_held, small_peak = written([14.0, 40.6, 14.4, 40.8])
    large, large_held, large_peak = written([14.0, 40.6, 14.8, 41.0])
    assert large > 3 * small > 1_500
    assert small_held == large_held == 1  # the one written while the next is made
    assert large_peak < 1.5 * small_peak  # four times the cells, the same memory
    equator = list(plan_bands(recipe({"bbox": [0.0, 0.0, 30.0, 0.005]}, distance_km=1), table_cells=500))
    assert len(pd.concat(equator).grid_row_u.unique()) == 1  # one grid row of 3,300 cells, in tables of 500
    assert [len(table) for table in equator[:-1]] == [500] * (len(equator) - 1) and len(equator) > 6


def test_write_plan_streams_bands_into_one_geoparquet(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "PLAN_ROW_GROUP", 700)  # tables of 500 joined into row groups of 700
    r = recipe({"bbox": [14.0, 40.6, 14.5, 41.0]}, distance_km=1)
    target = write_plan(plan_bands(r, table_cells=500), tmp_path / "plan.parquet")
    meta = pq.ParquetFile(target).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert len(sizes) > 1 and set(sizes[:-1]) == {700} and 0 < sizes[-1] <= 700
    written, whole = gpd.read_parquet(target), plan(r)
    assert written.crs.to_epsg() == 4326 and written.grid_cell.tolist() == whole.grid_cell.tolist()
    assert written.geometry.geom_equals(whole.geometry).all()
    empty = write_plan(plan_bands(recipe({"bbox": [0, 88, 1, 89]})), tmp_path / "none.parquet")  # beyond the grid
    assert gpd.read_parquet(empty).empty


def test_a_plan_file_is_found_in_few_bands_and_written_the_same_whatever_the_band_size(tmp_path, monkeypatch):
    coast = shapely.Polygon([(14.0, 40.6), (14.9, 40.7), (14.7, 41.1), (14.2, 41.0)])
    coast = coast.difference(shapely.Point(14.4, 40.8).buffer(0.1))  # a bay
    gpd.GeoDataFrame(geometry=[coast, shapely.box(15.2, 40.9, 15.3, 41.0)], crs=4326).to_file(tmp_path / "aoi.gpkg")
    r = recipe({"file": "aoi.gpkg"}, base_dir=tmp_path, distance_km=1)
    calls = []
    monkeypatch.setattr(plan_module, "geometry_cells", lambda *a, **k: calls.append(1) or geometry_cells(*a, **k))
    written = {}
    for band_cells in (300, 3000):
        calls.clear()
        target = write_plan(plan_bands(r, band_cells=band_cells, table_cells=500), tmp_path / f"{band_cells}.parquet")
        written[band_cells] = (len(calls), pq.ParquetFile(target).metadata.num_rows, Path(target).read_bytes())
    (small_calls, cells, small_file), (large_calls, _, large_file) = written[300], written[3000]
    assert cells > 2_000 and small_calls > 4 * large_calls > 1  # the AOI's parts walked in far fewer bands
    assert small_file == large_file  # the same tables, the same row groups, byte for byte
