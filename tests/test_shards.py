"""The plain functions behind a build's store step, without a build: where samples go (``assign_positions``,
its contract: positions dense, deterministic, in version then plan order; shard tasks of ``shard_size``) and
the build state's records, pixels and shard records."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from eo_etl.pipeline.shards import assign_positions, index_records
from eo_etl.pipeline.state import BuildState, ShardEntry
from eo_etl.recipe import load_recipe
from eo_etl.sample import FAILED, OK, REJECTED
from eo_etl.sources.patch import NO_SCENE
from eo_etl.store.zarr import BandStatistics
from tests.datasets import place_sample

ROOT = Path(__file__).resolve().parents[1]
MARCH, SEPTEMBER = datetime(2019, 3, 15, tzinfo=UTC), datetime(2019, 9, 11, tzinfo=UTC)


def recipe(shard_size: int = 2, formats=("zarr",)):
    demo = load_recipe(ROOT / "pipelines" / "demo.yaml")
    outputs = demo.outputs.model_copy(update={"shard_size": shard_size, "formats": list(formats)})
    return demo.model_copy(update={"outputs": outputs})


def record(cell: str, version: int = 1, source: str = "s2", status: str = OK, when=MARCH, reason=None) -> dict:
    return {"grid_cell": cell, "source": source, "version": version, "status": status, "timestamp": when,
            "reason": reason}  # fmt: skip


CELLS = ["c0", "c1", "c2", "c3", "c4"]
ORDER = {cell: i for i, cell in enumerate(CELLS)}


def test_positions_are_dense_per_source_in_version_then_plan_order_and_do_not_depend_on_input_order():
    records = [record(c) for c in CELLS] + [record(c, version=2, when=SEPTEMBER) for c in ("c3", "c1")]
    records += [record("c2", source="s1"), record("c0", source="s1"), record("c4", status=FAILED, version=2)]
    shuffled = random.Random(7).sample(records, len(records))
    a, b = assign_positions(records, recipe(), ORDER), assign_positions(shuffled, recipe(), ORDER)
    placed = sorted(
        (r["source"], r["zarr_index"], r["version"], r["grid_cell"]) for r in a.records if "zarr_index" in r
    )
    assert placed == sorted((r["source"], r["zarr_index"], r["version"], r["grid_cell"])
                            for r in b.records if "zarr_index" in r)  # fmt: skip
    assert [(v, c) for s, _, v, c in placed if s == "s2"] == [(1, c) for c in CELLS] + [(2, "c1"), (2, "c3")]
    assert [i for s, i, _, _ in placed if s == "s2"] == list(range(7))  # dense: 0..n-1, no gap
    assert [(i, c) for s, i, _, c in placed if s == "s1"] == [(0, "c0"), (1, "c2")]  # each source from 0
    assert a.counts == {"s2": 7, "s1": 2} and a.added == {1: 7, 2: 2}
    failed = next(r for r in a.records if r["status"] == FAILED)
    assert "zarr_index" not in failed  # only ok samples take a place


def test_shard_tasks_cut_each_source_in_shard_size_positions_with_their_records():
    records = [record(c) for c in CELLS]
    assignment = assign_positions(records, recipe(shard_size=2), ORDER)
    tasks = [(t.source, t.k, [(e.version, e.cell) for e in t.entries]) for t in assignment.tasks]
    assert tasks == [("s2", 0, [(1, "c0"), (1, "c1")]), ("s2", 1, [(1, "c2"), (1, "c3")]), ("s2", 2, [(1, "c4")])]
    for task in assignment.tasks:
        assert [r["grid_cell"] for r in task.records] == [e.cell for e in task.entries]


def test_the_same_scene_in_a_later_window_is_not_stored_twice_and_video_frames_follow_positions():
    records = [record("c0"), record("c1"), record("c0", version=2)]  # c0's March scene again in version 2
    assignment = assign_positions(records, recipe(shard_size=2, formats=("zarr", "video")), ORDER)
    again = assignment.records[2]
    assert again["status"] == REJECTED and again["reason"] == "the same scene is in version 1"
    assert assignment.unstored == [("s2", ShardEntry(2, "c0"))]
    assert [(r["video_path"], r["video_frame"]) for r in assignment.records[:2]] == [
        ("video/s2/shard-00000", 0), ("video/s2/shard-00000", 1)]  # fmt: skip


def test_the_index_leaves_out_a_later_windows_cells_that_had_no_scene():
    records = [record("c0", status=REJECTED, reason=NO_SCENE), record("c0", version=2, status=REJECTED,
               reason=NO_SCENE), record("c1", version=2, status=REJECTED, reason="too cloudy")]  # fmt: skip
    assert [(r["grid_cell"], r["version"]) for r in index_records(records)] == [("c0", 1), ("c1", 2)]


def test_the_state_records_ranges_of_cells_and_reads_them_back_in_order(tmp_path):
    state = BuildState(tmp_path)
    samples = [place_sample(k, 10.0 + k, 45.0) for k in range(3)]
    samples[2].fail(RuntimeError("read timed out"))
    records = [state.stage(1, sample, "hash") for sample in samples]
    assert [r["version"] for r in records] == [1, 1, 1] and records[0]["recipe_hash"] == "hash"
    state.stage_range(1, "s2", 0, 2, records[:2])
    state.stage_range(1, "s2", 2, 3, records[2:])
    back = state.records()
    assert [r["grid_cell"] for r in back] == [s.cell for s in samples]
    assert back[0]["timestamp"] == samples[0].timestamp  # a datetime again, not its text
    assert state.range_records(1, "s2", 2, 3)[0]["status"] == FAILED and state.range_records(1, "s2", 3, 4) == []
    assert state.done_cells(1, "s2") == {samples[0].cell, samples[1].cell}  # failed cells are tried again
    np.testing.assert_array_equal(state.load_pixels(1, "s2", samples[0].cell), samples[0].pixels)
    assert not state.has_pixels(1, "s2", samples[2].cell)  # a failed sample stages no pixels
    state.drop_pixels([ShardEntry(1, samples[0].cell)], "s2")
    assert state.load_pixels(1, "s2", samples[0].cell) is None


def test_the_state_records_written_shards_with_their_statistics(tmp_path):
    state = BuildState(tmp_path)
    entries = [ShardEntry(1, "c0"), ShardEntry(2, "c1")]
    statistics = BandStatistics(("B04",), "uint16", 0.0)
    statistics.add(np.array([[[0, 2], [4, 6]]], np.uint16))
    for k in range(3):
        state.record_shard("s2", k, entries, statistics)
    assert state.shard_entries("s2", 1) == entries and state.shard_entries("s2", 3) is None
    back = state.shard_statistics("s2", 0, BandStatistics(("B04",), "uint16", 0.0))
    assert back.as_dict() == statistics.as_dict() and back.as_dict()["B04"]["mean"] == 4.0  # 0 is nodata
    state.forget_shards_from("s2", 1)
    assert state.shard_entries("s2", 0) == entries and state.shard_entries("s2", 1) is None
