"""Reading a collection's quality band: which pixels are cloud (or shadow), which hold no data."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from eo_etl.sources.profile import QualityRule


def _flagged(mask: NDArray, values: tuple[int, ...], bits: tuple[int, ...]) -> NDArray[np.bool_]:
    codes = mask.astype(np.int64, copy=False)
    flagged = np.isin(codes, values) if values else np.zeros(codes.shape, dtype=bool)
    for bit in bits:
        flagged |= (codes >> bit) & 1 == 1
    return flagged


def cloud_pixels(rule: QualityRule, mask: NDArray) -> NDArray[np.bool_]:
    return _flagged(mask, rule.cloud_values, rule.cloud_bits)


def shadow_pixels(rule: QualityRule, mask: NDArray) -> NDArray[np.bool_]:
    return _flagged(mask, rule.shadow_values, rule.shadow_bits)


def missing_pixels(rule: QualityRule, mask: NDArray) -> NDArray[np.bool_]:
    return _flagged(mask, rule.nodata_values, rule.nodata_bits)


def cloud_fraction(cloud: NDArray[np.bool_], valid: NDArray[np.bool_]) -> float:
    """Cloudy share of the valid pixels (1.0 when none is valid: nothing usable was seen)."""
    n_valid = int(valid.sum())
    return float((cloud & valid).sum() / n_valid) if n_valid else 1.0
