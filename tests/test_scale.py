"""Scale: a job graph that holds no cell, a plan read by ranges of its rows, a build state with one file per
range, and the synthetic source that benchmarks measure the pipeline with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from apache_beam.options.pipeline_options import PipelineOptions

import eo_etl.pipeline.index_parts
import eo_etl.plan
import eo_etl.store.index
from eo_etl.build import SHOWN_CELLS, _cells_shown, _samples_shown, build
from eo_etl.pipeline.graph import build_graph
from eo_etl.pipeline.index_parts import grid_row, merge_parts, write_part
from eo_etl.pipeline.plan_rows import PlanReader, plan_length, plan_ranges, range_size, work_ranges
from eo_etl.pipeline.state import BuildState
from eo_etl.plan import plan, plan_bands, write_plan
from eo_etl.recipe.load import parse_recipe
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.sources.profile import CollectionProfile, find_profile
from eo_etl.store.index import index_frame, index_table, write_index
from eo_etl.store.location import Location
from eo_etl.store.zarr import STORE_NAME

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


@pytest.mark.parametrize(
    ("collection", "bands", "dtype"),
    [("sentinel-1-rtc", ["vv", "vh"], np.float32), ("cop-dem-glo-30", ["data"], np.float32),
     ("modis-mcd12c1", ["LC_Type1"], np.uint8), ("sentinel-2-l2a", ["B02"], np.uint16)],
)  # fmt: skip
def test_synthetic_pixels_take_the_profiles_dtype_and_nodata_and_are_never_nodata(tmp_path, collection, bands, dtype):
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 10.1, 45.1])
    source = recipe.sources[0].model_copy(update={"collection": collection, "profile": collection, "bands": bands})
    samples = list(acquire_source(recipe, source, cells_of(recipe, plan(recipe))))
    nodata = find_profile(collection).nodata
    assert samples and all(s.status == "ok" and s.pixels.dtype == dtype and s.nodata == nodata for s in samples)
    assert not any((s.pixels == nodata).any() for s in samples)  # -32768, -32767, 255, 0: never a made pixel


def test_a_profile_whose_nodata_is_no_value_of_its_dtype_is_refused():
    data = find_profile("sentinel-1-rtc").model_dump() | {"dtype": "uint16"}
    with pytest.raises(ValueError, match="sentinel-1-rtc: nodata -32768 is not a value of uint16"):
        CollectionProfile.model_validate(data)


def test_a_synthetic_sentinel_1_build_stores_float32_with_its_nodata(tmp_path):
    # uint16 pixels once met Sentinel-1's nodata -32768 in the store: "-32768 out of bounds for uint16"
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 10.1, 45.1], formats=["zarr", "majortom"])
    source = recipe.sources[0].model_copy(update={"collection": "sentinel-1-rtc", "profile": "sentinel-1-rtc",
                                                  "name": "s1", "bands": ["vv", "vh"]})  # fmt: skip
    report = build(recipe.model_copy(update={"sources": [source]}), options={"direct_running_mode": "in_memory"})
    assert report.metrics["samples written"] == 4
    pixels = zarr.open_group(tmp_path / "out" / STORE_NAME, mode="r")["s1"]["pixels"]
    assert pixels.dtype == np.float32 and pixels.fill_value == -32768 and pixels.attrs["nodata"] == -32768
    assert float(pixels[:].min()) >= 1.0


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


@pytest.mark.parametrize("row_group", [7, 100_000])
def test_an_index_merged_from_workers_parts_is_the_file_written_from_all_rows_at_once(tmp_path, monkeypatch, row_group):
    monkeypatch.setattr(eo_etl.store.index, "INDEX_ROW_GROUP", row_group)
    monkeypatch.setattr(eo_etl.pipeline.index_parts, "INDEX_ROW_GROUP", row_group)
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 10.6, 45.4])
    cells = plan(recipe)
    samples = list(acquire_source(recipe, recipe.sources[0], cells_of(recipe, cells)))
    for sample in samples[::5]:  # failures: no pixels, no footprint, empty columns
        sample.fail(OSError("HTTP 503"))
    records = [s.row(version=v, recipe_hash="h") for v in (1, 2) for s in samples]
    records += [replace(r, source="other") for r in records[::3]]
    assert len({grid_row(r.grid_cell) for r in records}) > 3 and len(records) > 40
    whole = tmp_path / "whole.parquet"
    write_index(index_frame(records, cells), whole)

    held = {}  # parts as workers write them: uneven runs of records, each with its grid rows
    for i, start in enumerate(range(0, len(records), 17)):
        part = Location(tmp_path / "parts" / f"{i}.parquet")
        chunk = records[start : start + 17]
        for row in write_part(index_table(index_frame(chunk, cells)), part):
            for source in {r.source for r in chunk if grid_row(r.grid_cell) == row}:
                held.setdefault((source, row), []).append(part)
    merged = Location(tmp_path / "merged.parquet")
    assert merge_parts(held, merged) == len(records)
    assert (tmp_path / "merged.parquet").read_bytes() == whole.read_bytes()


def file_digests(folder) -> dict[str, bytes]:
    """Every file of a dataset but the build's own state and the resolved recipe (which names the folder), by
    path: what its users get."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).digest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).parts[0] not in ("_build", "recipe.json")
    }


def test_a_build_resumed_from_half_its_ranges_and_shards_equals_a_clean_one_byte_for_byte(tmp_path, monkeypatch):
    options = {"direct_running_mode": "in_memory"}
    clean = synthetic_recipe(tmp_path / "clean", [10.0, 45.0, 12.0, 46.0])
    build(clean, options=options)
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 12.0, 46.0])
    with monkeypatch.context() as patch:  # a build killed before its closing step let any staged pixels go
        patch.setattr(BuildState, "drop_range_pixels", lambda *args: None)
        build(recipe, options=options)
    out = tmp_path / "out"
    samples = out / "_build" / "versions" / "0001" / "samples" / "sentinel-2-l2a"
    ranges = sorted(samples.glob("*.json"))
    for path in ranges[len(ranges) // 2 :]:  # as the kill left it: half the ranges, half the shards, no index
        path.unlink()
        path.with_suffix(".npz").unlink()
    shards = sorted((out / "_build" / "shards" / "sentinel-2-l2a").glob("*.json"))
    for path in shards[len(shards) // 2 :]:
        path.unlink()
    (out / "index.parquet").unlink()

    report = build(recipe, options=options)
    finished = sum(len(json.loads(path.read_text())) for path in ranges[: len(ranges) // 2])
    assert report.metrics["cells already finished"] == finished > 50
    assert report.metrics["shards written"] == len(shards) - len(shards) // 2
    assert file_digests(out) == file_digests(tmp_path / "clean" / "out")
    kept = [cell for path in samples.glob("*.npz") for cell in np.load(path).files]
    assert len(kept) < 16 + 2 * 2  # staged pixels let go once in full shards: a partial shard's and its ranges' left


def test_the_report_shows_the_first_rows_of_a_large_index_and_plan_as_written(tmp_path):
    rows = SHOWN_CELLS + 700  # past what a report shows: read column by column, the first rows only
    table = pa.table({
        "sample_id": [f"{i}U_1R.s2.20240601" for i in range(rows)], "version": np.arange(rows, dtype=np.int32),
        "bands": [["B02", "B03"][: 1 + i % 2] for i in range(rows)],
        "reason": [None if i % 3 else "cloudy" for i in range(rows)],
        "bbox": [{"xmin": float(i), "ymax": i + 0.5} for i in range(rows)], "geometry": [b"\x01" * 5] * rows,
    })  # fmt: skip
    pq.write_table(table, tmp_path / "index.parquet", row_group_size=SHOWN_CELLS + 300)
    shown = pd.DataFrame(_samples_shown(Location(tmp_path / "index.parquet")))
    written = pd.read_parquet(tmp_path / "index.parquet").head(SHOWN_CELLS).to_dict("records")
    pd.testing.assert_frame_equal(shown, pd.DataFrame(written))
    cells = _cells_shown(Location(tmp_path / "index.parquet"), rows)
    assert "geometry" not in cells and cells.sample_id.tolist() == table["sample_id"].to_pylist()[:SHOWN_CELLS]
