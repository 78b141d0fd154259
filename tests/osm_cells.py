"""Index-like rows for the cells of the Major TOM grid over an area: what a labels stage reads of a sample (its
identity and its pixel grid), without imagery. Used by the OSM label tests and bench/labels.py."""

from __future__ import annotations

from datetime import UTC, datetime

from eo_etl.grid import get_grid
from eo_etl.sample import SampleId
from eo_etl.sources.patch_grid import patch_grid


def cell_rows(
    bounds: tuple[float, float, float, float], distance_km: float = 0.1, resolution_m: float = 2.0
) -> list[dict]:
    """One row per grid cell over ``bounds`` (west, south, east, north): the cell's UTM footprint as a square
    patch of ``resolution_m`` pixels, as a source at that resolution would have stored it."""
    grid = get_grid("majortom", distance_km)
    rows, cols = grid.cells_in_bbox(*bounds)
    footprints = grid.footprints(rows, cols)
    size = round(grid.footprint_m / resolution_m)
    start = datetime(2024, 6, 1, tzinfo=UTC)
    out = []
    for i, name in enumerate(grid.names(rows, cols)):
        fp = (footprints.xmin[i], footprints.ymin[i], footprints.xmax[i], footprints.ymax[i])
        patch = patch_grid(int(footprints.epsg[i]), fp, resolution_m, size)
        out.append({
            "sample_id": str(SampleId(str(name), "s2", start)), "grid_cell": str(name), "crs": patch.crs,
            "transform": list(patch.transform)[:6], "height": patch.height, "width": patch.width,
            "timestamp": start, "status": "ok",
        })  # fmt: skip
    return out
