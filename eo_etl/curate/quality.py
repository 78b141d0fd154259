"""Quality scores per sample: cloud, shadow, nodata, saturation and dead bands, against the recipe's limits.

Scores come from the stored pixels: cloud and shadow from the collection's mask band (its profile's quality
rule; null when the sample has no mask band), nodata where a data band holds the nodata value or the mask says
so, saturation where a data band's reflectance reaches ``saturation`` (or its integer type's maximum), and a
dead band is a data band with no valid pixel or one value throughout. A sample past a limit keeps its row with
``passed`` false and every reason. ``pixel_hash`` (sha256 of the stored pixels) is the exact-duplicate key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from eo_etl.recipe.models import Quality, Recipe
from eo_etl.sources.masks import cloud_pixels, missing_pixels, shadow_pixels
from eo_etl.sources.profile import CollectionProfile, QualityRule, find_profile
from eo_etl.stages.core import Item, Output, Stage


def source_profile(recipe: Recipe, source: str) -> CollectionProfile | None:
    """The profile of the recipe's source called ``source`` (None when the recipe has no such source)."""
    named = next((s for s in recipe.sources if s.name == source), None)
    return find_profile(named.profile or named.collection) if named else None


def pixel_hash(pixels: np.ndarray) -> str:
    """A digest of the pixel values, their type and shape: equal only for identical samples."""
    digest = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def scores(pixels: np.ndarray, row: dict, profile: CollectionProfile | None, settings: Quality) -> dict:
    """The quality row of one sample's stored pixels (band, y, x)."""
    bands = list(row["bands"])
    rule = profile.quality if profile else None
    mask_band = rule.band if rule and rule.band in bands else None
    data = [i for i, b in enumerate(bands) if b != mask_band and (not profile or profile.bands[b].role == "data")]
    nodata = row.get("nodata_value")
    missing = np.zeros(pixels.shape[1:], dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        missing |= (pixels[data] == nodata).any(axis=0)
    cloud = shadow = None
    if mask_band is not None:
        cloud, shadow = _mask_scores(rule, pixels[bands.index(mask_band)], missing)
    valid = ~missing
    n_valid = int(valid.sum())
    saturated, dead = _band_scores(pixels, row, data, valid, settings)
    row_out = {
        "cloud_fraction": cloud,
        "shadow_fraction": shadow,
        "nodata_fraction": float(missing.mean()) if missing.size else 1.0,
        "saturated_fraction": float((saturated & valid).sum() / n_valid) if n_valid else 0.0,
        "dead_bands": dead,
        "pixel_hash": pixel_hash(pixels),
    }
    return row_out | _verdict(row_out, settings)


def _mask_scores(rule: QualityRule, mask: np.ndarray, missing: np.ndarray) -> tuple[float, float]:
    """Cloud and shadow fractions of the valid pixels by the mask band; adds the mask's missing pixels to
    ``missing`` (in place)."""
    missing |= missing_pixels(rule, mask)
    valid = ~missing
    n_valid = max(int(valid.sum()), 1)
    shadow_mask = shadow_pixels(rule, mask) & valid
    shadow = float(shadow_mask.sum() / n_valid)
    cloud = float((cloud_pixels(rule, mask) & valid & ~shadow_mask).sum() / n_valid)
    return cloud, shadow


def _band_scores(
    pixels: np.ndarray, row: dict, data: list[int], valid: np.ndarray, settings: Quality
) -> tuple[np.ndarray, list[str]]:
    """The saturated pixels of the data bands ``data``, and the names of the dead ones."""
    bands = list(row["bands"])
    scales, offsets = np.asarray(row["scales"], float), np.asarray(row["offsets"], float)
    saturated = np.zeros(pixels.shape[1:], dtype=bool)
    dead = []
    for i in data:
        band = pixels[i]
        reflectance = band * scales[i] + offsets[i]
        saturated |= reflectance >= settings.saturation
        if np.issubdtype(band.dtype, np.integer):
            saturated |= band == np.iinfo(band.dtype).max
        values = band[valid]
        if values.size == 0 or values.min() == values.max():
            dead.append(bands[i])
    return saturated, dead


def _verdict(row_out: dict, settings: Quality) -> dict:
    """``passed``, ``flags`` and ``reason`` of the scores against the recipe's limits: every limit passed."""
    reasons = []
    for score in ("cloud", "shadow", "nodata", "saturated"):
        value, limit = row_out[f"{score}_fraction"], getattr(settings, f"max_{score}_fraction")
        if value is not None and value > limit:
            reasons.append(f"{score} {value:.3f} > {limit:g}")
    dead = row_out["dead_bands"]
    if dead and not settings.allow_dead_bands:
        reasons.append(f"dead bands {', '.join(dead)}")
    return {"passed": not reasons, "flags": [r.split(" ")[0] for r in reasons], "reason": "; ".join(reasons)}


def open_scorer(settings: Quality, recipe: Recipe):
    profiles: dict[str, CollectionProfile | None] = {}

    def score(items: Sequence[Item]) -> list[Output]:
        outputs = []
        for item in items:
            source = item.row["source"]
            if source not in profiles:
                profiles[source] = source_profile(recipe, source)
            outputs.append(Output(scores(item.pixels, item.row, profiles[source], settings)))
        return outputs

    return score


STAGE = Stage(
    name="quality",
    group="curate",
    section="curation.quality",
    open=open_scorer,
    columns=pa.schema(
        [
            pa.field("cloud_fraction", pa.float64()),  # null: no mask band
            pa.field("shadow_fraction", pa.float64()),
            pa.field("nodata_fraction", pa.float64()),
            pa.field("saturated_fraction", pa.float64()),
            pa.field("dead_bands", pa.list_(pa.string())),
            pa.field("pixel_hash", pa.string()),
            pa.field("passed", pa.bool_()),
            pa.field("flags", pa.list_(pa.string())),  # cloud, shadow, nodata, saturated, dead
            pa.field("reason", pa.string()),  # "" when passed
        ]
    ),
    needs_pixels=True,
)
