"""What every source shares: the state a reader holds, which scene ranks first, what counts as nodata, and
how a sample's bands, nodata and cloud fractions are put together."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from eo_etl.recipe.models import Source
from eo_etl.sample import Sample
from eo_etl.sources import masks
from eo_etl.sources.patch_grid import PatchGrid
from eo_etl.sources.profile import CollectionProfile, QualityRule, find_profile
from eo_etl.sources.remote import HostLimiter, RetryPolicy

NO_SCENE = "no scene over the cell in the time window"
NO_SCENE_IN_SLICE = "no scene over the cell in the time slice"


class SourceReader:
    """What a reader of one source holds, whichever service it asks: the recipe's source, its profile, the
    time window (and its middle, which ranking aims at), the retry policy and the per-host limit."""

    def __init__(
        self,
        source: Source,
        window: tuple[datetime, datetime],
        *,
        policy: RetryPolicy | None = None,
        limiter: HostLimiter | None = None,
    ):
        self.source = source
        self.profile: CollectionProfile = find_profile(source.profile)
        self.start, self.end = window
        self.target_time = self.start + (self.end - self.start) / 2
        self.policy = policy or RetryPolicy()
        self.limiter = limiter or HostLimiter()
        self.bands = tuple(source.bands)
        self.quality = self.profile.quality


def with_quality_band(bands: tuple[str, ...], rule: QualityRule | None) -> tuple[str, ...]:
    """The bands to fetch: the requested ones, and the quality band when the collection has one."""
    return tuple(dict.fromkeys([*bands, *([rule.band] if rule else [])]))


def cell_cloud(rule: QualityRule, quality: NDArray) -> float | None:
    """Cloud over the cell from its quality band, as a fraction of the valid pixels; None if none is valid."""
    valid = ~masks.missing_pixels(rule, quality)
    return masks.cloud_fraction(masks.cloud_pixels(rule, quality), valid) if valid.any() else None


def no_clear_scene(any_valid: bool, max_cloud: float) -> str:
    """Why a cell has no sample when scenes cover it but none passes the cloud rule over the cell."""
    if any_valid:
        return f"every scene has more than {max_cloud:g}% cloud over the cell"
    return "no scene has valid pixels over the cell"


def rank_key(cloud: float, when: datetime, scene_id: str, target: datetime) -> tuple:
    """Least cloud first, then nearest to ``target`` (the middle of the time window), then id."""
    return cloud, abs((when - target).total_seconds()), scene_id


def is_nodata(pixels: NDArray, nodata: float | None) -> NDArray[np.bool_]:
    if nodata is None:
        return np.zeros(pixels.shape, dtype=bool)
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.isnan(pixels)
    return pixels == nodata


def any_band_missing(
    arrays: list[NDArray], nodatas: list[float | None], rule: QualityRule | None, quality: NDArray | None
) -> NDArray[np.bool_]:
    """Pixels where any band holds nodata or the quality band says there is none."""
    missing = np.logical_or.reduce([is_nodata(a, n) for a, n in zip(arrays, nodatas)])
    if quality is not None:
        missing |= masks.missing_pixels(rule, quality)
    return missing


def stack_bands(arrays: list[NDArray], nodatas: list[float | None]) -> tuple[NDArray, float | None]:
    """One (band, y, x) array in a dtype that holds every band; nodata unified to the first band's."""
    dtype = np.result_type(*arrays)
    nodata = next((n for n in nodatas if n is not None), None)
    stack = np.stack([a.astype(dtype, copy=False) for a in arrays])
    for i, band_nodata in enumerate(nodatas):
        if band_nodata is not None and nodata is not None and band_nodata != nodata:
            stack[i][is_nodata(arrays[i], band_nodata)] = nodata
    return stack, nodata


def fill_pixels(
    sample: Sample,
    grid: PatchGrid,
    bands: tuple[str, ...],
    arrays: list[NDArray],
    nodatas: list[float | None],
    rule: QualityRule | None,
    quality: NDArray | None,
) -> Sample:
    """Put the bands into ``sample`` with its grid, nodata fraction and (with a quality band) cloud fraction."""
    missing = any_band_missing(arrays, nodatas, rule, quality)
    sample.pixels, sample.nodata = stack_bands(arrays, nodatas)
    sample.bands = bands
    sample.transform = tuple(grid.transform)[:6]
    sample.nodata_fraction = float(missing.mean())
    if quality is not None:
        sample.cloud_fraction = masks.cloud_fraction(masks.cloud_pixels(rule, quality), ~missing)
    sample.cloud_basis = rule.band if sample.cloud_fraction is not None else "scene"
    return sample
