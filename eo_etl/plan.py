"""Planning: the recipe's area of interest → the grid cells a build covers."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from eo_etl.grid import MajorTomGrid, get_grid, unique_cells
from eo_etl.grid.table import cells_frame
from eo_etl.recipe import Recipe
from eo_etl.recipe.models import MAX_CELLS, Aoi, too_many_cells
from eo_etl.store.location import Location


def plan(recipe: Recipe) -> gpd.GeoDataFrame:
    """The cells of the recipe's AOI, south to north and west to east, with Major TOM's columns."""
    grid = get_grid(recipe.grid.kind, recipe.grid.distance_km)
    rows, cols = aoi_cells(grid, recipe.aoi)
    return cells_frame(grid, rows, cols)


def write_plan(cells: gpd.GeoDataFrame, path: Location | Path | str) -> Path | str:
    """Write the plan as GeoParquet (a path or a URL), whole or not at all: a killed run never leaves half."""
    target = Location.of(path)
    with target.staged_file() as partial:
        cells.to_parquet(partial, index=False)
    return target.native


def aoi_cells(grid: MajorTomGrid, aoi: Aoi) -> tuple[np.ndarray, np.ndarray]:
    """(row_u, col_r) of the cells whose area the AOI overlaps (touching a cell's edge is not enough).

    Point features select the cell that contains them, by the grid's own rule for points on lines.
    """
    if aoi.cells is not None:
        rows, cols = grid.parse(aoi.cells)
        return unique_cells(rows, cols)
    if aoi.bbox is not None:
        return grid.cells_in_bbox(*aoi.bbox)
    geometry = read_aoi_file(aoi)
    count = sum(grid.count_in_bbox(*shapely.bounds(part)) for part in shapely.get_parts(geometry))
    if count > MAX_CELLS:  # before the cells are listed: their arrays would not fit in memory
        raise ValueError(too_many_cells("aoi.file", count, grid))
    return geometry_cells(grid, geometry)


def read_aoi_file(aoi: Aoi) -> BaseGeometry:
    """The union of the features of the AOI file, in EPSG:4326 (assumed when the file has no CRS)."""
    frame = gpd.read_file(aoi.file, layer=aoi.layer)
    if frame.empty:
        raise ValueError(f"aoi.file: {aoi.file} has no features")
    if frame.crs is not None and frame.crs.to_epsg() != 4326:
        frame = frame.to_crs(4326)
    return frame.geometry.union_all()


def geometry_cells(grid: MajorTomGrid, geometry: BaseGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Cells overlapping any geometry in EPSG:4326: polygons and lines by area, points by containment."""
    parts = shapely.get_parts(geometry)
    points = parts[shapely.get_type_id(parts) == 0]
    shapes = parts[shapely.get_type_id(parts) != 0]
    found_rows, found_cols = [], []
    if len(points):
        rows, cols, inside = grid.locate(shapely.get_y(points), shapely.get_x(points))
        found_rows.append(rows[inside])
        found_cols.append(cols[inside])
    if len(shapes):
        area = shapely.union_all(shapes)
        shapely.prepare(area)
        for part in shapes:
            rows, cols = grid.cells_in_bbox(*shapely.bounds(part))
            west, south, east, north = grid.bounds(rows, cols)
            # the eastmost cell of a row may reach past 180°: test its part beyond from -180° too
            hit = _overlaps(shapely.box(west, south, east, north), area)
            hit |= (east > 180) & _overlaps(shapely.box(west - 360, south, east - 360, north), area)
            found_rows.append(rows[hit])
            found_cols.append(cols[hit])
    if not found_rows:
        return unique_cells([], [])
    return unique_cells(np.concatenate(found_rows), np.concatenate(found_cols))


def _overlaps(boxes: np.ndarray, area: BaseGeometry) -> np.ndarray:
    return shapely.intersects(boxes, area) & ~shapely.touches(boxes, area)
