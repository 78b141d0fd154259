"""The cells a build acquires: each grid cell with its UTM sample footprint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import geopandas as gpd
from rasterio.warp import transform_bounds

from eo_etl.grid import get_grid
from eo_etl.recipe import Recipe
from eo_etl.sample import Sample


@dataclass(frozen=True)
class Cell:
    name: str
    row_u: int
    col_r: int
    epsg: int
    footprint: tuple[float, float, float, float]  # UTM metres
    centre_lat: float
    centre_lon: float

    @cached_property
    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """The footprint's (west, south, east, north) in degrees, edges densified: what searches and
        scene footprints are compared with."""
        return transform_bounds(f"EPSG:{self.epsg}", "EPSG:4326", *self.footprint, densify_pts=21)

    def sample(self, source: str, window_start: datetime) -> Sample:
        """An empty sample of this cell, chosen from the window beginning at ``window_start``, to be filled,
        rejected or failed."""
        return Sample(
            self.name, self.row_u, self.col_r, source, f"EPSG:{self.epsg}",
            centre_lat=self.centre_lat, centre_lon=self.centre_lon, window_start=window_start,
        )  # fmt: skip


def cells_of(recipe: Recipe, frame: gpd.GeoDataFrame) -> list[Cell]:
    """The cells of a plan with their UTM footprints."""
    grid = get_grid(recipe.grid.kind, recipe.grid.distance_km)
    rows, cols = frame["grid_row_u"].to_numpy(), frame["grid_col_r"].to_numpy()
    fp = grid.footprints(rows, cols)
    return [
        Cell(name, int(r), int(c), int(e), (float(x0), float(y0), float(x1), float(y1)), float(lat), float(lon))
        for name, r, c, e, x0, y0, x1, y1, lat, lon in zip(
            frame["grid_cell"],
            rows,
            cols,
            fp.epsg,
            fp.xmin,
            fp.ymin,
            fp.xmax,
            fp.ymax,
            frame["centre_lat"],
            frame["centre_lon"],
        )  # fmt: skip
    ]
