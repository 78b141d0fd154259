"""A source for benchmarks and tests only: deterministic pixels made from the cell's name, with no I/O, so that
the pipeline's own costs (planning, state, shards, the index) are measured apart from any network.

The same cell, source and time window always give the same sample: pixels drawn from a generator seeded by a
hash of the cell and source names, in the profile's bands and pixel type (``dtype``: Sentinel-1 and the DEM are
float32, land cover uint8) on the cell's UTM patch grid, with its nodata, dated at the middle of the window.
Nothing in it is imagery: never publish a dataset built from it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from eo_etl.sample import Sample
from eo_etl.sources.cell import Cell
from eo_etl.sources.patch import SourceReader
from eo_etl.sources.patch_grid import patch_grid

PRODUCT_PREFIX = "synthetic-"
VALUES = (1, 10_000)  # a reflectance-like range: above every profile's nodata (0 or negative), below uint8's 255


def synthetic_pixels(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Pixels of the profile's ``dtype`` within ``VALUES``; integers also below the type's largest value (a class
    map's nodata, such as MODIS's 255), so that no pixel is nodata."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return rng.uniform(*VALUES, size=shape).astype(kind)
    return rng.integers(VALUES[0], min(VALUES[1], np.iinfo(kind).max - 1), size=shape, dtype=kind, endpoint=True)


class SyntheticReader(SourceReader):
    """Makes each cell's sample from its name alone."""

    def acquire(self, cell: Cell) -> Sample:
        sample = cell.sample(self.source.name, self.start)
        grid = patch_grid(cell.epsg, cell.footprint, self.source.resolution_m, self.source.patch_size)
        seed = hashlib.sha256(f"{cell.name}/{self.source.name}".encode()).digest()[:8]
        rng = np.random.default_rng(int.from_bytes(seed, "little"))
        shape = (len(self.bands), grid.height, grid.width)
        sample.pixels = synthetic_pixels(rng, shape, self.profile.dtype)
        sample.nodata = self.profile.nodata
        sample.bands = self.bands
        sample.transform = tuple(grid.transform)[:6]
        sample.scales = (1.0,) * len(self.bands)
        sample.offsets = (0.0,) * len(self.bands)
        sample.timestamp = self.target_time
        sample.product_id = f"{PRODUCT_PREFIX}{cell.name}"
        sample.items = (sample.product_id,)
        sample.scene_cloud, sample.nodata_fraction, sample.cloud_basis = 0.0, 0.0, "scene"
        return sample
