"""Earth Engine sources (extra ``gee``): the contract of the STAC reader, with earthengine-api.

Per cell:
1. One ``computeValue`` lists the collection's images over the patch in the time window (scene cloud
   ≤ ``max_cloud`` filtered by the server): id, time, cloud cover, processing baseline.
2. With a quality band, the quality band alone of the best ``MAX_RANKED`` scenes is fetched on the patch
   grid to get the cloud over the *cell*; scenes above ``max_cloud`` are dropped. The ranking is the STAC
   reader's: least cloud over the cell, then nearest to the middle of the window, then id.
3. One ``computePixels`` on the cell's UTM grid returns every band as a NumPy array: the best scene on top
   of the others of the same UTC day (``ImageCollection.mosaic`` paints the last image on top), masked
   pixels unmasked to the profile's nodata, so nothing is invented.

Requests go to the high-volume endpoint unless the source names another; credentials come from the usual
ee mechanisms (``earthengine authenticate``, application default credentials, a service account), the
project from the source, ``EE_PROJECT`` or ``GOOGLE_CLOUD_PROJECT``. ee's own retries are turned off: the
one policy in ``remote.py`` retries 429s and 5xx, and the host limiter bounds requests in flight.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from eo_etl.sample import TRANSIENT, Sample
from eo_etl.sources.cell import Cell
from eo_etl.sources.patch import (
    NO_SCENE,
    SourceReader,
    cell_cloud,
    fill_pixels,
    no_clear_scene,
    rank_key,
    with_quality_band,
)
from eo_etl.sources.patch_grid import PatchGrid, patch_grid
from eo_etl.sources.profile import QualityRule
from eo_etl.sources.remote import host_of, is_transient, limited_call

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
MAX_RANKED = 8  # scenes whose quality band is fetched per cell

_initialized: tuple[str, str | None] | None = None
_initialize_lock = threading.Lock()


def initialize(url: str, project: str | None, credentials="persistent") -> None:
    """``ee.Initialize`` once per process for an endpoint and project; ee's own retries off."""
    global _initialized
    import ee

    with _initialize_lock:
        if _initialized == (url, project):
            return
        ee.Initialize(credentials=credentials, url=url, project=project)
        ee.data.setMaxRetries(0)
        _initialized = (url, project)


def missing_code(rule: QualityRule) -> int:
    """A quality value that the rule reads as 'no data': what masked quality pixels are unmasked to."""
    return rule.nodata_values[0] if rule.nodata_values else 1 << rule.nodata_bits[0]


@dataclass
class Scene:
    id: str
    when: datetime
    cloud: float  # fraction: the scene's, then the cell's once its quality band is read
    baseline: str | None
    scene_cloud: float | None  # percent, as the catalogue gives it


class EarthEngineReader(SourceReader):
    """Cuts patches of one Earth Engine source; thread-safe, one per source per worker."""

    def __init__(self, *args, **kwargs):  # SourceReader's
        import ee

        self.ee = ee
        super().__init__(*args, **kwargs)
        self.names = self.profile.earth_engine
        self.url = self.source.url or HIGH_VOLUME_URL
        project = self.source.project or os.environ.get("EE_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self.policy.call(initialize, self.url, project, host=host_of(self.url))
        optional = [self.names.cloud_property, self.names.baseline_property]
        self.columns = ["system:index", "system:time_start", *[p for p in optional if p]]  # of the scene listing

    # -------------------------------------------------------------------------------------- requests
    def grid(self, cell: Cell) -> PatchGrid:
        """The patch grid: Earth Engine computes on any grid; whole multiples of the resolution here."""
        return patch_grid(cell.epsg, cell.footprint, self.source.resolution_m, self.source.patch_size)

    def scenes_request(self, grid: PatchGrid):
        """The ee expression listing [id, time, cloud, baseline] of the images over the patch."""
        ee = self.ee
        region = ee.Geometry.Rectangle(list(grid.bounds), grid.crs, False)
        collection = (
            ee.ImageCollection(self.source.collection)
            .filterBounds(region)
            .filterDate(self.start.isoformat(), self.end.isoformat())
        )
        if self.names.cloud_property and self.source.max_cloud < 100:
            collection = collection.filter(ee.Filter.lte(self.names.cloud_property, self.source.max_cloud))
        return collection.reduceColumns(ee.Reducer.toList(len(self.columns)), self.columns).get("list")

    def pixels_request(self, scene_ids: list[str], bands: tuple[str, ...], grid: PatchGrid) -> dict:
        """The computePixels request: ``bands`` of the scenes (first on top) on ``grid``, as NumPy."""
        ee = self.ee
        images = [ee.Image(f"{self.source.collection}/{scene_id}") for scene_id in reversed(scene_ids)]
        image = ee.ImageCollection.fromImages(images).mosaic()
        parts = []
        for band in bands:
            part = image.select([self.names.bands[band]], [band])
            fill = self._nodata(band)
            parts.append(part if fill is None else part.unmask(fill, False))
        combined = parts[0] if len(parts) == 1 else ee.Image.cat(*parts)
        t = grid.transform
        return {
            "expression": combined,
            "fileFormat": "NUMPY_NDARRAY",
            "grid": {
                "dimensions": {"width": grid.width, "height": grid.height},
                "affineTransform": {
                    "scaleX": t.a,
                    "shearX": t.b,
                    "translateX": t.c,
                    "shearY": t.d,
                    "scaleY": t.e,
                    "translateY": t.f,
                },  # fmt: skip
                "crsCode": grid.crs,
            },
        }

    def _nodata(self, band: str) -> float | None:
        if self.quality is not None and band == self.quality.band:
            return missing_code(self.quality)
        return self.profile.nodata

    def _call(self, fn, *args):
        return limited_call(self.policy, self.limiter, self.url, fn, *args)

    # ----------------------------------------------------------------------------------------- cells
    def acquire(self, cell: Cell) -> Sample:
        """The cell's sample, or a rejected/failed one with its reason."""
        sample = cell.sample(self.source.name, self.start)
        try:
            return self._acquire(cell, sample)
        except Exception as error:  # recorded, not raised: the build goes on with the other cells
            return sample.fail(error, TRANSIENT if is_transient(error) else "")

    def _acquire(self, cell: Cell, sample: Sample) -> Sample:
        grid = self.grid(cell)
        rows = self._call(self.ee.data.computeValue, self.scenes_request(grid)) or []
        scenes = [self._scene(row) for row in rows]
        if not scenes:
            return sample.reject(NO_SCENE)
        ranked = sorted(scenes, key=self._rank)
        if self.quality is not None:
            seen = self._with_cell_cloud(ranked[:MAX_RANKED], grid)
            ranked = sorted((s for s in seen if s.cloud * 100 <= self.source.max_cloud), key=self._rank)
            if not ranked:
                return sample.reject(no_clear_scene(bool(seen), self.source.max_cloud))
        primary = ranked[0]
        # re-sorted: the cloud of the scenes seen is now the cloud over the cell
        same_day = [s for s in sorted(scenes, key=self._rank) if s.when.date() == primary.when.date()]
        used = [primary, *(s for s in same_day if s.id != primary.id)]
        needed = with_quality_band(self.bands, self.quality)
        array = self._call(self.ee.data.computePixels, self.pixels_request([s.id for s in used], needed, grid))
        quality = array[self.quality.band] if self.quality else None
        arrays = [array[band] for band in self.bands]
        fill_pixels(sample, grid, self.bands, arrays, [self._nodata(b) for b in self.bands], self.quality, quality)
        data = [not self.profile.bands[b].categorical for b in self.bands]
        sample.scales = tuple(self.names.scale if d else 1.0 for d in data)
        sample.offsets = tuple(self.names.offset if d else 0.0 for d in data)
        sample.timestamp = primary.when
        sample.product_id = primary.id
        sample.items = tuple(s.id for s in used)
        sample.hrefs = {b: tuple(f"ee://{self.source.collection}/{s.id}" for s in used) for b in self.bands}
        sample.processing_baseline = primary.baseline
        sample.scene_cloud = primary.scene_cloud
        return sample

    def _scene(self, row: list) -> Scene:
        values = dict(zip(self.columns, row))
        cloud = values.get(self.names.cloud_property) if self.names.cloud_property else None
        baseline = values.get(self.names.baseline_property) if self.names.baseline_property else None
        return Scene(
            values["system:index"],
            datetime.fromtimestamp(values["system:time_start"] / 1000, tz=UTC),
            0.0 if cloud is None else float(cloud) / 100,
            None if baseline is None else str(baseline),
            None if cloud is None else float(cloud),
        )

    def _rank(self, scene: Scene) -> tuple:
        return rank_key(scene.cloud, scene.when, scene.id, self.target_time)

    def _with_cell_cloud(self, scenes: list[Scene], grid: PatchGrid) -> list[Scene]:
        """The scenes with any valid pixel on the grid, their cloud now the cloud over the cell."""
        seen = []
        for scene in scenes:
            band = self.quality.band
            answer = self._call(self.ee.data.computePixels, self.pixels_request([scene.id], (band,), grid))
            cloud = cell_cloud(self.quality, answer[band])
            if cloud is not None:
                scene.cloud = cloud
                seen.append(scene)
        return seen
