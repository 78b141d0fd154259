"""Aligned sources: a secondary source cut on its primary's sample grid, from its scene nearest in time.

A recipe source with ``align: {to: PRIMARY, within_days: D}`` follows PRIMARY (a source without ``align``):

- **Grid.** Every modality of a sample has the primary's CRS and bounds. A secondary's pixels are its own
  ``resolution_m``, so its shape is the primary's extent over that, a whole number the recipe checks: on a
  10 m primary of 1068 px, 10 m radar is 1068 px with the very same transform and 30 m elevation is 356 px
  (3 × 3 primary pixels each). The secondary is resampled onto that grid (its ``resampling``; nearest for mask
  bands), never cut on its own pixel lattice: alignment wins over avoiding a resampling.
- **Time.** Among the secondary's candidates (those its own rules keep: footprint, assets, cloud), the one
  nearest the primary's chosen scene (the primary sample's ``timestamp``) wins, then the least cloud, then the
  item id; an item whose ``start_datetime``/``end_datetime`` covers that date (an annual land-cover map) is 0
  days away. None within D days is a rejected sample with the reason. D null: the same grid with no time rule,
  searched at any date (a static product such as a DEM). The secondary's search widens the recipe's window by
  D days on each side, so a scene just across the window's edge still pairs.
- **Order.** The primary is acquired first; its samples (or, on a resumed build, its recorded rows) give each
  cell's :class:`Anchor`; the secondary is then acquired for those cells, in the same Beam element (a range of
  plan rows) or, in the plain path, after the primary's batch. A cell whose primary has no sample is a
  rejected secondary sample saying why (failed like it when it failed, so that a rerun tries both). All samples
  of a cell share ``SampleId.cell`` and ``SampleId.start``: that is the join, there is no other key.
- **Time slices.** A cell's anchors are all its primary's samples: one per slice (``pick: best``), one per
  acquisition day (``all``, ``k_best``), or the window's one unsliced. The secondary makes one sample per anchor,
  with the anchor's id start and ``slice_start``/``slice_end``, so each of its samples pairs with exactly one
  primary sample by (cell, start): SSL4EO-S12's Sentinel-1 near each season's Sentinel-2 scene. Its candidates
  are those within D days of that scene, whichever slice they fall in (the slice bounds the primary's choice).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pystac
from affine import Affine

from eo_etl.recipe import Recipe
from eo_etl.recipe.models import Source
from eo_etl.sample import FAILED, OK, TRANSIENT, Sample
from eo_etl.sources.cell import Cell
from eo_etl.sources.patch_grid import PatchGrid
from eo_etl.sources.stac import item_time
from eo_etl.store.index_row import IndexRow

# A grid-only alignment (within_days null) searches at any date: static products carry their production date.
ANY_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@dataclass(frozen=True)
class Anchor:
    """What a secondary source needs of its primary's sample of a cell: its grid and its scene's date, or why
    there is none."""

    source: str
    grid: PatchGrid | None = None
    when: datetime | None = None
    status: str = OK  # the primary's status and reason, when it has no sample
    reason: str | None = None
    start: datetime | None = None  # the primary sample's id start (SampleId.start): the secondary's too
    slice_start: datetime | None = None  # its time slice (time.slices), None unsliced
    slice_end: datetime | None = None

    @classmethod
    def of(cls, sample: Sample) -> Anchor:
        when = {"start": sample.window_start, "slice_start": sample.slice_start, "slice_end": sample.slice_end}
        if sample.status != OK:
            return cls(sample.source, status=sample.status, reason=sample.reason, **when)
        height, width = sample.pixels.shape[-2:]
        return cls(sample.source, _grid(sample.crs, sample.transform, width, height), sample.timestamp, **when)

    @classmethod
    def of_record(cls, record: IndexRow) -> Anchor:
        """From a recorded index row (a range finished before a resumed build)."""
        sample = Sample.from_row(record)  # its id start and slice, as the sample had them
        when = {"start": sample.window_start, "slice_start": sample.slice_start, "slice_end": sample.slice_end}
        if record.status != OK:
            return cls(record.source, status=record.status, reason=record.reason, **when)
        grid = _grid(record.crs, record.transform, record.width, record.height)
        return cls(record.source, grid, _utc(record.timestamp), **when)


def _grid(crs: str, transform, width: int, height: int) -> PatchGrid:
    return PatchGrid(int(crs.removeprefix("EPSG:")), Affine(*list(transform)[:6]), width, height)


def anchors_of(samples: Iterable[Sample]) -> dict[str, list[Anchor]]:
    """The anchors of a primary's samples, by cell name: each cell's in their order (one per slice or day)."""
    anchors: dict[str, list[Anchor]] = {}
    for sample in samples:
        anchors.setdefault(sample.cell, []).append(Anchor.of(sample))
    return anchors


def anchors_of_records(records: Iterable[IndexRow]) -> dict[str, list[Anchor]]:
    """The anchors of a primary's recorded index rows, by cell name (a resumed build's finished ranges)."""
    anchors: dict[str, list[Anchor]] = {}
    for record in records:
        anchors.setdefault(record.grid_cell, []).append(Anchor.of_record(record))
    return anchors


def aligned_sample(cell: Cell, source: str, anchor: Anchor) -> Sample:
    """An empty sample of ``source`` paired with ``anchor``'s: the same cell, id start and slice."""
    sample = cell.sample(source, anchor.start)
    sample.slice_start, sample.slice_end = anchor.slice_start, anchor.slice_end
    return sample


def without_anchor(sample: Sample, anchor: Anchor | None, primary: str) -> Sample:
    """A secondary sample whose primary has no sample of the cell: rejected with the primary's reason, or failed
    like it (transient too) when the primary failed, so that a rerun tries both again."""
    if anchor is None:
        return sample.reject(f"no {primary} sample to align with (not acquired)")
    why = f"no {primary} sample to align with ({anchor.status}: {anchor.reason})"
    if anchor.status == FAILED:
        sample.status, sample.reason = FAILED, (TRANSIENT if anchor.reason.startswith(TRANSIENT) else "") + why
        return sample
    return sample.reject(why)


def aligned_grid(anchor: Anchor, resolution_m: float) -> PatchGrid:
    """The primary's grid (its CRS and bounds) in pixels of ``resolution_m``: a whole number of them, as the
    recipe checked."""
    grid = anchor.grid
    xmin, ymin, xmax, ymax = grid.bounds
    width, height = round((xmax - xmin) / resolution_m), round((ymax - ymin) / resolution_m)
    transform = Affine(resolution_m, 0.0, xmin, 0.0, -resolution_m, ymax)
    return PatchGrid(grid.epsg, transform, width, height)


def days_from(item: pystac.Item, when: datetime) -> float:
    """Days between ``item`` and ``when``: 0 when the item's start_datetime..end_datetime covers it."""
    props = item.properties
    if props.get("start_datetime") and props.get("end_datetime"):
        start, end = (_utc(pystac.utils.str_to_datetime(props[key])) for key in ("start_datetime", "end_datetime"))
        if start <= when <= end:
            return 0.0
        return min(abs((start - when).total_seconds()), abs((end - when).total_seconds())) / 86400
    return abs((item_time(item) - when).total_seconds()) / 86400


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def too_far_reason(primary: str, when: datetime, within_days: float) -> str:
    return f"no scene within {within_days:g} days of {primary}'s scene of {when:%Y-%m-%d}"


def search_window(source: Source, window: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    """Where a source's catalogue is searched: the recipe's window, widened by an aligned source's tolerance."""
    if source.align is None:
        return window
    if source.align.within_days is None:
        return ANY_TIME
    margin = timedelta(days=source.align.within_days)
    return window[0] - margin, window[1] + margin


def aligned_groups(recipe: Recipe) -> dict[str, list[Source]]:
    """Each source without ``align`` (in recipe order) and the sources aligned to it: what is acquired together."""
    groups = {source.name: [] for source in recipe.sources if source.align is None}
    for source in recipe.sources:
        if source.align is not None:
            groups[source.align.to].append(source)
    return groups
