"""One GeoTIFF per sample (``samples/<source>/<cell>.tif``): tiled, deflate, band names and provenance in
its tags. Written to a temporary name and renamed, so a killed run never leaves a half-written file."""

from __future__ import annotations

import json
from pathlib import Path

import rasterio

from eo_etl.sample import Sample


def sample_path(root: Path, sample: Sample) -> Path:
    return Path(root) / "samples" / sample.source / f"{sample.cell}.tif"


def write_sample(root: Path, sample: Sample) -> Path:
    """Write the sample's pixels; returns the file's path."""
    path = sample_path(root, sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    bands, height, width = sample.pixels.shape
    with rasterio.open(
        partial, "w", driver="GTiff", count=bands, height=height, width=width, dtype=sample.pixels.dtype,
        crs=sample.crs, transform=rasterio.Affine(*sample.transform), nodata=sample.nodata,
        tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=2,
    ) as dst:  # fmt: skip
        dst.write(sample.pixels)
        dst.descriptions = sample.bands
        for i, (scale, offset) in enumerate(zip(sample.scales, sample.offsets), start=1):
            dst.update_tags(i, scale=scale, offset=offset)
        record = sample.record()
        dst.update_tags(**{k: json.dumps(v, default=str) for k, v in record.items() if k not in ("transform",)})
    return partial.replace(path)
