"""Planning: the recipe's area of interest → the grid cells a build covers.

A plan of any size is made in bounded memory: the cells are found in bands of whole grid rows, south to north,
of about ``BAND_CELLS`` cells each, and made into tables of at most ``TABLE_CELLS`` rows, each written as it comes
(a world on the 1 km grid is 509 M cells, a legitimate plan; a build takes at most ``MAX_CELLS`` of them, and says
so before it lists any), joined into row groups of ``PLAN_ROW_GROUP`` rows. What the driver holds while planning
is one such table, one row group's Arrow columns and one band's cells (see ``BAND_CELLS``), whatever the plan's
size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from geopandas.io.arrow import _geopandas_to_arrow
from shapely.geometry.base import BaseGeometry

from eo_etl.grid import MajorTomGrid, get_grid, unique_cells
from eo_etl.grid.points import MAX_POINTS, PointsError, points_cells, read_points
from eo_etl.grid.table import cells_frame
from eo_etl.pipeline.plan_rows import PLAN_ROW_GROUP
from eo_etl.recipe import Recipe
from eo_etl.recipe.models import MAX_CELLS, Aoi, too_many_cells
from eo_etl.store.location import Location
from eo_etl.store.row_groups import row_groups

PLAN_NAME = "plan.parquet"  # the plan beside a dataset: its cells, the rows the build's workers read
# cells made into a table at once: their names, polygons and footprints take about 1.5 kB a cell at the peak (GEOS
# and pyarrow's buffers included), so ~3 MB. A quarter of the plan's row group (PLAN_ROW_GROUP, which workers read
# by ranges; write_plan joins the tables into them): the driver's peak stops growing at 2 k cells (at 8 k, a table a
# row group, it grew by 25 MB from 1 k to 8 k cells), for 4 % more planning time
TABLE_CELLS = 2048
# cells found at once, in a band of grid rows: for an AOI file, a box per candidate cell of the band tested against
# it, about 500 bytes a cell at the peak (16 of them the cell numbers kept), so ~32 MB at most (a grid row more at
# most, 40,000 cells on the 1 km grid): bounded, reached from ~65 k cells on. Larger than a table: every band walks
# all the AOI's parts once (France at 1 km: 17 walks, not 135 in bands of 8,192).
BAND_CELLS = 65_536


def plan(recipe: Recipe) -> gpd.GeoDataFrame:
    """The cells of the recipe's AOI, south to north and west to east, with Major TOM's columns; refused (a
    ValueError naming the AOI) beyond what a build takes, before they are listed."""
    check_buildable(recipe)
    bands = list(plan_bands(recipe))
    if len(bands) > 1:
        return pd.concat(bands, ignore_index=True)
    return bands[0] if bands else cells_frame(get_grid(recipe.grid.kind, recipe.grid.distance_km), [], [])


def check_buildable(recipe: Recipe) -> None:
    """Raise a ValueError naming the AOI when it has more cells than a build takes (``MAX_CELLS``)."""
    grid = get_grid(recipe.grid.kind, recipe.grid.distance_km)
    count = estimate_cells(grid, recipe.aoi)
    if count > MAX_CELLS:
        aoi = recipe.aoi
        field = next(f"aoi.{name}" for name in ("bbox", "file", "points", "cells") if getattr(aoi, name) is not None)
        raise ValueError(too_many_cells(field, count, grid))


def plan_bands(
    recipe: Recipe, band_cells: int = BAND_CELLS, table_cells: int = TABLE_CELLS
) -> Iterator[gpd.GeoDataFrame]:
    """The cells of the recipe's AOI as tables of ``table_cells`` cells (the last fewer), south to north, found in
    bands of whole grid rows of about ``band_cells``: together they are :func:`plan`'s table, for an AOI of any
    size, cut the same whatever ``band_cells``."""
    grid = get_grid(recipe.grid.kind, recipe.grid.distance_km)
    aoi = recipe.aoi
    if aoi.cells is not None or aoi.points is not None:
        yield from _tables(grid, [aoi_cells(grid, aoi)], table_cells)  # a list the recipe holds or a table: bounded
    else:
        yield from _tables(grid, _banded_cells(grid, aoi, band_cells), table_cells)


def _banded_cells(grid: MajorTomGrid, aoi: Aoi, band_cells: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row_u, col_r) of the cells of a bbox or file AOI, a band of whole grid rows at a time, south to north."""
    geometry = read_aoi_file(aoi) if aoi.file is not None else None
    boxes = [aoi.bbox] if geometry is None else [shapely.bounds(part) for part in shapely.get_parts(geometry)]
    area = None if geometry is None else _area(geometry)
    for first, last in row_bands(grid, boxes, band_cells):
        if geometry is None:
            yield grid.cells_in_bbox(*_in_rows(grid, aoi.bbox, first, last))
        else:
            yield geometry_cells(grid, geometry, row_range=(first, last), area=area)


def _tables(
    grid: MajorTomGrid, bands: Iterable[tuple[np.ndarray, np.ndarray]], size: int
) -> Iterator[gpd.GeoDataFrame]:
    """The cells of consecutive bands as tables of ``size`` rows, the last one fewer: a band may hold more (one
    row of the 1 km grid is up to 40,000 cells), and the table, not the cell numbers, is what takes the memory.
    A band's last cells wait for the next band's, so the tables (the plan's row groups) are the same whatever
    the bands."""
    rows = cols = np.empty(0, dtype=np.int64)
    for band_rows, band_cols in bands:
        rows, cols = np.concatenate([rows, band_rows]), np.concatenate([cols, band_cols])
        whole = len(rows) - len(rows) % size
        for start in range(0, whole, size):
            yield cells_frame(grid, rows[start : start + size], cols[start : start + size])
        rows, cols = rows[whole:].copy(), cols[whole:].copy()
    if len(rows):
        yield cells_frame(grid, rows, cols)


def write_plan(cells: gpd.GeoDataFrame | Iterable[gpd.GeoDataFrame], path: Location | Path | str) -> Path | str:
    """Write the plan, one table or bands of it, as GeoParquet (a path or a URL), whole or not at all: a killed
    run never leaves half. Bands are written as they come, so the plan never has to fit in memory."""
    target = Location.of(path)
    bands = [cells] if isinstance(cells, gpd.GeoDataFrame) else cells
    tables = (_geopandas_to_arrow(band, index=False) for band in bands)
    with target.staged_file() as partial:
        writer = None
        # small row groups: a worker reads the rows around its range of cells, not the plan (plan_rows.py)
        for group in row_groups(tables, PLAN_ROW_GROUP):
            if writer is None:
                schema = _plan_schema(group.schema)
                writer = pq.ParquetWriter(partial, schema)
            writer.write_table(group.replace_schema_metadata(schema.metadata), row_group_size=PLAN_ROW_GROUP)
            pa.default_memory_pool().release_unused()  # mimalloc keeps freed pages: held, they grew to +25 MB
        if writer is None:  # no bands: an empty plan
            cells_frame(get_grid(), [], []).to_parquet(partial, index=False, row_group_size=PLAN_ROW_GROUP)
        else:
            writer.close()
    return target.native


def _plan_schema(first: pa.Schema) -> pa.Schema:
    """The GeoParquet metadata of the first row group, less its bbox (optional): that of the whole is only known at
    the end, after the schema is written."""
    geo = json.loads(first.metadata[b"geo"])
    for column in geo["columns"].values():
        column.pop("bbox", None)
    return first.with_metadata({**first.metadata, b"geo": json.dumps(geo).encode()})


def estimate_cells(grid: MajorTomGrid, aoi: Aoi) -> int:
    """At least as many cells as the AOI covers, from its bounds alone (a file is read, its cells not listed)."""
    if aoi.cells is not None:
        return len(aoi.cells)
    if aoi.points is not None:
        return MAX_POINTS  # a table holds at most as many points (so cells), fewer than a build takes: not read here
    boxes = [aoi.bbox] if aoi.bbox is not None else map(shapely.bounds, shapely.get_parts(read_aoi_file(aoi)))
    return sum(grid.count_in_bbox(*box) for box in boxes)


def row_bands(grid: MajorTomGrid, boxes: Iterable, band_cells: int) -> list[tuple[int, int]]:
    """(first, last) row indices of consecutive bands of grid rows holding about ``band_cells`` cells of the
    boxes each; rows no box reaches are left out."""
    counts = np.zeros(grid.n_rows, dtype=np.int64)
    for west, south, east, north in boxes:
        spans = [(west, 180.0), (-180.0, east)] if west > east else [(west, east)]
        for w, e in spans:  # a point on a row's edge belongs to the row below: reach a hair past each edge
            idx, lo, hi = grid.column_ranges_in_bbox(w, south - 1e-9, e, north + 1e-9)
            np.add.at(counts, idx, np.maximum(hi - lo + 1, 0) + 1)
    used = np.flatnonzero(counts)
    if not used.size:
        return []
    band = (np.cumsum(counts[used]) - counts[used]) // band_cells  # a band may end one row past band_cells
    starts = np.flatnonzero(np.diff(band, prepend=-1))
    ends = np.append(starts[1:], used.size) - 1
    return [(int(used[a]), int(used[b])) for a, b in zip(starts, ends)]


def _in_rows(grid: MajorTomGrid, box, first: int, last: int) -> tuple[float, float, float, float]:
    """The part of a (west, south, east, north) box within grid rows ``first`` to ``last`` (indices)."""
    west, south, east, north = box
    top = grid.bounds(grid.row_u[last : last + 1], grid.n_east[last : last + 1] - 1)[3][0]
    return west, max(south, float(grid.row_lat[first])), east, min(north, float(top))


def _area(geometry: BaseGeometry) -> BaseGeometry | None:
    """The union of the geometry's polygons and lines, prepared for many tests; None when it has only points."""
    parts = shapely.get_parts(geometry)
    shapes = parts[shapely.get_type_id(parts) != 0]
    if not len(shapes):
        return None
    area = shapely.union_all(shapes)
    shapely.prepare(area)
    return area


def aoi_cells(grid: MajorTomGrid, aoi: Aoi) -> tuple[np.ndarray, np.ndarray]:
    """(row_u, col_r) of the cells whose area the AOI overlaps (touching a cell's edge is not enough).

    Point features select the cell that contains them, by the grid's own rule for points on lines.
    """
    if aoi.cells is not None:
        rows, cols = grid.parse(aoi.cells)
        return unique_cells(rows, cols)
    if aoi.bbox is not None:
        return grid.cells_in_bbox(*aoi.bbox)
    if aoi.points is not None:
        try:
            table = read_points(aoi.points)
        except PointsError as error:
            raise PointsError(f"aoi.points: {error}") from None
        return points_cells(grid, table, aoi.weight, aoi.min_spacing_km)
    return geometry_cells(grid, read_aoi_file(aoi))


def read_aoi_file(aoi: Aoi) -> BaseGeometry:
    """The union of the features of the AOI file, in EPSG:4326 (assumed when the file has no CRS)."""
    frame = gpd.read_file(aoi.file, layer=aoi.layer)
    if frame.empty:
        raise ValueError(f"aoi.file: {aoi.file} has no features")
    if frame.crs is not None and frame.crs.to_epsg() != 4326:
        frame = frame.to_crs(4326)
    return frame.geometry.union_all()


def geometry_cells(
    grid: MajorTomGrid,
    geometry: BaseGeometry,
    row_range: tuple[int, int] | None = None,
    area: BaseGeometry | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cells overlapping any geometry in EPSG:4326: polygons and lines by area, points by containment; only
    those in the grid rows ``row_range`` (first and last index) when given. ``area``: :func:`_area` of the
    geometry, when the caller has it already."""
    first, last = row_range if row_range is not None else (0, grid.n_rows - 1)
    parts = shapely.get_parts(geometry)
    points = parts[shapely.get_type_id(parts) == 0]
    shapes = parts[shapely.get_type_id(parts) != 0]
    found_rows, found_cols = [], []
    if len(points):
        rows, cols, inside = grid.locate(shapely.get_y(points), shapely.get_x(points))
        inside &= (rows - grid.row_u[first] >= 0) & (rows - grid.row_u[last] <= 0)
        found_rows.append(rows[inside])
        found_cols.append(cols[inside])
    if len(shapes):
        area = area if area is not None else _area(geometry)
        for part in shapes:
            west, south, east, north = _in_rows(grid, shapely.bounds(part), first, last)
            if south > north:  # the part lies outside these rows (a line may have no height)
                continue
            rows, cols = grid.cells_in_bbox(west, south, east, north)
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
