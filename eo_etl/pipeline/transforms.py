"""The Beam steps of a build. Each wraps the plain functions of a stage module; clients (catalogues,
readers, thread pools, the store) open once per worker in ``setup``. Counters go to Beam's metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import apache_beam as beam
import geopandas as gpd
import pandas as pd
from apache_beam.metrics import Metrics

from eo_etl.pipeline.plan_rows import PlanReader, plan_length, plan_ranges, range_size, work_ranges
from eo_etl.pipeline.shards import Assignment, ShardTask, assign_positions, index_records
from eo_etl.pipeline.state import BuildState
from eo_etl.plan import PLAN_NAME
from eo_etl.recipe import Recipe
from eo_etl.sample import FAILED, OK, REJECTED, Sample
from eo_etl.sources.acquire import SourceAcquisition
from eo_etl.sources.align import aligned_groups, anchors_of_records
from eo_etl.sources.cell import cells_of
from eo_etl.sources.remote import HostLimiter, RetryPolicy
from eo_etl.store.dataset import existing_pixel_store, finish_dataset, open_pixel_store, write_shard
from eo_etl.store.location import Location
from eo_etl.store.zarr import BandStatistics, ZarrWriter

NAMESPACE = "eo_etl"
SKIPPED_ITEM = "catalogue item skipped: "  # a counter named by the item's href and why: one line in the report


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def ranges_of_plan(sources: list[str], root: Location, workers: int) -> Iterator[tuple[str, int, int]]:
    """(source, first, stop): the plan's cells as ranges of its rows, read from its footer on a worker, so the
    job graph holds no cell however large the plan."""
    for first, stop in work_ranges(plan_length(Location.of(root) / PLAN_NAME), workers):
        for source in sources:
            yield source, first, stop


class AcquireRange(beam.DoFn):
    """(source, first, stop) → the cells of those plan rows (whole ranges) not finished before, acquired and
    staged: cut in the worker's threads under its share of the recipe's per-service limits (transient errors
    retried, and counted), each outcome counted (the quality step's tally), then recorded in the build's state
    range by range, the unit of resuming. Then the same for each source aligned to ``source``, on its samples'
    grids and dates (``sources/align.py``), read back from their records. Yields the number of cells it holds."""

    def __init__(self, recipe: Recipe, root: Location, version: int):
        self.recipe, self.root, self.version = recipe, root, version

    def setup(self):
        runner = self.recipe.runner
        self.policy = RetryPolicy.of(runner.limits)
        limiter = HostLimiter.share(runner.limits, runner.workers)
        self.acquisitions = {
            source.name: SourceAcquisition(self.recipe, source, threads=runner.threads, policy=self.policy,
                                           limiter=limiter)
            for source in self.recipe.sources
        }  # fmt: skip
        self.groups = aligned_groups(self.recipe)
        self.retries_counted: Counter[str] = Counter()
        self.skipped_counted: set[str] = set()
        self.state = BuildState(self.root)
        self.plan = PlanReader(Location.of(self.root) / PLAN_NAME)
        self.rows = plan_length(Location.of(self.root) / PLAN_NAME)
        self.recipe_hash = self.recipe.fingerprint()

    def process(self, element: tuple[str, int, int]) -> Iterator[int]:
        source, first, stop = element
        ranges = plan_ranges(self.rows, first, stop)  # each recorded in its own file
        cells = cells_of(self.recipe, self.plan.rows(first, stop))
        records = self._acquire(source, ranges, cells)
        anchors = anchors_of_records(records)  # by cell: each of its samples (one per slice with time slices)
        for secondary in self.groups.get(source, ()):
            self._acquire(secondary.name, ranges, cells, anchors)
        yield stop - first

    def _acquire(self, source: str, ranges: list[tuple[int, int]], cells: list, anchors=None) -> list[dict]:
        """One source's cells of ``ranges`` acquired and staged; the records of all of them (finished before too)."""
        kept = {}
        for part in ranges:
            records = self.state.range_records(self.version, source, *part)
            # a cell is done when none of its samples failed (with time slices it has several): else all again
            retry = {record["grid_cell"] for record in records if record["status"] == FAILED}
            kept[part] = [record for record in records if record["grid_cell"] not in retry]
        done = {record["grid_cell"]: part for part, records in kept.items() for record in records}
        counter("cells already finished").inc(len(done))
        part_of = {cell.name: ranges[i // range_size(self.rows)] for i, cell in enumerate(cells)}
        todo = [cell for cell in cells if cell.name not in done]
        if not todo:
            return [record for part in ranges for record in kept[part]]
        new: dict[tuple[int, int], list[dict]] = {}
        for sample in self.acquisitions[source].acquire(todo, anchors):
            count_outcome(sample)
            record = self.state.stage(self.version, sample, self.recipe_hash)  # pixels now, not held
            new.setdefault(part_of[sample.cell], []).append(record)
            if sample.status == OK:
                counter("pixel bytes staged").inc(sample.pixels.nbytes)
        for part, records in new.items():
            self.state.stage_range(self.version, source, *part, kept[part] + records)
        self._count_retries(source)
        return [record for part in ranges for record in kept[part] + new.get(part, [])]

    def _count_retries(self, source: str) -> None:
        retries = Counter(self.policy.by_host)  # what this worker's retries cost each host, since last counted
        added = retries - self.retries_counted
        counter("retries").inc(sum(added.values()))
        for host, count in added.items():
            counter(f"retries: {host}").inc(count)
        self.retries_counted = retries
        for href, why in self.acquisitions[source].skipped_items.items():
            if href not in self.skipped_counted:  # every worker walks the catalogue: the name, not the count, says it
                counter(f"{SKIPPED_ITEM}{href} ({why})").inc()
                self.skipped_counted.add(href)

    def teardown(self):
        for acquisition in getattr(self, "acquisitions", {}).values():
            acquisition.close()


def count_outcome(sample: Sample) -> None:
    """The quality step's tally: the acquisition rules (cloud and nodata over the cell) decided each sample;
    here every outcome is counted, rejections by reason and failures by error."""
    counter(f"samples {sample.status}").inc()
    if sample.status == REJECTED:
        counter(f"rejected: {sample.reason}").inc()
    elif sample.status == FAILED:
        counter(f"failed: {sample.reason.split(':')[0]}").inc()


def assign(_cells_done: int, recipe: Recipe, root: Location) -> Assignment:
    """Once every cell is finished: positions for all stored samples, from the records of every version (read
    once here; the closing step gets this assignment as a side input)."""
    root = Location.of(root)
    return assign_positions(BuildState(root).records(), recipe, _cell_order(root))


def shards_to_write(assignment: Assignment, recipe: Recipe, root: Location) -> Iterator[ShardTask]:
    """Each source's store opened (created or grown) and the shards not yet written as ``assignment`` says."""
    root = Location.of(root)
    state = BuildState(root)
    for source, count in assignment.counts.items():
        tasks = [task for task in assignment.tasks if task.source == source]
        existing = _existing_store(root, source)
        pending = [
            task for task in tasks
            if existing is None or not existing.shard_complete(task.k)
            or state.shard_entries(source, task.k) != list(task.entries)
        ]  # fmt: skip
        counter("shards already written").inc(len(tasks) - len(pending))
        if not pending:
            continue
        _restage_moved_pixels(state, root, source, pending, recipe.outputs.shard_size)
        first = pending[0].entries[0]
        sample = Sample.from_record(pending[0].records[0], state.load_pixels(first.version, source, first.cell))
        open_pixel_store(root, recipe, sample, capacity=count)
        yield from pending


def _existing_store(root: Location, source: str) -> ZarrWriter | None:
    try:
        return existing_pixel_store(root, source)
    except (FileNotFoundError, KeyError):
        return None


def _restage_moved_pixels(state: BuildState, root: Location, source: str, pending: list[ShardTask], size: int) -> None:
    """Pixels a shard needs that were dropped once stored (a rerun that moved samples): read them back from
    where the store has them, before any shard is rewritten."""
    needed = [e for task in pending for e in task.entries if not state.has_pixels(e.version, source, e.cell)]
    if not needed:
        return
    stored = {}
    k = 0
    while (entries := state.shard_entries(source, k)) is not None:
        stored.update({entry: k * size + i for i, entry in enumerate(entries)})
        k += 1
    pixels = existing_pixel_store(root, source).pixels
    for entry in needed:
        if entry not in stored:
            raise RuntimeError(f"{entry.cell}/{source} (version {entry.version}): pixels neither staged nor stored")
        state.save_pixels(entry.version, source, entry.cell, pixels[stored[entry]])


class WriteShard(beam.DoFn):
    """Writes one shard of a source in every format, then records it (with its band statistics) as done."""

    def __init__(self, recipe: Recipe, root: Location):
        self.recipe, self.root = recipe, root

    def setup(self):
        self.state = BuildState(self.root)
        self.writers: dict[str, ZarrWriter] = {}

    def process(self, task: ShardTask) -> Iterator[tuple[str, int]]:
        state = self.state
        writer = self.writers.get(task.source)
        if writer is None:  # opened by shards_to_write; a worker only writes into it
            writer = self.writers[task.source] = existing_pixel_store(self.root, task.source)
        samples = [
            Sample.from_record(record, state.load_pixels(e.version, task.source, e.cell))
            for e, record in zip(task.entries, task.records)
        ]
        layout = writer.layout
        writer.statistics = BandStatistics(layout.bands, layout.dtype, layout.nodata)  # this shard's alone
        write_shard(self.root, self.recipe, writer, task.k, samples)
        state.record_shard(task.source, task.k, list(task.entries), writer.statistics)
        counter("shards written").inc()
        counter("samples written").inc(len(samples))
        counter("shard bytes written").inc(writer.shard_bytes(task.k))
        yield task.source, task.k


def finish(_shards_done: int, recipe: Recipe, root: Location, assignment: Assignment) -> None:
    """The dataset's closing writes: store statistics, STAC, exports, versions and, last, the index; then
    the pixels staged for full shards are let go (a partial last shard keeps them for the next version)."""
    root = Location.of(root)
    state = BuildState(root)
    plan = root / PLAN_NAME
    cells = gpd.read_parquet(plan.url, storage_options=plan.storage_options)
    stored = {}
    for source, count in assignment.counts.items():
        layout = existing_pixel_store(root, source).layout
        statistics = BandStatistics(layout.bands, layout.dtype, layout.nodata)
        tasks = [task for task in assignment.tasks if task.source == source]
        for task in tasks:
            if state.shard_entries(source, task.k) != list(task.entries):
                raise RuntimeError(f"shard {task.k} of {source} was not written as assigned")
            shard = BandStatistics(layout.bands, layout.dtype, layout.nodata)
            statistics.merge(state.shard_statistics(source, task.k, shard))
        state.forget_shards_from(source, len(tasks))
        stored[source] = (count, statistics)
    state.finish_versions(assignment.added)
    finish_dataset(root, recipe, cells, index_records(assignment.records), stored)
    size = recipe.outputs.shard_size
    for task in assignment.tasks:
        if len(task.entries) == size:
            state.drop_pixels(list(task.entries), task.source)
    for source, entry in assignment.unstored:
        state.drop_pixels([entry], source)


def _cell_order(root: Location) -> dict[str, int]:
    plan = root / PLAN_NAME
    cells = pd.read_parquet(plan.url, columns=["grid_cell"], storage_options=plan.storage_options)
    return {cell: i for i, cell in enumerate(cells["grid_cell"])}
