"""Mapping a user's table of points onto the grid: read CSV or (Geo)Parquet, add the cell columns, write."""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from eo_etl.grid.majortom import MajorTomGrid


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
