"""Cells as a table: the Major TOM metadata columns and the cell polygons, ready for GeoParquet."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
from numpy.typing import ArrayLike

from eo_etl.grid.majortom import MajorTomGrid

CELL_COLUMNS = ["grid_cell", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon", "crs"]


def cells_frame(grid: MajorTomGrid, row_u: ArrayLike, col_r: ArrayLike) -> gpd.GeoDataFrame:
    """One row per cell with Major TOM's columns and the cell's lat/lon polygon as geometry.

    ``centre_lat``/``centre_lon`` are the centre of the cell's UTM sample footprint, the centre of the
    image a sample holds; ``crs`` is that footprint's UTM zone ("EPSG:32633").
    """
    row_u = np.asarray(row_u, dtype=np.int64)
    col_r = np.asarray(col_r, dtype=np.int64)
    footprints = grid.footprints(row_u, col_r)
    centre_lon, centre_lat = footprints.centre_lonlat()
    west, south, east, north = grid.bounds(row_u, col_r)
    return gpd.GeoDataFrame(
        {
            "grid_cell": grid.names(row_u, col_r).astype(str),
            "grid_row_u": row_u,
            "grid_col_r": col_r,
            "centre_lat": centre_lat,
            "centre_lon": centre_lon,
            "crs": np.char.add("EPSG:", footprints.epsg.astype(str)),
        },
        geometry=shapely.box(west, south, east, north),
        crs="EPSG:4326",
    )
