"""Reading one asset onto a sample's pixel grid.

When the file is already on the grid's lattice (same CRS, same pixel size, whole-pixel offset) the patch
is a plain windowed read, so its pixels are the file's own. Otherwise GDAL warps it (WarpedVRT), reading
only the blocks it needs. Pixels outside the file are the nodata value, never invented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import WindowError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from eo_etl.sources.patch_grid import PatchGrid


@dataclass(frozen=True)
class BandRead:
    pixels: NDArray  # (height, width), the file's dtype
    nodata: float | None


def fill_value(dtype: np.dtype | str, nodata: float | None) -> float | None:
    """The nodata value to fill with: the file's, else NaN for floats, else None (no fill possible)."""
    if nodata is not None:
        return nodata
    return float("nan") if np.issubdtype(np.dtype(dtype), np.floating) else None


def _aligned_offset(src: rasterio.DatasetReader, grid: PatchGrid) -> tuple[int, int] | None:
    """(col, row) of the grid's corner in the file when the grid is on the file's own pixel lattice."""
    t = src.transform
    if src.crs is None or src.crs.to_epsg() != grid.epsg:
        return None
    if t.b != 0 or t.d != 0 or t.a != grid.transform.a or t.e != grid.transform.e:
        return None
    col = (grid.transform.c - t.c) / t.a
    row = (grid.transform.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def read_band(
    path: str,
    grid: PatchGrid,
    *,
    band: int = 1,
    resampling: str = "nearest",
    nodata: float | None = None,
) -> BandRead:
    """The ``band`` of the raster at ``path`` on ``grid``; ``nodata`` is used when the file declares none."""
    with rasterio.open(path) as src:
        if src.crs is None and src.gcps[0]:  # radar geometry (Sentinel-1 GRD): the warp here cannot place it
            raise ValueError("georeferenced only by ground control points (radar geometry); no grid to cut from")
        dtype = src.dtypes[band - 1]
        nodata = fill_value(dtype, src.nodata if src.nodata is not None else nodata)
        offset = _aligned_offset(src, grid)
        if offset is not None:
            pixels = _window_read(src, band, offset, grid, nodata)
        else:
            pixels = _warped_read(src, band, grid, resampling, nodata)
    return BandRead(pixels, nodata)


def _window_read(src, band: int, offset: tuple[int, int], grid: PatchGrid, nodata: float | None) -> NDArray:
    col, row = offset
    wanted = Window(col, row, grid.width, grid.height)
    try:
        inside = wanted.intersection(Window(0, 0, src.width, src.height))
    except WindowError:  # the grid misses the file entirely
        inside = None
    if inside == wanted:
        return src.read(band, window=wanted)
    out = np.full((grid.height, grid.width), 0 if nodata is None else nodata, dtype=src.dtypes[band - 1])
    if inside is not None:
        r0, c0 = int(inside.row_off) - row, int(inside.col_off) - col
        out[r0 : r0 + int(inside.height), c0 : c0 + int(inside.width)] = src.read(band, window=inside)
    return out


def _warped_read(src, band: int, grid: PatchGrid, resampling: str, nodata: float | None) -> NDArray:
    options = {"src_nodata": nodata, "nodata": nodata} if nodata is not None else {}
    with WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling[resampling],
        **options,
    ) as vrt:
        return vrt.read(band)
