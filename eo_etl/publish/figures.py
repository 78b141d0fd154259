"""The dataset card's pictures, rendered from the built dataset with Pillow (no plotting stack needed):

- a coverage map: every cell's footprint in longitude/latitude, coloured by its status (stored, rejected,
  failed), with a graticule;
- thumbnails: the stored samples with the least nodata, per source, in true colour (red/green/blue by common
  name, else the first band in grey), each band stretched between the p01 and p99 of its stored statistics,
  nodata black.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import zarr

from eo_etl.sources.profile import find_profile
from eo_etl.store.zarr import STORE_NAME, quiet_consolidated

STATUS_COLOURS = {"ok": (46, 139, 87), "rejected": (230, 145, 30), "failed": (200, 40, 40)}
MAP_SIZE = (720, 480)
MAP_MARGIN = 48  # px around the map, for the legend and the graticule's labels
Bounds = tuple[float, float, float, float]  # west, south, east, north
Pixel = Callable[[float, float], tuple[float, float]]  # lon, lat → x, y on the map
THUMB = 128  # px per thumbnail side


def coverage_map(index: pd.DataFrame, path: Path) -> Path:
    """A PNG of the index's footprints (``geometry``: WKB or shapely) by status; returns ``path``."""
    from PIL import Image, ImageDraw  # the publish extra

    shapes = [g if isinstance(g, shapely.Geometry) else shapely.from_wkb(g) for g in index.geometry]
    bounds, pixel = _map_frame(shapely.total_bounds(shapes) if shapes else (-180.0, -90.0, 180.0, 90.0))
    image = Image.new("RGB", MAP_SIZE, (250, 250, 248))
    draw = ImageDraw.Draw(image)
    _graticule(draw, bounds, pixel)
    for shape, status in zip(shapes, index.status):
        colour = STATUS_COLOURS.get(status, (120, 120, 120))
        for polygon in getattr(shape, "geoms", [shape]):
            ring = [pixel(x, y) for x, y in polygon.exterior.coords]
            draw.polygon(ring, fill=colour + (0,), outline=(40, 40, 40))
    x = MAP_MARGIN
    for status, colour in STATUS_COLOURS.items():  # the legend, with each status's count
        count = int((index.status == status).sum())
        draw.rectangle([x, 12, x + 12, 24], fill=colour)
        draw.text((x + 16, 12), f"{status} ({count})", fill=(30, 30, 30))
        x += 130
    image.save(path, format="PNG")
    return path


def _map_frame(bounds: Bounds) -> tuple[Bounds, Pixel]:
    """The map's bounds (``bounds`` padded) and the function from lon/lat to a pixel of the map, centred."""
    west, south, east, north = bounds
    pad = max(east - west, north - south, 1e-3) * 0.08
    west, south, east, north = west - pad, south - pad, east + pad, north + pad
    width, height = MAP_SIZE
    # One scale for both axes, corrected for latitude, so cells keep their shape.
    stretch = math.cos(math.radians((south + north) / 2)) or 1.0
    scale = min((width - 2 * MAP_MARGIN) / ((east - west) * stretch), (height - 2 * MAP_MARGIN) / (north - south))

    left = (width - (east - west) * stretch * scale) / 2  # centred
    bottom = height - (height - (north - south) * scale) / 2

    def pixel(lon: float, lat: float) -> tuple[float, float]:
        return left + (lon - west) * stretch * scale, bottom - (lat - south) * scale

    return (west, south, east, north), pixel


def _graticule(draw, bounds: Bounds, pixel: Pixel) -> None:
    """Lines of longitude and latitude at a round step, labelled in degrees."""
    west, south, east, north = bounds
    width, height = MAP_SIZE
    step = _nice_step(max(east - west, north - south) / 4)
    for lon in np.arange(math.ceil(west / step) * step, east, step):
        x, _ = pixel(lon, south)
        draw.line([(x, MAP_MARGIN), (x, height - MAP_MARGIN)], fill=(215, 215, 215))
        draw.text((x + 2, height - MAP_MARGIN + 4), f"{lon:.{_decimals(step)}f}°", fill=(90, 90, 90))
    for lat in np.arange(math.ceil(south / step) * step, north, step):
        _, y = pixel(west, lat)
        draw.line([(MAP_MARGIN, y), (width - MAP_MARGIN, y)], fill=(215, 215, 215))
        draw.text((4, y - 6), f"{lat:.{_decimals(step)}f}°", fill=(90, 90, 90))


def thumbnails(root: Path, source: str, profile: str | None, rows: pd.DataFrame, count: int, path: Path) -> Path | None:
    """A PNG of up to ``count`` stored samples of ``source`` (collection profile ``profile``; ``rows``: its index
    rows), those with the least nodata, each labelled with its cell; None when there is nothing to show."""
    if count <= 0 or rows.empty:
        return None
    from PIL import Image, ImageDraw  # the publish extra

    with quiet_consolidated():
        group = zarr.open_group(root / STORE_NAME, path=source, mode="r")
    pixels, bands = group["pixels"], [str(b) for b in group["band"][:]]
    statistics = group.attrs.get("band_statistics", {})
    nodata = pixels.attrs.get("nodata")
    picks = rows.sort_values("nodata", kind="stable").head(count).sort_values("zarr_index")  # the fullest samples
    chosen = _display_bands(profile, bands)
    columns = min(len(picks), 8)
    lines = math.ceil(len(picks) / columns)
    sheet = Image.new("RGB", (columns * (THUMB + 8) + 8, lines * (THUMB + 24) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(picks.itertuples()):
        stack = pixels[int(row.zarr_index), [bands.index(b) for b in chosen]].astype(np.float64)
        valid = np.ones(stack.shape[1:], bool) if nodata is None else (stack != nodata).all(axis=0)
        channels = [_stretch(band, statistics.get(name, {}), valid) for band, name in zip(stack, chosen)]
        rgb = np.stack(channels * 3 if len(channels) == 1 else channels, axis=-1)
        rgb[~valid] = 0
        tile = Image.fromarray(rgb).resize((THUMB, THUMB), Image.NEAREST)
        x, y = 8 + (k % columns) * (THUMB + 8), 8 + (k // columns) * (THUMB + 24)
        sheet.paste(tile, (x, y))
        draw.text((x, y + THUMB + 4), str(row.grid_cell), fill=(30, 30, 30))
    sheet.save(path, format="PNG")
    return path


def _display_bands(name: str | None, bands: list[str]) -> list[str]:
    """Red, green and blue by the profile's common names when the source has them, else its first band."""
    profile = find_profile(name) if name else None
    if profile is not None:
        names = {spec.common_name: band for band, spec in profile.bands.items() if band in bands}
        if all(colour in names for colour in ("red", "green", "blue")):
            return [names["red"], names["green"], names["blue"]]
    return bands[:1]


def _stretch(band: np.ndarray, statistics: dict, valid: np.ndarray) -> np.ndarray:
    low, high = statistics.get("p01"), statistics.get("p99")
    if low is None or high is None:
        values = band[valid]
        low, high = np.percentile(values, (1, 99)) if values.size else (0.0, 1.0)
    scaled = (band - low) / max(high - low, 1e-9)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _nice_step(span: float) -> float:
    power = 10 ** math.floor(math.log10(span)) if span > 0 else 1
    return next(m * power for m in (1, 2, 5, 10) if m * power >= span)


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step))) if step < 1 else 0
