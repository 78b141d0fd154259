"""Scale: a job graph that holds no cell, a plan read by ranges of its rows, a build state with one file per
range, and the synthetic source that benchmarks measure the pipeline with."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import eo_etl.plan
from eo_etl.build import build
from eo_etl.pipeline.graph import build_graph
from eo_etl.pipeline.plan_rows import PlanReader, plan_length, plan_ranges, range_size, work_ranges
from eo_etl.pipeline.state import BuildState
from eo_etl.plan import plan, plan_bands, write_plan
from eo_etl.recipe.load import parse_recipe
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.store.location import Location

EUROPE = [-25.0, 34.0, 45.0, 72.0]  # 83,659 cells on the 10 km grid


def synthetic_recipe(tmp_path, bbox, **outputs):
    return parse_recipe({
        "name": "scale",
        "aoi": {"bbox": bbox},
        "time": {"start": "2024-06-01", "end": "2024-06-30"},
        "sources": [{"kind": "synthetic", "collection": "sentinel-2-l2a", "bands": ["B02", "B04"], "patch_size": 8}],
        "outputs": {"path": str(tmp_path / "out"), "formats": ["zarr"], "shard_size": 16, **outputs},
        "runner": {"kind": "direct", "workers": 1},
    })  # fmt: skip


def graph_bytes(recipe, root) -> int:
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions())
    build_graph(pipeline, recipe, Location.of(root), 1)
    return len(pipeline.to_runner_api().SerializeToString())


def test_the_job_graph_of_a_continent_holds_no_cell_and_stays_under_a_megabyte(tmp_path):
    europe = synthetic_recipe(tmp_path, EUROPE)
    few = synthetic_recipe(tmp_path, [10.0, 45.0, 10.2, 45.2])
    assert len(plan(few)) == 9
    continent = graph_bytes(europe, tmp_path / "out")
    assert continent < 1_000_000
    # only the recipe's own text differs: no cell reaches the graph (83,659 cells once made 9.5 MB)
    assert abs(continent - graph_bytes(few, tmp_path / "out")) < 200


def test_a_plan_is_read_back_by_ranges_of_rows_across_its_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(eo_etl.plan, "PLAN_ROW_GROUP", 7)  # many row groups, so that ranges straddle them
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 14.0, 46.0])
    target = Location(tmp_path / "plan.parquet")
    write_plan(plan_bands(recipe, band_cells=50), target)
    whole = pd.read_parquet(tmp_path / "plan.parquet")
    assert plan_length(target) == len(whole) == len(plan(recipe)) > 300
    ranges = plan_ranges(len(whole))
    assert ranges[0][0] == 0 and ranges[-1][1] == len(whole)
    assert all(a[1] == b[0] and a[1] - a[0] == range_size(len(whole)) for a, b in zip(ranges, ranges[1:]))
    reader = PlanReader(target)
    got = pd.concat([reader.rows(first, stop) for first, stop in ranges], ignore_index=True)
    pd.testing.assert_frame_equal(got, whole[got.columns.tolist()])
    assert reader.rows(len(whole), len(whole) + 5).empty


def test_ranges_grow_with_the_plan_up_to_one_catalogue_search():
    assert [range_size(n) for n in (4, 127, 128, 1_000, 10_000, 2_250_000)] == [1, 1, 2, 15, 64, 64]
    assert len(plan_ranges(2_250_000)) == 35_157
    # a worker takes whole ranges at once, enough for every worker to stay busy: one search per element
    assert work_ranges(12, 2) == [(i, i + 2) for i in range(0, 12, 2)]
    assert work_ranges(100, 1) == [(i, min(i + 25, 100)) for i in range(0, 100, 25)]  # 1-cell ranges, 25 a search
    assert work_ranges(10_000, 2) == plan_ranges(10_000)  # 64 cells: one range each


def test_the_synthetic_source_makes_the_same_pixels_from_a_cells_name_without_io(tmp_path):
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 10.2, 45.2])
    cells = cells_of(recipe, plan(recipe))
    first = list(acquire_source(recipe, recipe.sources[0], cells))
    again = list(acquire_source(recipe, recipe.sources[0], cells[::-1]))[::-1]
    assert [s.status for s in first] == ["ok"] * len(cells) == ["ok"] * 9
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(first, again))
    assert not np.array_equal(first[0].pixels, first[1].pixels)  # each cell its own
    assert first[0].pixels.shape == (2, 8, 8) and first[0].pixels.dtype == np.uint16 and first[0].pixels.min() > 0
    assert first[0].product_id == f"synthetic-{cells[0].name}" and first[0].timestamp.day == 16  # mid-window


def test_a_build_records_its_cells_by_range_and_a_rerun_acquires_none(tmp_path):
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 14.0, 46.0])
    options = {"direct_running_mode": "in_memory"}
    report = build(recipe, options=options)
    cells = report.planned
    samples = tmp_path / "out" / "_build" / "versions" / "0001" / "samples" / "sentinel-2-l2a"
    files = sorted(samples.glob("*.json"))
    assert cells > 300 and len(files) == len(plan_ranges(cells)) < cells / 3  # one state file per range
    assert sum(len(json.loads(f.read_text())) for f in files) == cells == report.metrics["samples written"]
    assert len(BuildState(tmp_path / "out").records()) == cells
    index = (tmp_path / "out" / "index.parquet").read_bytes()

    again = build(recipe, options=options)
    assert again.metrics["cells already finished"] == cells and "samples ok" not in again.metrics
    assert (tmp_path / "out" / "index.parquet").read_bytes() == index


@pytest.mark.parametrize("name", ["../escape", "a/../../b"])
def test_a_source_name_never_leads_the_state_out_of_its_folder(tmp_path, name):
    with pytest.raises(ValueError):
        BuildState(tmp_path).range_records(1, name, 0, 1)
