"""Planning: the AOI of a recipe (box, vector file, cell list) → the cells it overlaps."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Transformer

from eo_etl.grid import get_grid
from eo_etl.grid.table import CELL_COLUMNS
from eo_etl.plan import plan
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
