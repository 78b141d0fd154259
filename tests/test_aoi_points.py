"""A recipe's AOI as a table of points (``aoi: {points: …, weight: …, min_spacing_km: …}``): the cells that
contain them, one sample per cell, kept apart by the spacing rule in a deterministic order, with errors that name
the field."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import yaml

from eo_etl.grid import get_grid
from eo_etl.plan import plan
from eo_etl.recipe import RecipeError, load_recipe

# Naples, a point 12 km east of it (another cell), Paris and a point 300 m from it (the same cell), Sydney
CITIES = pd.DataFrame({
    "name": ["naples", "naples_east", "paris", "paris_louvre", "sydney"],
    "lat": [40.8518, 40.8518, 48.8566, 48.8606, -33.8688],
    "lon": [14.2681, 14.4105, 2.3522, 2.3376, 151.2093],
    "population": [0.9, 2.0, 2.1, 0.1, 5.3],
})  # fmt: skip


def write(folder, table: pd.DataFrame | None = None, name: str = "points.csv", **aoi):
    if table is not None:
        table.to_csv(folder / name, index=False)
    path = folder / "recipe.yaml"
    recipe = {"name": "cities", "aoi": {"points": name, **aoi}, "time": {"start": "2023-01-01", "end": "2023-12-31"}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def haversine_km(lat1, lon1, lat2, lon2):
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(a))


def located(table: pd.DataFrame) -> list[str]:
    grid = get_grid()
    rows, cols, _ = grid.locate(table.lat.to_numpy(), table.lon.to_numpy())
    return list(grid.names(rows, cols))


def test_points_select_the_cells_that_contain_them_one_sample_per_cell(tmp_path):
    cells = plan(load_recipe(write(tmp_path, CITIES)))
    names = located(CITIES)
    assert names[2] == names[3] and len(set(names)) == 4  # the two Paris points share a cell
    assert sorted(cells.grid_cell) == sorted(set(names))


def test_the_spacing_rule_keeps_the_heavier_point_then_the_earlier_row(tmp_path):
    naples, naples_east = located(CITIES)[:2]
    CITIES.to_csv(tmp_path / "points.csv", index=False)
    # without weights the earlier row (Naples) wins; with them the heavier (the eastern point, 2.0 > 0.9)
    unweighted = set(plan(load_recipe(write(tmp_path, min_spacing_km=15))).grid_cell)
    weighted = set(plan(load_recipe(write(tmp_path, min_spacing_km=15, weight="population"))).grid_cell)
    assert naples in unweighted and naples_east not in unweighted
    assert naples_east in weighted and naples not in weighted
    assert len(weighted) == len(unweighted) == 3  # Naples' pair gives one, Paris one, Sydney one
    # every kept pair of samples is at least the spacing apart (centre to centre)
    kept = plan(load_recipe(write(tmp_path, min_spacing_km=15, weight="population")))
    lat, lon = kept.centre_lat.to_numpy(), kept.centre_lon.to_numpy()
    distances = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    assert (distances[~np.eye(len(kept), dtype=bool)] >= 15).all()


def test_the_same_weighted_points_in_any_row_order_give_the_same_cells(tmp_path):
    rng = np.random.default_rng(0)
    points = pd.DataFrame({"lat": 45 + rng.random(400) * 0.5, "lon": 7 + rng.random(400) * 0.5})
    points["weight"] = rng.permutation(400)  # distinct weights: the order is the weights'
    first = plan(load_recipe(write(tmp_path, points, weight="weight", min_spacing_km=12))).grid_cell.tolist()
    shuffled = points.sample(frac=1, random_state=1)
    again = plan(load_recipe(write(tmp_path, shuffled, weight="weight", min_spacing_km=12))).grid_cell.tolist()
    assert first == again and 5 < len(first) < len(set(located(points)))


def test_a_geoparquet_of_points_works_like_a_csv(tmp_path):
    frame = gpd.GeoDataFrame(CITIES[["name"]], geometry=gpd.points_from_xy(CITIES.lon, CITIES.lat), crs=4326)
    frame.to_parquet(tmp_path / "points.parquet")
    cells = plan(load_recipe(write(tmp_path, name="points.parquet")))
    assert sorted(cells.grid_cell) == sorted(set(located(CITIES)))


def test_the_points_file_counts_by_content_in_the_fingerprint(tmp_path):
    first = load_recipe(write(tmp_path, CITIES)).fingerprint()
    second = load_recipe(write(tmp_path, CITIES.head(2))).fingerprint()
    assert first != second


@pytest.mark.parametrize(
    ("aoi", "table", "message"),
    [
        ({"weight": "size"}, CITIES, "aoi.weight: no column 'size'"),
        ({"weight": "name"}, CITIES, "aoi.weight: column 'name' must hold a number in every row; see rows [0, 1"),
        ({}, CITIES.assign(lat=CITIES.lat + 100), "aoi.points: lat must be within [-90, 90]"),
        ({}, CITIES[["name"]], "aoi.points: no lat/lon columns (found: name)"),
    ],
)
def test_a_bad_points_table_fails_the_plan_naming_the_field(tmp_path, aoi, table, message):
    with pytest.raises(ValueError) as error:
        plan(load_recipe(write(tmp_path, table, **aoi)))
    assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize(
    ("aoi", "message"),
    [
        ({"points": "missing.csv"}, "aoi.points: "),
        ({"points": "points.txt"}, "a table of points is a .csv or .parquet file"),
        ({"points": "points.csv", "min_spacing_km": -1}, "aoi.min_spacing_km: input should be greater than 0"),
        ({"bbox": [0, 0, 1, 1], "weight": "population"}, "aoi: weight is only for points"),
        ({"points": "points.csv", "bbox": [0, 0, 1, 1]}, "give exactly one of bbox, file, cells or points"),
    ],
)
def test_bad_points_settings_fail_validation_naming_the_field(tmp_path, aoi, message):
    CITIES.to_csv(tmp_path / "points.csv", index=False)
    (tmp_path / "points.txt").write_text("lat,lon\n0,0\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "aoi": aoi, "time": {"start": "2023-01-01", "end": "2023-01-02"}}))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert message in str(error.value)
