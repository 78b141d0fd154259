"""The plain functions behind a build's store step, without a build: where samples go (ranges settled, the
samples they store counted, positions as prefix sums of the counts: ``shards.settle``, ``Positions``; their
contract: positions dense, deterministic, in version then plan order whatever order records arrive in; shards of
``shard_size`` filled by slices of ranges) and the build state's records, pixels and shard records."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from eo_etl.grid import get_grid
from eo_etl.grid.table import cells_frame
from eo_etl.pipeline import transforms
from eo_etl.pipeline.shards import Positions, ShardTask, index_records, settle, shard_members, stored_statistics
from eo_etl.pipeline.state import BuildState, ShardEntry
from eo_etl.pipeline.transforms import shard_tasks
from eo_etl.plan import PLAN_NAME, write_plan
from eo_etl.recipe import load_recipe
from eo_etl.sample import FAILED, OK, REJECTED
from eo_etl.sources.patch import NO_SCENE, NO_SCENE_IN_SLICE
from eo_etl.store.index_row import IndexRow
from eo_etl.store.location import Location
from eo_etl.store.zarr import BandStatistics
from tests.datasets import place_sample

ROOT = Path(__file__).resolve().parents[1]
MARCH, SEPTEMBER = datetime(2019, 3, 15, tzinfo=UTC), datetime(2019, 9, 11, tzinfo=UTC)


def recipe(shard_size: int = 2, formats=("zarr",)):
    demo = load_recipe(ROOT / "pipelines" / "demo.yaml")
    outputs = demo.outputs.model_copy(update={"shard_size": shard_size, "formats": list(formats)})
    return demo.model_copy(update={"outputs": outputs})


def record(cell: str, version: int = 1, source: str = "s2", status: str = OK, when=MARCH, reason=None) -> IndexRow:
    return IndexRow(sample_id=f"{cell}.{source}.20190101", grid_cell=cell, grid_row_u=0, grid_col_r=0, source=source,
                    crs="EPSG:32632", version=version, status=status, timestamp=when, reason=reason)  # fmt: skip


CELLS = ["c0", "c1", "c2", "c3", "c4"]
ORDER = {cell: i for i, cell in enumerate(CELLS)}
RANGES = [(0, 2), (2, 4), (4, 5)]  # ranges of plan rows, each settled on its own as a worker does


def place(records: list[IndexRow], recipe) -> tuple[Positions, list[IndexRow], dict]:
    """What the pipeline does with records that arrive in any order: settle each (source, range) apart, count
    what each version stores there, combine the counts into positions, place each range's records."""
    grouped: dict[tuple[str, int, int], dict[int, list[IndexRow]]] = {}
    for r in records:
        first, stop = next(part for part in RANGES if part[0] <= ORDER[r.grid_cell] < part[1])
        grouped.setdefault((r.source, first, stop), {}).setdefault(r.version, []).append(r)
    settled = {
        (source, part.version, first, stop): part
        for (source, first, stop), by_version in grouped.items()
        for part in settle(by_version, ORDER)
    }
    positions = Positions.of(
        {key: len(part.stored) for key, part in random.Random(3).sample(list(settled.items()), len(settled))}
    )
    placed = [r for (source, _, first, stop), part in settled.items()
              for r in positions.place(source, first, stop, part, recipe)]  # fmt: skip
    return positions, placed, settled


def test_positions_are_dense_per_source_in_version_then_plan_order_and_do_not_depend_on_input_order():
    records = [record(c) for c in CELLS] + [record(c, version=2, when=SEPTEMBER) for c in ("c3", "c1")]
    records += [record("c2", source="s1"), record("c0", source="s1"), record("c4", status=FAILED, version=2)]
    shuffled = random.Random(7).sample(records, len(records))
    (a, placed_a, _), (b, placed_b, _) = place(records, recipe()), place(shuffled, recipe())

    def stored(placed):
        return sorted((r.source, r.zarr_index, r.version, r.grid_cell) for r in placed if r.zarr_index is not None)

    placed = stored(placed_a)
    assert placed == stored(placed_b) and a == b  # the same positions whatever the order records came in
    assert [(v, c) for s, _, v, c in placed if s == "s2"] == [(1, c) for c in CELLS] + [(2, "c1"), (2, "c3")]
    assert [i for s, i, _, _ in placed if s == "s2"] == list(range(7))  # dense: 0..n-1, no gap
    assert [(i, c) for s, i, _, c in placed if s == "s1"] == [(0, "c0"), (1, "c2")]  # each source from 0
    assert a.counts == {"s2": 7, "s1": 2} and a.added == {1: 7, 2: 2}
    failed = next(r for r in placed_a if r.status == FAILED)
    assert failed.zarr_index is None and failed.zarr_group is None  # only ok samples take a place


def test_a_cells_time_slices_take_consecutive_positions_in_time_order():
    def sliced(cell: str, stamp: str) -> IndexRow:
        when = datetime.strptime(stamp, "%Y%m%d").replace(tzinfo=UTC)  # each slice its own scene
        return replace(record(cell, when=when), sample_id=f"{cell}.s2.{stamp}", slice_start=when)

    records = [sliced("c1", "20190601"), sliced("c0", "20190901"), sliced("c1", "20190301"), sliced("c0", "20190301")]
    _, placed, settled = place(random.Random(1).sample(records, 4), recipe())
    order = [r.sample_id for r in sorted(placed, key=lambda r: r.zarr_index)]
    assert order == ["c0.s2.20190301", "c0.s2.20190901", "c1.s2.20190301", "c1.s2.20190601"]
    entries, _ = shard_members(ShardTask("s2", 0, ((("s2", 1, 0, 2), 0, 4),)), settled.__getitem__)
    assert [e.cell for e in entries] == ["c0.20190301", "c0.20190901", "c1.20190301", "c1.20190601"]  # staged names


def test_shards_are_filled_by_slices_of_ranges_in_shard_size_positions_with_their_records():
    positions, _, settled = place([record(c) for c in CELLS], recipe(shard_size=2))
    tasks = [ShardTask("s2", k, tuple(slices)) for k, slices in enumerate(positions.shard_slices("s2", 2))]
    members = [shard_members(task, settled.__getitem__) for task in tasks]
    assert [[(e.version, e.cell) for e in entries] for entries, _ in members] == [
        [(1, "c0"), (1, "c1")], [(1, "c2"), (1, "c3")], [(1, "c4")]]  # fmt: skip
    for entries, records in members:
        assert [r.grid_cell for r in records] == [e.cell for e in entries]
    three = positions.shard_slices("s2", 3)  # a shard straddling two ranges lists a slice of each
    assert three == [
        [(("s2", 1, 0, 2), 0, 2), (("s2", 1, 2, 4), 0, 1)],
        [(("s2", 1, 2, 4), 1, 2), (("s2", 1, 4, 5), 0, 1)],
    ]


def test_the_same_scene_in_a_later_window_is_not_stored_twice_and_video_frames_follow_positions():
    records = [record("c0"), record("c1"), record("c0", version=2)]  # c0's March scene again in version 2
    positions, placed, settled = place(records, recipe(shard_size=2, formats=("zarr", "video")))
    again = next(r for r in placed if r.version == 2)
    assert again.status == REJECTED and again.reason == "the same scene is in version 1"
    assert again.zarr_index is None and settled[("s2", 2, 0, 2)].repeats == ["c0"]
    assert positions.counts == {"s2": 2} and positions.added == {1: 2, 2: 0}
    assert sorted((r.video_path, r.video_frame) for r in placed if r.version == 1) == [
        ("video/s2/shard-00000", 0), ("video/s2/shard-00000", 1)]  # fmt: skip


def test_the_index_leaves_out_a_later_windows_cells_that_had_no_scene():
    records = [record("c0", status=REJECTED, reason=NO_SCENE), record("c0", version=2, status=REJECTED,
               reason=NO_SCENE), record("c1", version=2, status=REJECTED, reason="too cloudy"),
               record("c2", version=2, status=REJECTED, reason=NO_SCENE_IN_SLICE)]  # fmt: skip
    assert [(r.grid_cell, r.version) for r in index_records(records, 1)] == [("c0", 1), ("c1", 2)]


def test_the_state_records_ranges_of_cells_and_reads_them_back_in_order(tmp_path):
    state = BuildState(tmp_path)
    samples = [place_sample(k, 10.0 + k, 45.0) for k in range(3)]
    samples[2].fail(RuntimeError("read timed out"))
    records = [sample.row(version=1, recipe_hash="hash") for sample in samples]
    with state.staging(1, "s2", 0, 2, keep=set()) as stage:
        for sample in samples[:2]:
            stage(sample.cell, sample.pixels)
    state.stage_range(1, "s2", 0, 2, records[:2])
    state.stage_range(1, "s2", 2, 3, records[2:])
    back = state.records()
    assert back == records  # the rows as staged, times datetimes again (not their text)
    assert state.range_records(1, "s2", 2, 3)[0].status == FAILED and state.range_records(1, "s2", 3, 4) == []
    with state.range_pixels(1, "s2", 0, 2) as staged:
        assert sorted(staged) == sorted(s.cell for s in samples[:2])
        np.testing.assert_array_equal(staged[samples[0].cell], samples[0].pixels)
    with state.staging(1, "s2", 0, 2, keep={samples[1].cell}) as stage:  # a rerun keeps only what it names
        stage(samples[0].cell, samples[0].pixels + 1)
    with state.range_pixels(1, "s2", 0, 2) as staged:
        assert sorted(staged) == sorted(s.cell for s in samples[:2])
        np.testing.assert_array_equal(staged[samples[0].cell], samples[0].pixels + 1)
    state.drop_range_pixels(1, "s2", 0, 2)
    with state.range_pixels(1, "s2", 0, 2) as staged:
        assert len(staged) == 0


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


def test_the_store_statistics_merge_every_shards_own_and_a_shard_not_written_as_assigned_fails(tmp_path):
    state = BuildState(tmp_path)
    bands = (("B04",), "uint16", 0.0)
    shards = [np.array([[[0, 2], [4, 6]]], np.uint16), np.array([[[8, 10], [0, 0]]], np.uint16)]
    for k, pixels in enumerate(shards):
        statistics = BandStatistics(*bands)
        statistics.add(pixels)
        state.record_shard("s2", k, [ShardEntry(1, f"c{2 * k}"), ShardEntry(1, f"c{2 * k + 1}")][: 2 - k], statistics)
    merged = stored_statistics(state, "s2", 3, 2, lambda: BandStatistics(*bands))
    whole = BandStatistics(*bands)
    whole.add(np.stack(shards))  # (sample, band, y, x)
    assert merged.as_dict() == whole.as_dict() and merged.as_dict()["B04"]["mean"] == 6.0  # 0 is nodata
    with pytest.raises(RuntimeError, match="shard 1 of s2 was not written as assigned"):
        stored_statistics(state, "s2", 4, 2, lambda: BandStatistics(*bands))  # shard 1 holds one sample, not two
    state.forget_shards_from("s2", 1)
    with pytest.raises(RuntimeError, match="shard 1 of s2 was not written as assigned"):
        stored_statistics(state, "s2", 3, 2, lambda: BandStatistics(*bands))  # shard 1's record gone


def test_staged_pixels_go_only_for_ranges_whose_samples_all_lie_in_full_shards():
    positions = Positions.of({("s2", 1, 0, 2): 2, ("s2", 1, 2, 4): 2, ("s2", 2, 0, 2): 1, ("s1", 1, 0, 2): 1})
    # s2 stores 5 samples: shards of 2 are [0, 1] [2, 3] full, [4] partial; s1's one sample is a partial shard
    assert positions.ranges_in_full_shards(2) == [("s2", 1, 0, 2), ("s2", 1, 2, 4)]
    assert positions.ranges_in_full_shards(5) == [("s2", 1, 0, 2), ("s2", 1, 2, 4), ("s2", 2, 0, 2)]
    assert positions.ranges_in_full_shards(1) == sorted(positions.starts)


def test_the_progress_view_counts_the_cells_and_shards_where_the_state_records_them(tmp_path):
    from eo_etl.pipeline.progress import _cells, _count

    state = BuildState(tmp_path)
    state.stage_range(2, "s2", 0, 2, [record("c0", version=2), record("c1", version=2)])
    state.stage_range(2, "s1", 4, 5, [record("c4", version=2, source="s1")])
    state.record_shard("s2", 0, [ShardEntry(2, "c0")], BandStatistics(("B04",), "uint16", 0.0))
    assert _cells(state.samples_dir(2).local_path) == 3 and _cells(state.samples_dir(1).local_path) == 0
    assert _count(state.shards_dir.local_path, "*/*.json") == 1


def test_positions_are_the_prefix_sums_of_the_counts_in_source_version_and_plan_order():
    counts = {("s2", 2, 0, 2): 1, ("s2", 1, 2, 4): 3, ("s1", 1, 0, 2): 0, ("s2", 1, 0, 2): 2, ("s2", 1, 4, 5): 0}
    positions = Positions.of(counts)
    assert positions.starts == {
        ("s1", 1, 0, 2): (0, 0),
        ("s2", 1, 0, 2): (0, 2), ("s2", 1, 2, 4): (2, 3), ("s2", 1, 4, 5): (5, 0),  # version 1 in plan order …
        ("s2", 2, 0, 2): (5, 1),  # … then version 2 after it
    }  # fmt: skip
    assert positions.counts == {"s2": 6}  # a source storing nothing has no store
    assert positions.added == {1: 5, 2: 1} and positions.first_version == 1
    empty = Positions.of({})
    assert empty.counts == {} and empty.first_version is None and empty.shard_slices("s2", 4) == []


def test_shard_tasks_cover_each_sources_positions_once_in_shards_of_shard_size():
    counts = {("s2", 1, 0, 2): 2, ("s2", 1, 2, 4): 3, ("s2", 2, 0, 2): 1, ("s1", 1, 0, 2): 1, ("s0", 1, 0, 2): 0}
    positions = Positions.of(counts)
    tasks = list(shard_tasks(positions, recipe(shard_size=4)))
    assert [(task.source, task.k) for task in tasks] == [("s1", 0), ("s2", 0), ("s2", 1)]  # none for s0's nothing
    assert tasks[0].slices == ((("s1", 1, 0, 2), 0, 1),)
    assert tasks[1].slices == ((("s2", 1, 0, 2), 0, 2), (("s2", 1, 2, 4), 0, 2))
    assert tasks[2].slices == ((("s2", 1, 2, 4), 2, 3), (("s2", 2, 0, 2), 0, 1))  # the last shard: 2 of 4
    for source in ("s2", "s1"):  # every stored sample of a source in exactly one shard, in position order
        spans = [(key, lo, hi) for task in tasks if task.source == source for key, lo, hi in task.slices]
        assert sum(hi - lo for _, lo, hi in spans) == positions.counts[source]
        assert [positions.starts[key][0] + lo for key, lo, _ in spans] == sorted(
            positions.starts[key][0] + lo for key, lo, _ in spans
        )


def test_the_state_stages_samples_by_range_as_they_come_and_lists_every_versions_records_in_order(tmp_path):
    state = BuildState(tmp_path)
    samples = [place_sample(k, 10.0 + k, 45.0) for k in range(4)]
    samples[1].fail(RuntimeError("read timed out"))
    names = [sample.cell for sample in samples]
    part_of = {names[0]: (0, 3), names[1]: (0, 3), names[2]: (0, 3), names[3]: (3, 4)}
    # in any order, across ranges; a failed sample is recorded, with no pixels
    first = state.stage_samples(1, "s2", [samples[3], samples[1], samples[0]], part_of, {}, "hash")
    assert {part: [r.grid_cell for r in records] for part, records in first.items()} == {
        (3, 4): [names[3]], (0, 3): [names[1], names[0]]}  # fmt: skip
    with state.range_pixels(1, "s2", 0, 3) as staged:
        assert list(staged) == [names[0]]
        np.testing.assert_array_equal(staged[names[0]], samples[0].pixels)
    # a rerun: the failed cell tried again and a new one; the kept cell's pixels copied over, in one file again
    again = place_sample(1, 11.0, 45.0)
    second = state.stage_samples(1, "s2", [samples[2], again], part_of, {(0, 3): [first[(0, 3)][1]]}, "hash")
    assert [(r.grid_cell, r.status, r.version, r.recipe_hash) for r in second[(0, 3)]] == [
        (names[0], OK, 1, "hash"), (names[2], OK, 1, "hash"), (names[1], OK, 1, "hash")]  # fmt: skip
    with state.range_pixels(1, "s2", 0, 3) as staged:
        assert sorted(staged) == sorted(names[:3])
        for sample in (samples[0], again, samples[2]):
            np.testing.assert_array_equal(staged[sample.cell], sample.pixels)
    assert state.range_records(1, "s2", 0, 3) == second[(0, 3)]  # the rows as staged, typed again
    assert not list(tmp_path.rglob("*.npy"))  # one file per range, nothing per sample
    state.stage_samples(2, "s2", [samples[1]], part_of, {}, "hash")  # a later version's
    state.stage_range(1, "s1", 0, 3, [replace(second[(0, 3)][0], source="s1")])
    assert [(r.version, r.source, r.grid_cell) for r in state.records()] == [
        (1, "s1", names[0]), (1, "s2", names[0]), (1, "s2", names[2]), (1, "s2", names[1]), (1, "s2", names[3]),
        (2, "s2", names[1])]  # fmt: skip


def test_a_worker_settles_each_range_once_however_many_shards_ask_for_it(tmp_path, monkeypatch):
    plan = cells_frame(get_grid(), [454] * len(CELLS), range(120, 120 + len(CELLS)))
    write_plan(plan, tmp_path / PLAN_NAME)
    state = BuildState(tmp_path)
    version = state.open_version(recipe())
    names = plan.grid_cell.tolist()
    for first, stop in RANGES:
        state.stage_range(version, "s2", first, stop, [record(cell, version) for cell in names[first:stop]])
    calls = []
    monkeypatch.setattr(transforms, "settle", lambda *args: calls.append(args) or settle(*args))
    reader = transforms.RangeReader(Location(tmp_path))
    positions = Positions.of({("s2", version, first, stop): stop - first for first, stop in RANGES})
    keys = [key for task in shard_tasks(positions, recipe(shard_size=1)) for key, _, _ in task.slices]
    assert len(keys) == len(CELLS)  # a shard per sample: a range of two cells is asked for by two shards
    # what a worker did before: settle the range for every shard that asks
    before = [next(p for p in reader.settle(s, first, stop) if p.version == v) for s, v, first, stop in keys]
    assert len(calls) == len(keys)
    calls.clear()
    after = [reader.part(key) for key in keys]
    assert len(calls) == len(RANGES)  # once a range
    assert after == before and [len(part.stored) for part in after] == [2, 2, 2, 2, 1]
    assert [part.records[0].grid_cell for part in after] == [names[0], names[0], names[2], names[2], names[4]]
