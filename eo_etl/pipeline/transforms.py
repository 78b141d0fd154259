"""The Beam steps of a build. Each wraps the plain functions of a stage module; clients (catalogues,
readers, thread pools, the store) open once per worker in ``setup``. Counters go to Beam's metrics."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator

import apache_beam as beam
import geopandas as gpd
from apache_beam.metrics import Metrics

from eo_etl.pipeline.index_parts import merge_parts, write_part
from eo_etl.pipeline.plan_rows import CELL_COLUMNS, PlanReader, plan_length, plan_ranges, range_size, work_ranges
from eo_etl.pipeline.shards import (
    Positions,
    RangeKey,
    Settled,
    ShardTask,
    index_records,
    settle,
    shard_members,
    stored_statistics,
)
from eo_etl.pipeline.state import BuildState, ShardEntry, staged_name
from eo_etl.plan import PLAN_NAME
from eo_etl.recipe import Recipe
from eo_etl.sample import FAILED, OK, REJECTED, Sample
from eo_etl.sources.acquire import SourceAcquisition
from eo_etl.sources.align import aligned_groups, anchors_of_records
from eo_etl.sources.cell import cells_of
from eo_etl.sources.remote import HostLimiter, RetryPolicy
from eo_etl.store.dataset import close_dataset, existing_pixel_store, open_pixel_store, write_shard
from eo_etl.store.index import INDEX_NAME, index_frame, index_table, write_index
from eo_etl.store.index_row import IndexRow
from eo_etl.store.location import Location
from eo_etl.store.zarr import ZarrWriter

NAMESPACE = "eo_etl"
SKIPPED_ITEM = "catalogue item skipped: "  # a counter named by the item's href and why: one line in the report
VIDEO_LOSSLESS = "video cube stored lossless: "  # a counter named by the cube and why: one line in the report
WARNINGS = (SKIPPED_ITEM, VIDEO_LOSSLESS)  # counters that are warnings in the report, not counts


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def ranges_of_plan(sources: list[str], root: Location, workers: int) -> Iterator[tuple[str, int, int]]:
    """(source, first, stop): the plan's cells as ranges of its rows, read from its footer on a worker, so the
    job graph holds no cell however large the plan."""
    for first, stop in work_ranges(plan_length(Location.of(root) / PLAN_NAME), workers):
        for source in sources:
            yield source, first, stop


def open_acquisitions(recipe: Recipe, sources: list, policy: RetryPolicy) -> dict[str, SourceAcquisition]:
    """Each of ``sources`` opened on this worker to acquire (its reader, catalogue and threads), under the worker's
    share of the recipe's per-service limits, by name."""
    runner = recipe.runner
    limiter = HostLimiter.share(runner.limits, runner.workers)
    return {
        source.name: SourceAcquisition(recipe, source, threads=runner.threads, policy=policy, limiter=limiter)
        for source in sources
    }


class AcquireRange(beam.DoFn):
    """(source, first, stop) → the cells of those plan rows (whole ranges) not finished before, acquired and
    staged: cut in the worker's threads under its share of the recipe's per-service limits (transient errors
    retried, and counted), each outcome counted (the quality step's tally), then recorded in the build's state
    range by range, the unit of resuming (the range's pixels in one file, then its records in another). Then the
    same for each source aligned to ``source``, on its samples' grids and dates (``sources/align.py``), read back
    from their records. Yields, for each of its ranges, each source and every version with records there, how many
    samples that version stores: the counts the positions are made from (``shards.Positions``)."""

    def __init__(self, recipe: Recipe, root: Location, version: int):
        self.recipe, self.root, self.version = recipe, root, version

    def setup(self):
        self.policy = RetryPolicy.of(self.recipe.runner.limits)
        self.acquisitions = open_acquisitions(self.recipe, self.recipe.sources, self.policy)
        self.groups = aligned_groups(self.recipe)
        self.retries_counted: Counter[str] = Counter()
        self.skipped_counted: set[str] = set()
        self.ranges = RangeReader(self.root)
        self.state, self.rows = self.ranges.state, self.ranges.rows
        self.recipe_hash = self.recipe.fingerprint()

    def process(self, element: tuple[str, int, int]) -> Iterator[tuple[RangeKey, int]]:
        source, first, stop = element
        ranges = plan_ranges(self.rows, first, stop)  # each recorded in its own file
        cells = cells_of(self.recipe, self.ranges.plan.rows(first, stop))
        found = {source: self._acquire(source, ranges, cells)}
        anchors = anchors_of_records(r for part in ranges for r in found[source][part])  # by cell: each sample's
        for secondary in self.groups.get(source, ()):
            found[secondary.name] = self._acquire(secondary.name, ranges, cells, anchors)
        order = {cell.name: first + i for i, cell in enumerate(cells)}
        for name, records in found.items():
            for part in ranges:
                for settled in self.ranges.settle(name, *part, order, {self.version: records[part]}):
                    yield (name, settled.version, *part), len(settled.stored)

    def _acquire(self, source: str, ranges: list[tuple[int, int]], cells: list, anchors=None) -> dict:
        """One source's cells of ``ranges`` acquired and staged; the records of each range (finished before too)."""
        found = {part: self.state.range_records(self.version, source, *part) for part in ranges}
        kept = {}
        for part, records in found.items():
            # a cell is done when none of its samples failed (with time slices it has several): else all again
            retry = {record.grid_cell for record in records if record.status == FAILED}
            kept[part] = [record for record in records if record.grid_cell not in retry]
        done = {record.grid_cell: part for part, records in kept.items() for record in records}
        counter("cells already finished").inc(len(done))
        part_of = {cell.name: ranges[i // range_size(self.rows)] for i, cell in enumerate(cells)}
        todo = [cell for cell in cells if cell.name not in done]
        acquired = _counted(self.acquisitions[source].acquire(todo, anchors))
        found |= self.state.stage_samples(self.version, source, acquired, part_of, kept, self.recipe_hash)
        if todo:
            self._count_retries(source)
        return found

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


def _counted(samples: Iterator[Sample]) -> Iterator[Sample]:
    """``samples`` as they come, each outcome counted, and the pixel bytes of the ok ones."""
    for sample in samples:
        count_outcome(sample)
        if sample.status == OK:
            counter("pixel bytes staged").inc(sample.pixels.nbytes)
        yield sample


def count_outcome(sample: Sample) -> None:
    """The quality step's tally: the acquisition rules (cloud and nodata over the cell) decided each sample;
    here every outcome is counted, rejections by reason and failures by error."""
    counter(f"samples {sample.status}").inc()
    if sample.status == REJECTED:
        counter(f"rejected: {sample.reason}").inc()
    elif sample.status == FAILED:
        counter(f"failed: {sample.reason.split(':')[0]}").inc()


class RangeReader:
    """A worker's view of the build's ranges: the plan's rows and every version's records of a range, settled."""

    PARTS_KEPT = 64  # ranges settled and kept for ``part``: a shard's, and its neighbours' (they share edge ranges)

    def __init__(self, root: Location):
        self.root = Location.of(root)
        self.state = BuildState(self.root)
        self.plan = PlanReader(self.root / PLAN_NAME)
        self.rows = plan_length(self.root / PLAN_NAME)
        self.versions = self.state.version_numbers()
        # once the ranges are recorded, a range settles the same every time: settled once per worker, though every
        # shard it spans (a range of 64 cells fills several small shards) asks for its part
        self._settled = functools.lru_cache(maxsize=self.PARTS_KEPT)(self.settle)

    def order(self, first: int, stop: int) -> dict[str, int]:
        return {cell: first + i for i, cell in enumerate(self.plan.rows(first, stop)["grid_cell"])}

    def settle(self, source: str, first: int, stop: int, order: dict[str, int] | None = None,
               known: dict[int, list[IndexRow]] | None = None) -> list[Settled]:  # fmt: skip
        """Every version's records of a range (``known``: some already read), settled (shards.settle)."""
        by_version = {}
        for version in self.versions:
            records = (known or {}).get(version)
            records = self.state.range_records(version, source, first, stop) if records is None else records
            if records:
                by_version[version] = records
        return settle(by_version, self.order(first, stop) if order is None else order)

    def part(self, key: RangeKey) -> Settled:
        """One version's part of a recorded range, settled (read-only: it is kept for the next call)."""
        source, version, first, stop = key
        return next(part for part in self._settled(source, first, stop) if part.version == version)


def shard_tasks(positions: Positions, recipe: Recipe) -> Iterator[ShardTask]:
    """Every shard of every source, as the ranges whose samples fill it: small, whatever the shard holds."""
    for source in positions.counts:
        for k, slices in enumerate(positions.shard_slices(source, recipe.outputs.shard_size)):
            yield ShardTask(source, k, tuple(slices))


class CheckShard(beam.DoFn):
    """A shard → itself if it must be written (not already holding its samples), with every pixel it needs
    staged: those of samples a rerun moved, whose range was let go once stored, read back from where the store
    has them now, before any shard is rewritten."""

    def __init__(self, root: Location):
        self.root = root

    def setup(self):
        self.ranges = RangeReader(self.root)
        self.stores: dict[str, ZarrWriter | None] = {}

    def process(self, task: ShardTask) -> Iterator[ShardTask]:
        state = self.ranges.state
        parts = {key: self.ranges.part(key) for key, _, _ in task.slices}
        entries, _ = shard_members(task, parts.__getitem__)
        if task.source not in self.stores:
            self.stores[task.source] = _existing_store(self.root, task.source)
        existing = self.stores[task.source]
        written = existing is not None and existing.shard_complete(task.k)
        if written and state.shard_entries(task.source, task.k) == entries:
            counter("shards already written").inc()
            return
        for key, _, _ in task.slices:
            source, version, first, stop = key
            part = parts[key]
            with state.range_pixels(version, source, first, stop) as staged:
                cells = [staged_name(part.records[i]) for i in part.stored]
                missing = [cell for cell in cells if cell not in staged]
                held = set(staged)
            if missing:  # read back from the store into the range's file, after the pixels staged there
                with state.staging(version, source, first, stop, keep=held) as add:
                    for cell, pixels in _stored_pixels(state, self.root, source, version, missing).items():
                        add(cell, pixels)
        yield task


def _existing_store(root: Location, source: str) -> ZarrWriter | None:
    try:
        return existing_pixel_store(root, source)
    except (FileNotFoundError, KeyError):
        return None


def _stored_pixels(state: BuildState, root: Location, source: str, version: int, cells: list[str]) -> dict:
    """Pixels of ``cells`` (of ``version``) as the store holds them, from the shards' records (a rerun that moved
    samples already let go: rare, and it reads one record per shard)."""
    wanted = {ShardEntry(version, cell) for cell in cells}
    store = existing_pixel_store(root, source)
    size = store.shard_size
    found = {}
    k = 0
    while len(found) < len(wanted) and (entries := state.shard_entries(source, k)) is not None:
        found.update({entry: k * size + i for i, entry in enumerate(entries) if entry in wanted})
        k += 1
    lost = wanted - set(found)
    if lost:
        entry = min(lost, key=lambda e: e.cell)
        raise RuntimeError(f"{entry.cell}/{source} (version {entry.version}): pixels neither staged nor stored")
    return {entry.cell: store.pixels[position] for entry, position in found.items()}


def open_store(first: tuple[str, ShardTask], recipe: Recipe, root: Location, positions: Positions) -> str:
    """A source's store opened (created, or grown to its samples) before its shards are written, shaped like the
    first sample of its first shard to write."""
    source, task = first
    ranges = RangeReader(root)
    (key, lo, _), *_ = task.slices
    part = ranges.part(key)
    record = part.records[part.stored[lo]]
    sample = Sample.from_row(record, _load_pixels(ranges.state, key, staged_name(record)))
    open_pixel_store(root, recipe, sample, capacity=positions.counts[source])
    return source


def _load_pixels(state: BuildState, key: RangeKey, cell: str, staged=None):
    """A sample's staged pixels, by its staged name (``cell``; state.staged_name)."""
    source, version, first, stop = key
    if staged is None:  # the range's .npz, unless the caller holds it open already
        with state.range_pixels(version, source, first, stop) as batch:
            return _load_pixels(state, key, cell, batch)
    if cell not in staged:
        raise RuntimeError(f"{cell}/{source} (version {version}): pixels not staged")
    return staged[cell]


class WriteShard(beam.DoFn):
    """Writes one shard of a source in every format, then records it (with its band statistics) as done."""

    def __init__(self, recipe: Recipe, root: Location):
        self.recipe, self.root = recipe, root

    def setup(self):
        self.ranges = RangeReader(self.root)
        self.writers: dict[str, ZarrWriter] = {}

    def process(self, task: ShardTask, _opened: list[str]) -> Iterator[tuple[str, int]]:
        state = self.ranges.state
        writer = self.writers.get(task.source)
        if writer is None:  # opened by open_store; a worker only writes into it
            writer = self.writers[task.source] = existing_pixel_store(self.root, task.source)
        samples, entries = [], []
        for key, lo, hi in task.slices:
            part = self.ranges.part(key)
            source, version, first, stop = key
            with state.range_pixels(version, source, first, stop) as staged:
                for i in part.stored[lo:hi]:
                    record = part.records[i]
                    name = staged_name(record)
                    samples.append(Sample.from_row(record, _load_pixels(state, key, name, staged)))
                    entries.append(ShardEntry(version, name))
        statistics = writer.restart_statistics()  # this shard's alone
        for warning in write_shard(self.root, self.recipe, writer, task.k, samples):
            counter(VIDEO_LOSSLESS + warning).inc()
        state.record_shard(task.source, task.k, entries, statistics)
        counter("shards written").inc()
        counter("samples written").inc(len(samples))
        counter("shard bytes written").inc(writer.shard_bytes(task.k))
        yield task.source, task.k


class WriteIndexPart(beam.DoFn):
    """(source, first, stop) → the index's rows of those plan rows, every version, placed (``Positions``) and
    written as a part (index_parts.py); yields (source, grid row, part) for each grid row it holds."""

    def __init__(self, recipe: Recipe, root: Location):
        self.recipe, self.root = recipe, root

    def setup(self):
        self.ranges = RangeReader(self.root)
        self.cells = PlanReader(Location.of(self.root) / PLAN_NAME, [*CELL_COLUMNS, "geometry"])

    def process(self, element: tuple[str, int, int], positions: Positions) -> Iterator[tuple[str, str, int, int]]:
        source, first, stop = element
        rows = self.cells.rows(first, stop)
        order = {cell: first + i for i, cell in enumerate(rows["grid_cell"])}
        records = []
        for part in plan_ranges(self.ranges.rows, first, stop):
            for settled in self.ranges.settle(source, *part, order):
                records += positions.place(source, *part, settled, self.recipe)
        records = index_records(records, positions.first_version)
        if not records:
            return
        cells = gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries.from_wkb(rows["geometry"], crs=4326))
        target = self.ranges.state.index_part(source, first, stop)
        for row in write_part(index_table(index_frame(records, cells)), target):
            yield source, row, first, stop


def finish(_shards_done: int, recipe: Recipe, root: Location, positions: Positions,
           parts: list[tuple[str, str, int, int]]) -> None:  # fmt: skip
    """The dataset's closing writes: store statistics (merged from the shards' own), STAC, exports, versions and,
    last, the index merged from the workers' parts; then the staged pixels of ranges whose samples all lie in full
    shards are let go (a partial last shard keeps them for the next version)."""
    root = Location.of(root)
    state = BuildState(root)
    size = recipe.outputs.shard_size
    stored = {}
    for source, count in positions.counts.items():
        empty = existing_pixel_store(root, source).empty_statistics
        stored[source] = (count, stored_statistics(state, source, count, size, empty))
        state.forget_shards_from(source, -(-count // size))
    state.finish_versions(positions.added)
    held: dict[tuple[str, str], list[Location]] = {}
    for source, row, first, stop in sorted(parts):
        held.setdefault((source, row), []).append(state.index_part(source, first, stop))
    merged = state.dir / INDEX_NAME
    if held:
        merge_parts(held, merged)
    else:
        write_index(index_frame([], gpd.GeoDataFrame()), merged)
    close_dataset(root, recipe, merged, stored)  # the exports read the merged index a batch at a time
    merged.fs.mv(merged.path, (root / INDEX_NAME).path)  # last: a dataset whose index exists is complete
    state.remove_index_parts()
    for source, version, first, stop in positions.ranges_in_full_shards(size):
        state.drop_range_pixels(version, source, first, stop)
