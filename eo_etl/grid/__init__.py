"""Grids of cells over the Earth: the Major TOM grid, its definitions, and the table of cells."""

from eo_etl.grid.definitions import GridDefinition, get_grid, grid_definition, grid_definitions
from eo_etl.grid.majortom import CellNameError, Footprints, MajorTomGrid, unique_cells, utm_epsg

__all__ = [
    "CellNameError",
    "Footprints",
    "GridDefinition",
    "MajorTomGrid",
    "get_grid",
    "grid_definition",
    "grid_definitions",
    "unique_cells",
    "utm_epsg",
]
