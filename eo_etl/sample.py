"""A sample: one source's pixels for one grid cell, with where they came from and how good they are.

Every stage takes and returns samples. A sample that could not be made keeps its place with
``status`` and ``reason`` set, so a failure is recorded, never a silent gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from eo_etl.store.index_row import SAMPLE_COLUMNS, IndexRow
from eo_etl.text import redacted

OK, REJECTED, FAILED = "ok", "rejected", "failed"
TRANSIENT = "transient: "  # starts the reason of a sample failed by a fault that may pass (a rerun retries it)


@dataclass(frozen=True, order=True)
class SampleId:
    """The one identity of a sample: its grid cell, its source, and the start (UTC) of the time window it was
    chosen from — the build's window (a dataset version), or with ``time.slices`` the slice's start (``all`` and
    ``k_best``: the acquisition day, as a slice holds several samples then; sources/slices.py).

    The string form, ``454U_120R.sentinel-2-l2a.20240601``, is the ``sample_id`` column of the index and of
    every stage table. It never changes for a sample: a rerun or a later version adds rows, it renames none.
    The parts are joined by ``.``, which neither a cell name nor a source name (an Identifier) holds.
    """

    cell: str
    source: str
    start: datetime

    def __str__(self) -> str:
        start = self.start.astimezone(UTC) if self.start.tzinfo else self.start
        stamp = f"{start:%Y%m%d}" if (start.hour, start.minute, start.second) == (0, 0, 0) else f"{start:%Y%m%dT%H%M%S}"
        return f"{self.cell}.{self.source}.{stamp}"

    @classmethod
    def parse(cls, text: str) -> SampleId:
        """The identity a ``sample_id`` string names (``str()``'s inverse)."""
        try:
            cell, source, stamp = text.split(".")
            start = datetime.strptime(stamp, "%Y%m%dT%H%M%S" if "T" in stamp else "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"not a sample id: {text[:100]!r} (expected CELL.SOURCE.YYYYMMDD)") from None
        return cls(cell, source, start)


@dataclass
class Sample:
    """One source's pixels for one grid cell, with their provenance, quality and status (``ok``, ``rejected`` or
    ``failed`` with a ``reason``); :meth:`row` is its index row, :attr:`sample_id` its identity."""

    cell: str
    row_u: int
    col_r: int
    source: str
    crs: str  # "EPSG:32719", the cell's UTM zone
    transform: tuple[float, ...] = ()  # affine (a, b, c, d, e, f) of the pixels
    bands: tuple[str, ...] = ()
    pixels: NDArray | None = None  # (band, y, x), the source's own dtype and values
    nodata: float | None = None
    scales: tuple[float, ...] = ()  # physical value = pixel * scale + offset, per band
    offsets: tuple[float, ...] = ()
    timestamp: datetime | None = None
    product_id: str | None = None
    items: tuple[str, ...] = ()  # every item the pixels came from, best first
    hrefs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # band -> assets read
    processing_baseline: str | None = None
    cloud_fraction: float | None = None  # of the valid pixels; None when the source has no cloud mask
    scene_cloud: float | None = None  # the primary item's own cloud cover, percent
    cloud_basis: str | None = None  # what cloud_cover is from: the quality band's name, or "scene" (the item's)
    nodata_fraction: float | None = None
    centre_lat: float | None = None
    centre_lon: float | None = None
    window_start: datetime | None = None  # start of the time window the sample was chosen from (its SampleId)
    slice_start: datetime | None = None  # the time slice it was chosen in (recipe `time.slices`); None unsliced
    slice_end: datetime | None = None  # exclusive
    status: str = OK
    reason: str | None = None

    def fail(self, error: BaseException, context: str = "") -> Sample:
        """Mark the sample failed by ``error``: its type and message are the reason (URLs without their query
        strings, where a read token would be)."""
        self.status, self.reason = FAILED, redacted(f"{context}{type(error).__name__}: {error}")[:500]
        return self

    def reject(self, reason: str) -> Sample:
        """Mark the sample rejected (nothing failed: no scene passed the rules)."""
        self.status, self.reason = REJECTED, reason
        return self

    @property
    def key(self) -> str:
        """The sample as messages name it: its ``sample_id`` string, or ``cell.source`` while its window is unknown
        (the identity is :attr:`sample_id`)."""
        return f"{self.cell}.{self.source}" if self.window_start is None else str(self.sample_id)

    @property
    def sample_id(self) -> SampleId:
        """The sample's identity (cell, source, window start): the ``sample_id`` column."""
        if self.window_start is None:
            raise ValueError(f"sample {self.key} has no window_start: its id is unknown")
        return SampleId(self.cell, self.source, self.window_start)

    def row(self, version: int | None = None, recipe_hash: str | None = None) -> IndexRow:
        """The sample's index row: the Major TOM columns, then provenance and status (and the build's ``version``
        and ``recipe_hash`` when given); the build adds where its pixels are stored."""
        stored = self.pixels is not None
        return IndexRow(
            sample_id=None if self.window_start is None else str(self.sample_id),
            grid_cell=self.cell, grid_row_u=self.row_u, grid_col_r=self.col_r, source=self.source,
            product_id=self.product_id, timestamp=self.timestamp,
            # Over the cell when the source has a cloud mask, else the scene's: Major TOM's cloud_cover.
            cloud_cover=self.scene_cloud if self.cloud_fraction is None else 100.0 * self.cloud_fraction,
            scene_cloud_cover=self.scene_cloud, cloud_basis=self.cloud_basis, nodata=self.nodata_fraction,
            centre_lat=self.centre_lat, centre_lon=self.centre_lon, crs=self.crs,
            transform=tuple(self.transform), bands=tuple(self.bands),
            dtype=str(self.pixels.dtype) if stored else None,
            height=int(self.pixels.shape[1]) if stored else None, width=int(self.pixels.shape[2]) if stored else None,
            nodata_value=None if self.nodata is None or np.isnan(self.nodata) else float(self.nodata),
            scales=tuple(self.scales), offsets=tuple(self.offsets), items=tuple(self.items),
            hrefs={band: tuple(h) for band, h in self.hrefs.items()},
            processing_baseline=self.processing_baseline, slice_start=self.slice_start, slice_end=self.slice_end,
            status=self.status, reason=self.reason, recipe_hash=recipe_hash, version=version,
        )  # fmt: skip

    def record(self) -> dict:
        """The sample's own columns of its index row as plain values (what exports tag it with, and a stage reads)."""
        return self.row().to_dict(SAMPLE_COLUMNS)

    @classmethod
    def from_row(cls, row: IndexRow, pixels: NDArray | None = None) -> Sample:
        """The sample an index row describes (:meth:`row`'s inverse), with ``pixels`` when given."""
        cloud_cover, scene_cloud = row.cloud_cover, row.scene_cloud_cover
        masked = cloud_cover is not None and cloud_cover == cloud_cover and cloud_cover != scene_cloud
        nodata = row.nodata_value
        return cls(
            cell=row.grid_cell, row_u=row.grid_row_u, col_r=row.grid_col_r, source=row.source, crs=row.crs,
            transform=row.transform, bands=row.bands, pixels=pixels, nodata=None if nodata != nodata else nodata,
            scales=row.scales, offsets=row.offsets, timestamp=row.timestamp, product_id=row.product_id,
            items=row.items, hrefs=dict(row.hrefs), processing_baseline=row.processing_baseline,
            # row() gives the cell's cloud when the source has a mask, else the scene's
            cloud_fraction=cloud_cover / 100.0 if masked else None, scene_cloud=scene_cloud,
            cloud_basis=row.cloud_basis, nodata_fraction=row.nodata, centre_lat=row.centre_lat,
            centre_lon=row.centre_lon,
            window_start=SampleId.parse(row.sample_id).start if row.sample_id else None,
            slice_start=row.slice_start, slice_end=row.slice_end, status=row.status, reason=row.reason,
        )  # fmt: skip
