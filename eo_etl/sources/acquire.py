"""Acquisition: for each grid cell, pick the best scenes of a source and cut the cell's patch from them.

The rule, in order:
1. Candidates are the items whose footprint meets the cell's patch, inside the time window, with scene
   cloud cover ≤ ``max_cloud`` and every requested band as an asset.
2. With a quality band (Sentinel-2 SCL, Landsat QA_PIXEL) on every candidate, the mask is read on the patch for the best
   ``MAX_RANKED`` candidates (by scene cloud, then time) and candidates whose cloud over the *cell*
   exceeds ``max_cloud`` are dropped. Ranking: least cloud over the cell, then nearest to the middle of
   the time window, then item id. When a candidate lacks the quality band (and the recipe did not ask for it),
   the cell is ranked by the scenes' own cloud cover, and the sample says so (``cloud_basis`` "scene").
3. The best candidate gives the patch; pixels it does not cover are filled, band by band, from the next ranked items
   acquired on the same UTC day (the same pass, e.g. the neighbouring tile), never from another date.
4. Pixels no item covers stay nodata and are counted in ``nodata_fraction``.

With ``time.slices`` the same rule runs per time slice on the scenes of that slice, ranked towards the slice's
middle, after one search over the whole window (sources/slices.py).

A source aligned to another (``align:``) is cut on that source's grid from its scene nearest in time, once per
sample of the other (per slice, with time slices): the rule is in ``align.py``.

Any error left after retries makes a failed sample with the reason (``transient: …`` when its retries ran out
on a fault that may pass: a rerun tries the cell again); one bad cell never stops a build.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat

import numpy as np
import pystac
import rasterio
from numpy.typing import NDArray
from shapely.geometry import box, shape

from eo_etl.recipe import Recipe
from eo_etl.recipe.models import Source, TimeSlices
from eo_etl.sample import FAILED, REJECTED, TRANSIENT, Sample
from eo_etl.sources import SEARCH_BATCH, masks
from eo_etl.sources.align import (
    Anchor,
    aligned_grid,
    aligned_groups,
    aligned_sample,
    anchors_of,
    days_from,
    search_window,
    too_far_reason,
    without_anchor,
)
from eo_etl.sources.cell import Cell
from eo_etl.sources.patch import (
    NO_SCENE,
    NO_SCENE_IN_SLICE,
    SourceReader,
    any_band_missing,
    cell_cloud,
    fill_pixels,
    is_nodata,
    no_clear_scene,
    rank_key,
)
from eo_etl.sources.patch_grid import PatchGrid, patch_grid
from eo_etl.sources.profile import CollectionProfile, QualityRule
from eo_etl.sources.raster import read_band
from eo_etl.sources.remote import (
    HostLimiter,
    RetryPolicy,
    gdal_call,
    gdal_env,
    gdal_path,
    is_transient,
    unreachable,
)
from eo_etl.sources.signing import signer
from eo_etl.sources.slices import TimeSlice, day_start, window_slices
from eo_etl.sources.stac import StacCatalog, item_time, scene_cloud
from eo_etl.sources.synthetic import SyntheticReader
from eo_etl.text import public_href

MAX_RANKED = 8  # candidates whose cloud mask is read per cell
FALSE_NORTHING_SOUTH = 10_000_000.0  # what sets EPSG:327zz apart from EPSG:326zz


@dataclass
class _Candidate:
    item: pystac.Item
    when: datetime
    cloud: float  # over the cell when the mask was read, else the scene's, as a fraction
    quality: NDArray | None = None


class _Outcome(Exception):
    """A sample that is rejected (no scene passes the rules) or failed (the items lack assets), with the reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason

    def apply(self, sample: Sample) -> Sample:
        sample.status, sample.reason = self.status, self.reason
        return sample


class StacReader(SourceReader):
    """Cuts patches of one STAC (or static catalog) source; thread-safe, one per source per worker. Assets are read
    through hrefs signed right before each read (``sign:``); samples record them unsigned."""

    def __init__(self, *args, **kwargs):  # SourceReader's
        super().__init__(*args, **kwargs)
        self.sign = signer(self.source.sign, self.policy, self.limiter)

    # ----------------------------------------------------------------------------------------- assets
    def asset(self, item: pystac.Item, band: str) -> pystac.Asset | None:
        return next((item.assets[k] for k in self.profile.asset_keys(band) if k in item.assets), None)

    def _band_info(self, asset: pystac.Asset) -> tuple[float | None, float, float]:
        """(nodata, scale, offset) from the raster extension, falling back to the profile's nodata."""
        fields = asset.extra_fields
        raster = (fields.get("raster:bands") or fields.get("bands") or [{}])[0]
        nodata = fields.get("nodata", raster.get("nodata", self.profile.nodata))
        scale = fields.get("raster:scale", raster.get("scale", 1.0))
        offset = fields.get("raster:offset", raster.get("offset", 0.0))
        return (None if nodata is None else float(nodata)), float(scale), float(offset)

    def read(self, item: pystac.Item, band: str, grid: PatchGrid) -> tuple[NDArray, float | None]:
        asset = self.asset(item, band)
        nodata = self._band_info(asset)[0]
        resampling = "nearest" if self.profile.bands[band].categorical else self.source.resampling
        href = href_of(asset)
        what = f"band {band} of {public_href(href)}"
        path = gdal_path(self.sign(href))
        result = gdal_call(self.policy, self.limiter, path, read_band, path, grid,
                           resampling=resampling, nodata=nodata, what=what)  # fmt: skip
        return result.pixels, result.nodata

    # ------------------------------------------------------------------------------------------- grid
    def _lattice(self, item: pystac.Item) -> tuple[int | None, tuple[float, float]]:
        """EPSG and a pixel corner of the item's band at the output resolution (from proj:, else the file)."""
        band = next(
            (b for b in self.bands if self.profile.bands[b].resolution_m == self.source.resolution_m), self.bands[0]
        )
        asset = self.asset(item, band)
        fields = {**item.properties, **asset.extra_fields}
        code = fields.get("proj:epsg") or str(fields.get("proj:code") or "").removeprefix("EPSG:") or None
        transform = fields.get("proj:transform")
        if code is not None and transform is not None:
            return int(code), (float(transform[2]), float(transform[5]))

        def header(path: str):
            with rasterio.open(path) as src:
                return src.crs.to_epsg() if src.crs else None, (src.transform.c, src.transform.f)

        path = gdal_path(self.sign(href_of(asset)))
        what = f"band {band} of {public_href(href_of(asset))}"
        return gdal_call(self.policy, self.limiter, path, header, path, what=what)

    def grid_for(self, cell: Cell, candidates: list[_Candidate]) -> PatchGrid:
        """The patch grid, on the pixel lattice of the first candidate in the cell's UTM zone, so that it is cut
        without resampling; on whole multiples of the resolution when no candidate is in that zone."""
        size = self.source.patch_size
        anchor = (0.0, 0.0)
        for candidate in candidates:
            epsg, (x, y) = self._lattice(candidate.item)
            if epsg is not None and epsg % 100 == cell.epsg % 100 and epsg // 100 in (326, 327):
                # The same zone; USGS grids southern scenes north (326xx) with negative northings.
                anchor = (x, y + (cell.epsg // 100 - epsg // 100) * FALSE_NORTHING_SOUTH)
                break
        return patch_grid(cell.epsg, cell.footprint, self.source.resolution_m, size, anchor)

    # ------------------------------------------------------------------------------------------ cells
    def acquire(self, cell: Cell, items: Iterable[pystac.Item], anchor: Anchor | None = None) -> Sample:
        """The cell's sample from ``items`` (the search results around it), or a rejected/failed one; an aligned
        source's on the grid and near the date of ``anchor``, its primary's sample of the cell (of one slice)."""
        if anchor is None:
            sample = cell.sample(self.source.name, self.start)
        else:  # the primary sample's id start and slice: the join
            sample = aligned_sample(cell, self.source.name, anchor)
        align = self.source.align
        if align is not None and (anchor is None or anchor.grid is None):
            return without_anchor(sample, anchor, align.to)
        try:
            with gdal_env():
                return self._acquire(cell, list(items), sample, anchor)
        except Exception as error:  # recorded, not raised: the build goes on with the other cells
            return sample.fail(error, TRANSIENT if is_transient(error) else "")

    def _acquire(self, cell: Cell, items: list[pystac.Item], sample: Sample, anchor: Anchor | None = None) -> Sample:
        try:
            candidates, grid, rule = self._prepare(cell, items, anchor)
            if anchor is None:
                chosen = self._clear(candidates, grid, rule, self.target_time)
            else:  # an aligned source: the scene nearest its primary's date
                chosen = self._clear(candidates, grid, rule, anchor.when, key=_nearest(anchor))
            return self._mosaic(chosen, grid, sample, rule)
        except _Outcome as outcome:
            return outcome.apply(sample)

    def _prepare(
        self, cell: Cell, items: list[pystac.Item], anchor: Anchor | None = None
    ) -> tuple[list[_Candidate], PatchGrid, QualityRule | None]:
        """The usable items over the cell, ranked over the whole window, the cell's patch grid (one for every
        slice, so a cell's slices stack) and the quality rule; raises :class:`_Outcome` when there are none.
        An aligned source's (``anchor``): those near its primary's date, nearest first, on the primary's grid."""
        fp_lonlat = box(*cell.lonlat_bounds)
        over = [it for it in items if it.geometry is not None and shape(it.geometry).intersects(fp_lonlat)]
        if not over:
            raise _Outcome(REJECTED, NO_SCENE)
        lacking = [it for it in over if any(self.asset(it, b) is None for b in self.bands)]
        usable = [it for it in over if it not in lacking]
        if not usable:
            missing = [b for b in self.bands if self.asset(lacking[0], b) is None]
            raise _Outcome(FAILED, f"items lack assets for bands {missing}")
        rule = self.quality  # the mask, where every scene has it; else the scenes' own cloud cover
        if rule is not None and any(self.asset(it, rule.band) is None for it in usable):
            rule = None
        candidates = [
            _Candidate(it, item_time(it), scene_cloud(it, self.profile.cloud_property) / 100) for it in usable
        ]
        if anchor is None:
            candidates.sort(key=lambda c: self._rank(c, self.target_time))
            return candidates, self.grid_for(cell, candidates), rule
        within = self.source.align.within_days
        if within is not None:
            candidates = [c for c in candidates if days_from(c.item, anchor.when) <= within]
            if not candidates:
                raise _Outcome(REJECTED, too_far_reason(anchor.source, anchor.when, within))
        candidates.sort(key=_nearest(anchor))
        return candidates, aligned_grid(anchor, self.source.resolution_m), rule

    def _clear(
        self, candidates: list[_Candidate], grid: PatchGrid, rule: QualityRule | None, target: datetime, key=None
    ) -> list[_Candidate]:
        """``candidates`` ranked towards ``target`` (with a quality band: those clear enough over the cell); by
        ``key`` instead where given (an aligned source's nearest in time)."""
        key = key or (lambda c: self._rank(c, target))
        candidates = sorted(candidates, key=key)
        if rule is None:
            return candidates
        seen = self._with_cell_cloud(candidates[:MAX_RANKED], grid, rule)
        clear = sorted((c for c in seen if c.cloud * 100 <= self.source.max_cloud), key=key)
        if not clear:
            raise _Outcome(REJECTED, no_clear_scene(bool(seen), self.source.max_cloud))
        return clear

    def _rank(self, candidate: _Candidate, target: datetime) -> tuple:
        return rank_key(candidate.cloud, candidate.when, candidate.item.id, target)

    # ----------------------------------------------------------------------------------------- slices
    def acquire_slices(self, cell: Cell, items: Iterable[pystac.Item], spec: TimeSlices) -> list[Sample]:
        """The cell's samples of every time slice (slices.py has the rule), in time order: one or more a slice,
        or a rejected/failed sample saying why the slice has none."""
        items = list(items)
        fp_lonlat = box(*cell.lonlat_bounds)
        times = [item_time(it) for it in items if it.geometry is not None and shape(it.geometry).intersects(fp_lonlat)]
        slices = window_slices(spec, self.start, self.end, times)
        try:
            with gdal_env():
                candidates, grid, rule = self._prepare(cell, items)
        except _Outcome as outcome:
            return [outcome.apply(_slice_sample(cell, self.source.name, piece)) for piece in slices]
        except Exception as error:  # recorded, not raised: the build goes on with the other cells
            return [self._failed(_slice_sample(cell, self.source.name, piece), error) for piece in slices]
        samples = []
        for piece in slices:
            inside = [c for c in candidates if piece.holds(c.when)]
            sample = _slice_sample(cell, self.source.name, piece)
            try:
                with gdal_env():
                    if not inside:
                        samples.append(sample.reject(NO_SCENE_IN_SLICE))
                    elif spec.pick == "best":
                        samples.append(self._mosaic(self._clear(inside, grid, rule, piece.middle), grid, sample, rule))
                    else:
                        samples.extend(self._days(cell, inside, grid, rule, piece, spec.k))
            except _Outcome as outcome:
                samples.append(outcome.apply(sample))
            except Exception as error:
                samples.append(self._failed(sample, error))
        return samples

    def _days(
        self, cell: Cell, inside: list[_Candidate], grid: PatchGrid, rule: QualityRule | None, piece: TimeSlice,
        k: int | None,
    ) -> list[Sample]:  # fmt: skip
        """``pick: all`` (k None: every day, rejected ones recorded) or ``k_best``: a sample per acquisition day
        of the slice, days ranked by their best scene towards the slice's middle."""
        by_day: dict[datetime, list[_Candidate]] = {}
        for candidate in inside:
            by_day.setdefault(day_start(candidate.when, piece), []).append(candidate)
        ranked, rejected = [], []
        for day, members in sorted(by_day.items()):
            sample = _slice_sample(cell, self.source.name, piece, day)
            try:
                clear = self._clear(members, grid, rule, piece.middle)
            except _Outcome as outcome:
                rejected.append(outcome.apply(sample))
                continue
            ranked.append((self._rank(clear[0], piece.middle), sample, clear))
        kept = sorted(ranked, key=lambda r: r[0])[:k] if k is not None else ranked
        samples = [self._mosaic(clear, grid, sample, rule) for _, sample, clear in kept]
        if k is None:
            samples += rejected
        elif not samples:  # none of the slice's days passed: the slice records why (its first day's reason)
            samples = [_slice_sample(cell, self.source.name, piece).reject(rejected[0].reason)]
        return sorted(samples, key=lambda s: s.window_start)

    @staticmethod
    def _failed(sample: Sample, error: Exception) -> Sample:
        return sample.fail(error, TRANSIENT if is_transient(error) else "")

    def _with_cell_cloud(self, candidates: list[_Candidate], grid: PatchGrid, rule: QualityRule) -> list[_Candidate]:
        """The candidates with any valid pixel on the grid, their quality mask read and cloud over the cell."""
        seen = []
        for candidate in candidates:
            quality, _ = self.read(candidate.item, rule.band, grid)
            cloud = cell_cloud(rule, quality)
            if cloud is not None:
                candidate.quality, candidate.cloud = quality, cloud
                seen.append(candidate)
        return seen

    def _read_item(self, candidate: _Candidate, grid: PatchGrid, rule: QualityRule | None):
        """All bands of one item on the grid: (arrays, per-band nodata, quality mask)."""
        arrays, nodatas = [], []
        quality = candidate.quality
        if rule is not None and quality is None:
            quality, _ = self.read(candidate.item, rule.band, grid)
        for band in self.bands:
            if rule is not None and band == rule.band:
                arrays.append(quality.copy())
                nodatas.append(self._band_info(self.asset(candidate.item, band))[0])
            else:
                pixels, nodata = self.read(candidate.item, band, grid)
                arrays.append(pixels)
                nodatas.append(nodata)
        return arrays, nodatas, quality

    def _mosaic(
        self, candidates: list[_Candidate], grid: PatchGrid, sample: Sample, rule: QualityRule | None
    ) -> Sample:
        primary = candidates[0]
        same_pass = [c for c in candidates if c.when.date() == primary.when.date()]
        arrays, nodatas, quality = self._read_item(primary, grid, rule)
        used = [primary]
        for extra in same_pass[1:]:
            if not any_band_missing(arrays, nodatas, rule, quality).any():
                break
            more, more_nodatas, more_quality = self._read_item(extra, grid, rule)
            filled = False
            for target, source, nodata, source_nodata in zip(arrays, more, nodatas, more_nodatas):
                hole = is_nodata(target, nodata) & ~is_nodata(source, source_nodata)
                target[hole] = source[hole]
                filled |= bool(hole.any())
            if quality is not None:
                hole = masks.missing_pixels(rule, quality) & ~masks.missing_pixels(rule, more_quality)
                quality[hole] = more_quality[hole]
            if filled:
                used.append(extra)
        fill_pixels(sample, grid, self.bands, arrays, nodatas, rule, quality)
        infos = [self._band_info(self.asset(primary.item, b)) for b in self.bands]
        sample.scales = tuple(info[1] for info in infos)
        sample.offsets = tuple(info[2] for info in infos)
        sample.timestamp = primary.when
        sample.product_id = primary.item.id
        sample.items = tuple(c.item.id for c in used)
        sample.hrefs = {b: tuple(public_href(href_of(self.asset(c.item, b))) for c in used) for b in self.bands}
        sample.processing_baseline = _baseline(primary.item, self.profile)
        if self.profile.cloud_property is None:  # radar, elevation, land cover: no cloud to speak of
            sample.scene_cloud, sample.cloud_basis = None, None
        else:
            sample.scene_cloud = scene_cloud(primary.item, self.profile.cloud_property)
        return sample


def _slice_sample(cell: Cell, source: str, piece: TimeSlice, start: datetime | None = None) -> Sample:
    """An empty sample of ``cell`` chosen in the slice ``piece``; its id starts at ``start`` (default: the slice's)."""
    sample = cell.sample(source, start or piece.start)
    sample.slice_start, sample.slice_end = piece.start, piece.end
    return sample


def _nearest(anchor: Anchor):
    """An aligned source's ranking: nearest the primary's date, then the least cloud, then the item id."""
    return lambda c: (days_from(c.item, anchor.when), c.cloud, c.item.id)


def href_of(asset: pystac.Asset) -> str:
    """The asset's absolute href: static catalogs store them relative to the item; a path that is already
    absolute stays a path (pystac would put it on the API's host)."""
    if "://" in asset.href or asset.href.startswith("/"):
        return asset.href
    return asset.get_absolute_href() or asset.href


def _baseline(item: pystac.Item, profile: CollectionProfile) -> str | None:
    value = next((item.properties[p] for p in profile.baseline_properties if p in item.properties), None)
    return None if value is None else str(value)


# ------------------------------------------------------------------------------------------- sources
def _batches(cells: list[Cell], size: int) -> Iterator[list[Cell]]:
    for start in range(0, len(cells), size):
        yield cells[start : start + size]


class SourceAcquisition:
    """Cuts one source's samples for batches of cells: its reader, catalogue and threads, opened once (per
    Beam worker, or per plain build). For STAC, one catalogue search per batch."""

    def __init__(self, recipe: Recipe, source: Source, *, threads: int = 2, policy: RetryPolicy | None = None,
                 limiter: HostLimiter | None = None):  # fmt: skip
        self.source = source
        self.window = (recipe.time.start_utc, recipe.time.end_exclusive_utc)
        self.searched = search_window(source, self.window)  # an aligned source's is wider
        self.slices = recipe.time.slices
        self.policy = policy or RetryPolicy()
        self.limiter = limiter
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self.reader: SourceReader | None = None
        self.catalog: StacCatalog | None = None
        self.unreachable: ConnectionError | None = None  # the catalogue, when opening it failed for want of a network

    def acquire(self, cells: list[Cell], anchors: dict[str, list[Anchor]] | None = None) -> Iterator[Sample]:
        """The samples of ``cells``, in order; a catalogue or service that cannot be reached fails the cells.
        An aligned source needs ``anchors``, its primary's samples of the cells by cell name (``align.py``): it
        makes one sample per anchor, with the anchor's id start and slice."""
        anchors = anchors or {}
        if self.source.kind == "gee":
            yield from self._earth_engine(cells)
            return
        if self.source.kind == "synthetic":  # benchmarks and tests: pixels from the cell's name, no I/O
            if self.reader is None:
                self.reader = SyntheticReader(self.source, self.window)
            yield from map(self.reader.acquire, cells)
            return
        if self.reader is None:
            self.reader = StacReader(self.source, self.window, policy=self.policy, limiter=self.limiter)
        try:
            if self.unreachable is not None:
                raise self.unreachable
            if self.catalog is None:  # opened here so that an unreachable catalogue fails cells, not the build
                self.catalog = StacCatalog(
                    self.source.url, self.source.collection, cloud_property=self.reader.profile.cloud_property,
                    policy=self.policy, limiter=self.reader.limiter,
                )  # fmt: skip
            items = self.catalog.search(_lonlat_bbox(cells), *self.searched, max_cloud=self.source.max_cloud)
        except Exception as error:
            context = f"{TRANSIENT if is_transient(error) else ''}search failed: "
            plain = unreachable(error, self.source.url)  # one plain line, the same for every cell
            if plain is not None and self.catalog is None:
                # unreachable for a whole retry budget: later batches fail at once, not after another one
                self.unreachable = plain
            error = plain or error
            yield from (sample.fail(error, context) for cell in cells for sample in self._unsearched(cell, anchors))
            return
        yield from self._cut(cells, items, anchors)

    def _cut(self, cells: list[Cell], items: list[pystac.Item], anchors: dict[str, list[Anchor]]) -> Iterator[Sample]:
        """The samples of ``cells`` from the search's ``items``, in the reader's threads."""
        if self.source.align is not None:  # a sample per anchor: one per primary sample of the cell (align.py)
            jobs = [(cell, anchor) for cell in cells for anchor in anchors.get(cell.name) or [None]]
            cells, anchored = [cell for cell, _ in jobs], [anchor for _, anchor in jobs]
            yield from self.pool.map(self.reader.acquire, cells, repeat(items), anchored)
        elif self.slices is None:
            yield from self.pool.map(self.reader.acquire, cells, repeat(items))
        else:  # one search for the whole window (above), bucketed by slice per cell
            for samples in self.pool.map(self.reader.acquire_slices, cells, repeat(items), repeat(self.slices)):
                yield from samples

    def _unsearched(self, cell: Cell, anchors: dict[str, list[Anchor]]) -> list[Sample]:
        """The empty samples a cell records when its search failed: one per slice (the window, unsliced); an
        aligned source's, one per anchor."""
        if self.source.align is not None and anchors.get(cell.name):
            return [aligned_sample(cell, self.source.name, anchor) for anchor in anchors[cell.name]]
        if self.slices is None:
            return [cell.sample(self.source.name, self.window[0])]
        pieces = window_slices(self.slices, *self.window)
        return [_slice_sample(cell, self.source.name, piece) for piece in pieces]

    @property
    def skipped_items(self) -> dict[str, str]:
        """The catalogue's items that could not be read (href -> why): skipped, the other items used."""
        return dict(self.catalog.skipped) if self.catalog is not None else {}

    def _earth_engine(self, cells: list[Cell]) -> Iterator[Sample]:
        """Earth Engine needs no search: each cell asks the server. No ee credentials fail every cell, recorded."""
        from eo_etl.sources.gee import EarthEngineReader  # the gee extra

        try:
            if self.reader is None:
                self.reader = EarthEngineReader(self.source, self.window, policy=self.policy, limiter=self.limiter)
        except Exception as error:
            failed = (cell.sample(self.source.name, self.window[0]) for cell in cells)
            yield from (sample.fail(error, "Earth Engine unavailable: ") for sample in failed)
            return
        yield from self.pool.map(self.reader.acquire, cells)

    def close(self) -> None:
        self.pool.shutdown()


def acquire_source(
    recipe: Recipe,
    source: Source,
    cells: list[Cell],
    *,
    workers: int = 2,
    policy: RetryPolicy | None = None,
    limiter: HostLimiter | None = None,
    anchors: dict[str, list[Anchor]] | None = None,
) -> Iterator[Sample]:
    """Samples of ``source`` for ``cells`` in order, cut in ``workers`` threads, in batches of ``SEARCH_BATCH``
    (an aligned source's on its primary's ``anchors``, by cell name)."""
    acquisition = SourceAcquisition(recipe, source, threads=workers, policy=policy, limiter=limiter)
    try:
        for batch in _batches(cells, SEARCH_BATCH):
            yield from acquisition.acquire(batch, anchors)
    finally:
        acquisition.close()


def acquire_sources(
    recipe: Recipe,
    cells: list[Cell],
    *,
    workers: int = 2,
    policy: RetryPolicy | None = None,
    limiter: HostLimiter | None = None,
) -> Iterator[Sample]:
    """Every source's samples of ``cells`` without Beam: per batch of cells, each primary source's, then those of
    the sources aligned to it, on the primary's grids and dates."""
    groups = aligned_groups(recipe)
    acquisitions = {
        source.name: SourceAcquisition(recipe, source, threads=workers, policy=policy, limiter=limiter)
        for source in recipe.sources
    }
    try:
        for batch in _batches(cells, SEARCH_BATCH):
            for primary, secondaries in groups.items():
                samples = list(acquisitions[primary].acquire(batch))
                yield from samples
                anchors = anchors_of(samples)
                for source in secondaries:
                    yield from acquisitions[source.name].acquire(batch, anchors)
    finally:
        for acquisition in acquisitions.values():
            acquisition.close()


def _lonlat_bbox(cells: list[Cell]) -> tuple[float, float, float, float]:
    boxes = np.array([cell.lonlat_bounds for cell in cells])
    return float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())
