"""Mapping a user's table of points onto the grid: read CSV or (Geo)Parquet, add the cell columns, write; or pick
the cells a recipe's ``aoi.points`` names (one sample per cell, optionally kept ``min_spacing_km`` apart)."""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from eo_etl.grid.majortom import MajorTomGrid, unique_cells

MAX_POINTS = 1_000_000  # rows of a recipe's points table (SSL4EO-S12 sampled 250,000 places)
EARTH_RADIUS_KM = 6371.0088  # mean radius: spacing is a great-circle distance between sample centres


class PointsError(ValueError):
    """A points table that cannot be read or has no usable coordinates."""


def read_points(path: Path) -> pd.DataFrame:
    """A CSV or (Geo)Parquet table with ``lat``/``lon`` columns, or point geometries."""
    if not path.is_file():
        raise PointsError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".geoparquet", ".pq"):
            return _read_parquet(path)
    except (ValueError, OSError) as error:
        raise PointsError(f"cannot read {path}: {error}") from None
    raise PointsError(f"{path}: expected a .csv or .parquet file")


def _read_parquet(path: Path) -> pd.DataFrame:
    if b"geo" in (pq.read_schema(path).metadata or {}):  # GeoParquet
        return gpd.read_parquet(path)
    return pd.read_parquet(path)


def locate_points(grid: MajorTomGrid, table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The table with ``grid_cell, grid_row_u, grid_col_r`` added, and how many points have no cell.

    Coordinates come from ``lat``/``lon`` columns, or else from point geometries (in EPSG:4326).
    Points outside the grid (beyond its latitudes, or missing) get empty cell columns.
    """
    lat, lon = _coordinates(table)
    with np.errstate(invalid="ignore"):
        bad = (np.abs(lat) > 90) | (np.abs(lon) > 180)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise PointsError(f"lat must be within [-90, 90] and lon within [-180, 180]; see rows {rows}")
    row_u, col_r, inside = grid.locate(lat, lon)
    out = table.copy()
    outside = pd.Series(~inside, index=out.index)
    out["grid_cell"] = pd.Series(grid.names(row_u, col_r), index=out.index, dtype="string").mask(outside)
    out["grid_row_u"] = pd.Series(row_u, index=out.index, dtype="Int64").mask(outside)
    out["grid_col_r"] = pd.Series(col_r, index=out.index, dtype="Int64").mask(outside)
    return out, int((~inside).sum())


def _coordinates(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if {"lat", "lon"} <= set(table.columns):
        try:
            return table["lat"].to_numpy(dtype=float), table["lon"].to_numpy(dtype=float)
        except (TypeError, ValueError):
            raise PointsError("lat and lon columns must be numbers") from None
    if isinstance(table, gpd.GeoDataFrame):
        geometry = table.geometry
        if table.crs is not None and table.crs.to_epsg() != 4326:
            geometry = geometry.to_crs(4326)
        if not (geometry.geom_type == "Point").all():
            raise PointsError("geometries must be points")
        return geometry.y.to_numpy(), geometry.x.to_numpy()
    raise PointsError(f"no lat/lon columns (found: {', '.join(map(str, table.columns))})")


def write_points(table: pd.DataFrame, out: Path | None) -> None:
    """Write next to the input's format by suffix; CSV on stdout when ``out`` is None."""
    if out is None:
        _plain(table).to_csv(sys.stdout, index=False)
        sys.stdout.flush()  # whole lines out before any warning on stderr, also when both share one pipe
    elif out.suffix.lower() == ".csv":
        _plain(table).to_csv(out, index=False)
    elif out.suffix.lower() in (".parquet", ".geoparquet", ".pq"):
        table.to_parquet(out, index=False)
    else:
        raise PointsError(f"{out}: write to a .csv or .parquet file")


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """CSV has no geometry type: geometries are written as WKT."""
    if isinstance(table, gpd.GeoDataFrame):
        table = pd.DataFrame(table).assign(geometry=table.geometry.to_wkt())
    return table


def points_cells(
    grid: MajorTomGrid, table: pd.DataFrame, weight: str | None = None, min_spacing_km: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(row_u, col_r) of the cells that contain the points, sorted as every AOI's cells are.

    Points are taken by ``weight`` (highest first) and then by row order; a cell is kept for the first of its
    points, and, with ``min_spacing_km``, only when its centre (the sample's) is at least that far from every cell
    kept before it, so that samples do not overlap: the same table always keeps the same cells. Points outside the
    grid are left out. Errors name the recipe field (``aoi.points``, ``aoi.weight``).
    """
    if len(table) > MAX_POINTS:
        raise PointsError(f"aoi.points: {len(table):,} points; at most {MAX_POINTS:,}")
    try:
        lat, lon = _coordinates(table)
    except PointsError as error:
        raise PointsError(f"aoi.points: {error}") from None
    order = np.arange(len(table))
    if weight is not None:
        if weight not in table.columns:
            raise PointsError(f"aoi.weight: no column {weight!r} (found: {', '.join(map(str, table.columns))})"[:500])
        weights = pd.to_numeric(table[weight], errors="coerce").to_numpy(dtype=float)
        if np.isnan(weights).any():
            rows = np.flatnonzero(np.isnan(weights))[:5].tolist()
            raise PointsError(f"aoi.weight: column {weight!r} must hold a number in every row; see rows {rows}")
        order = np.lexsort((order, -weights))  # highest weight first, then row order
    with np.errstate(invalid="ignore"):
        bad = ~((np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise PointsError(f"aoi.points: lat must be within [-90, 90] and lon within [-180, 180]; see rows {rows}")
    rows, cols, inside = grid.locate(lat[order], lon[order])
    rows, cols = rows[inside], cols[inside]
    _, first = np.unique(np.stack([rows, cols], axis=1), axis=0, return_index=True)
    first = np.sort(first)  # each cell once, at its best point's place in the order
    rows, cols = rows[first], cols[first]
    if min_spacing_km:
        kept = _spaced(*grid.footprints(rows, cols).centre_lonlat(), min_spacing_km)
        rows, cols = rows[kept], cols[kept]
    return unique_cells(rows, cols)


def _spaced(lon: np.ndarray, lat: np.ndarray, spacing_km: float) -> np.ndarray:
    """Indices of the points kept, in order, each at least ``spacing_km`` from every one kept before it. Points go
    into buckets of the spacing's chord on the unit sphere, so each is checked against its 27 neighbouring
    buckets only."""
    lon_r, lat_r = np.radians(lon), np.radians(lat)
    xyz = np.stack([np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)], axis=1)
    chord = 2 * np.sin(min(spacing_km / EARTH_RADIUS_KM, np.pi) / 2)
    keys = np.floor(xyz / chord).astype(np.int64)
    buckets: dict[tuple, list[int]] = {}
    kept = []
    near = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    for i, (x, y, z) in enumerate(keys.tolist()):
        others = [j for dx, dy, dz in near for j in buckets.get((x + dx, y + dy, z + dz), ())]
        if others and (np.linalg.norm(xyz[others] - xyz[i], axis=1) < chord).any():
            continue
        buckets.setdefault((x, y, z), []).append(i)
        kept.append(i)
    return np.asarray(kept, dtype=np.int64)
