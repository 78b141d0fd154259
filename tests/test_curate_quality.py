"""Quality scores on real Sentinel-2 pixels (tests/imagery.py: the xarray-spatial scene with its SCL, cloudy
on its top rows), run through the stage mechanism without Beam: failing samples keep their row, flagged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from eo_etl.curate.quality import STAGE as QUALITY
from eo_etl.curate.quality import pixel_hash
from eo_etl.recipe import parse_recipe
from eo_etl.stages.run import run_stage
from tests.datasets import write_dataset
from tests.imagery import sentinel2_samples


def curation_recipe(**curation):
    return parse_recipe({
        "name": "curate", "aoi": {"bbox": [0, 0, 1, 1]}, "time": {"start": "2019-01-01", "end": "2019-12-31"},
        "sources": [{"name": "s2", "kind": "stac", "url": "http://127.0.0.1:9/stac", "collection": "sentinel-2-l2a",
                     "bands": ["B02", "B03", "B04", "B08", "SCL"], "resolution_m": 10, "patch_size": 64}],
        "curation": curation,
    })  # fmt: skip


def test_quality_scores_flag_cloudy_empty_saturated_and_dead_samples_and_keep_their_rows(tmp_path):
    samples = sentinel2_samples(4)
    samples[0].pixels[4, :16] = 9  # SCL cloud (high probability) on a quarter of the sample
    samples[0].pixels[4, 16:24] = 3  # and cloud shadow on an eighth
    samples[1].pixels[:4, :, :32] = 0  # half the sample without data
    samples[2].pixels[2] = 7000  # B04 constant: a dead band
    samples[3].pixels[0, :8] = 65535  # B02 saturated on an eighth
    root = write_dataset(tmp_path / "ds", samples)
    recipe = curation_recipe(quality={"max_cloud_fraction": 0.2, "max_shadow_fraction": 0.1,
                                      "max_nodata_fraction": 0.1, "max_saturated_fraction": 0.1})  # fmt: skip
    plan = run_stage(QUALITY, recipe, root)
    assert plan.todo == 4
    table = pd.read_parquet(root / "quality.parquet").set_index("sample_id")
    index = pd.read_parquet(root / "index.parquet")
    assert table.index.tolist() == index["sample_id"].tolist()  # every sample keeps its row
    first, second, third, fourth = (table.loc[sid] for sid in index["sample_id"])
    assert first["cloud_fraction"] == 0.25 and first["shadow_fraction"] == 0.125
    assert list(first["flags"]) == ["cloud", "shadow"] and not first["passed"]
    assert "cloud 0.250 > 0.2" in first["reason"]
    assert second["nodata_fraction"] == 0.5 and list(second["flags"]) == ["nodata"]
    assert list(third["dead_bands"]) == ["B04"] and list(third["flags"]) == ["dead"]
    assert fourth["saturated_fraction"] == 0.125 and list(fourth["flags"]) == ["saturated"]
    # the same limits pass them all when loosened, and a clean sample passes with no reason
    loose = run_stage(QUALITY, curation_recipe(quality={"allow_dead_bands": True}), root)
    assert loose.todo == 4  # other settings: the stage reruns
    assert pd.read_parquet(root / "quality.parquet")["passed"].all()
    assert (pd.read_parquet(root / "quality.parquet")["reason"] == "").all()


def test_flat_curation_limits_of_older_recipes_are_the_quality_limits():
    recipe = curation_recipe(max_cloud_fraction=0.5, max_nodata_fraction=0.0)
    assert recipe.curation.quality.max_cloud_fraction == 0.5
    assert recipe.curation.quality.max_nodata_fraction == 0.0


def test_the_pixel_hash_tells_identical_pixels_from_one_changed_value():
    pixels = sentinel2_samples(1)[0].pixels
    changed = pixels.copy()
    changed[0, 0, 0] += 1
    assert pixel_hash(pixels) == pixel_hash(pixels.copy()) != pixel_hash(changed)
    assert pixel_hash(pixels) != pixel_hash(pixels.astype(np.int32))


def test_a_build_of_the_curate_stages_writes_quality_then_the_dedup_view_through_beam(tmp_path):
    from eo_etl.build import build

    samples = sentinel2_samples(3)
    samples.append(dataclasses.replace(samples[0], cell="5400D_5100L"))  # the same pixels in another cell
    root = write_dataset(tmp_path / "ds", samples)
    recipe = curation_recipe(dedup={"methods": ["exact"]})
    report = build(recipe, root, stages=["curate"], runner="direct",
                   options={"direct_running_mode": "in_memory"})  # FnApiRunner  # fmt: skip
    lines = {stage.name: (stage.status, stage.detail) for stage in report.stages}
    assert lines["quality"][0] == "done" and lines["dedup"][0] == "done", lines
    assert lines["embed"][0] == "not configured"
    dedup = pd.read_parquet(root / "dedup.parquet").set_index("sample_id")
    assert dedup["duplicate"].tolist().count(True) == 1
    assert dedup.loc[str(samples[3].sample_id), "exact"] == str(samples[0].sample_id)
    again = build(recipe, root, stages=["curate"], runner="direct", options={"direct_running_mode": "in_memory"})
    assert {s.name: s.status for s in again.stages}["quality"] == "up to date"
