"""The build's steps as composable Apache Beam transforms, for pipelines of your own.

Each transform is a thin wrapper over a plain function of this module, which works (and is tested) without
Beam, as xarray-beam pairs ``write_chunk_to_zarr`` with ``ChunksToZarr``. Between acquisition and the store
the elements are :class:`eo_etl.sample.Sample` (pixels, provenance, status; ``sample.sample_id`` names it),
so a step of yours is any transform from samples to samples::

    with beam.Pipeline(runner="DirectRunner") as pipeline:
        _ = (
            pipeline
            | PlanCells(recipe, root)             # the plan's cells                  (plan_cells, cells_in_rows)
            | AcquireCells(recipe, "s2l2a")       # one Sample per cell, ok or not    (acquire_cells)
            | SampleColumns("mean", mean, root)   # a table keyed by sample_id        (column_row, write_table)
            | WriteShards(recipe, root)           # pixels into the stores            (stage_samples, write_shards)
            | FinishDataset(recipe, root)         # index, STAC, exports: the root    (finish_dataset)
            | StageAfterStore(landcover, recipe)  # a registered stage on the stored samples (run_stage)
        )

``eo-etl build`` composes three others (``eo_etl.pipeline.graph.build_graph``), which work over ranges of
the written plan rather than samples, so that its job graph holds no cell::

    positions = pipeline | AcquirePlan(recipe, root, version)   # acquired, staged, recorded by range (plan_cells first)
    written = positions | WriteShardsAt(recipe, root)          # the shards; WriteShards ends with it too
    _ = (positions, written) | FinishAt(recipe, root)          # index parts alongside the shards; FinishDataset's

``root`` is the dataset's folder or object-store URL; it keeps the build's state (``_build/``) as
``eo_etl.build`` does, so a composed pipeline and ``eo-etl build`` resume each other's work. One pipeline
writes a dataset at a time (``build`` takes the dataset's lock; a pipeline of yours runs under yours).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from eo_etl.pipeline.graph import AcquirePlan, FinishAt, WriteShardsAt, finished, first_to_write, index_ranges
from eo_etl.pipeline.plan_rows import PlanReader, plan_length, plan_ranges, range_size, work_ranges
from eo_etl.pipeline.shards import Positions
from eo_etl.pipeline.state import BuildState, Range
from eo_etl.pipeline.transforms import (
    CheckShard,
    RangeReader,
    WriteIndexPart,
    WriteShard,
    count_outcome,
    open_acquisitions,
    open_store,
    shard_tasks,
)
from eo_etl.plan import PLAN_NAME, check_buildable, plan_bands, write_plan
from eo_etl.recipe import Recipe
from eo_etl.sample import OK, Sample
from eo_etl.sources import SEARCH_BATCH
from eo_etl.sources.acquire import SourceAcquisition
from eo_etl.sources.align import aligned_groups, anchors_of
from eo_etl.sources.cell import Cell, cells_of
from eo_etl.sources.remote import RetryPolicy
from eo_etl.stages.core import STAGE_NAME, Stage
from eo_etl.stages.run import run_stage
from eo_etl.store.location import Location

__all__ = [
    "AcquireCells",
    "AcquirePlan",
    "FinishAt",
    "FinishDataset",
    "PlanCells",
    "SampleColumns",
    "StageAfterStore",
    "WriteShards",
    "WriteShardsAt",
    "acquire_cells",
    "cells_in_rows",
    "column_row",
    "finish_dataset",
    "plan_cells",
    "positions_of",
    "stage_samples",
    "write_shards",
    "write_table",
]


# ------------------------------------------------------------------------------------------------ plan
def plan_cells(recipe: Recipe, root: Location | str) -> list[tuple[int, int]]:
    """Write the plan of ``recipe`` (``plan.parquet``) and ``recipe.json`` at ``root``, and open the version its
    time window builds; the plan's rows as ``(first, stop)`` ranges for the workers to share."""
    root = Location.of(root)
    root.mkdir()
    check_buildable(recipe)
    write_plan(plan_bands(recipe), root / PLAN_NAME)
    (root / "recipe.json").write_text(recipe.model_dump_json(indent=2) + "\n")
    BuildState(root).open_version(recipe)
    return work_ranges(plan_length(root / PLAN_NAME), recipe.runner.workers)


def cells_in_rows(rows: tuple[int, int], recipe: Recipe, root: Location | str) -> list[Cell]:
    """The cells of the plan's rows ``first`` to ``stop`` (exclusive), with their UTM footprints."""
    first, stop = rows
    return cells_of(recipe, PlanReader(Location.of(root) / PLAN_NAME).rows(first, stop))


class PlanCells(beam.PTransform):
    """The plan's cells (:class:`eo_etl.sources.cell.Cell`), planned and read on the workers.

    Args:
        recipe: the recipe whose AOI and grid are planned.
        root: the dataset's folder or URL, where the plan is written.
    """

    def __init__(self, recipe: Recipe, root: Location | str):
        super().__init__()
        self.recipe, self.root = recipe, Location.of(root)

    def expand(self, pipeline):
        """Plan once, then spread the ranges of plan rows and read their cells."""
        return (
            pipeline
            | "recipe" >> beam.Create([self.recipe])
            | "plan" >> beam.FlatMap(plan_cells, self.root)
            | "spread ranges" >> beam.Reshuffle()
            | "cells" >> beam.FlatMap(cells_in_rows, self.recipe, self.root)
        )


# --------------------------------------------------------------------------------------------- acquire
def acquire_cells(
    acquisition: SourceAcquisition, cells: list[Cell], aligned: Iterable[SourceAcquisition] = ()
) -> Iterator[Sample]:
    """One sample per cell of ``cells`` from an opened ``SourceAcquisition``, in order (with ``time.slices``, each
    cell's samples of every slice); then those of each source in ``aligned`` (sources aligned to this one), on
    these samples' grids and dates (``eo_etl.sources.align``). Each outcome counted."""
    samples = list(acquisition.acquire(cells))
    anchors = anchors_of(samples)
    for sample in itertools.chain(samples, *(other.acquire(cells, anchors) for other in aligned)):
        count_outcome(sample)
        yield sample


class _Acquire(beam.DoFn):
    """Opens one source's reader, catalogue and threads once per worker (the build's ``AcquireRange`` does the
    same), and those of the sources aligned to it when asked, and acquires batches of cells."""

    def __init__(self, recipe: Recipe, source: str, aligned: bool = False):
        self.recipe, self.source, self.aligned = recipe, source, aligned

    def setup(self):
        followers = aligned_groups(self.recipe)[self.source] if self.aligned else []
        primary = next(s for s in self.recipe.sources if s.name == self.source)
        policy = RetryPolicy.of(self.recipe.runner.limits)
        self.acquisitions = list(open_acquisitions(self.recipe, [primary, *followers], policy).values())

    def process(self, cells: list[Cell]) -> Iterator[Sample]:
        yield from acquire_cells(self.acquisitions[0], cells, self.acquisitions[1:])

    def teardown(self):
        for acquisition in getattr(self, "acquisitions", ()):
            acquisition.close()


class AcquireCells(beam.PTransform):
    """Cells to samples of one source: its best scene cut to each cell (with ``time.slices``, each slice's), or a
    rejected or failed sample.

    Args:
        recipe: the recipe that holds the source (its rules, limits and time window).
        source: the source's name (``sources[].name``); not one with ``align`` (it needs its primary's samples).
        aligned: also the samples of the sources aligned to ``source``, cut on its samples' grids and dates in
            the same step (one search and one read of ``source`` for all of them).
        batch: cells acquired together (one catalogue search).
    """

    def __init__(self, recipe: Recipe, source: str, *, aligned: bool = False, batch: int = SEARCH_BATCH):
        super().__init__()
        chosen = next((s for s in recipe.sources if s.name == source), None)
        if chosen is None:
            raise ValueError(f"source {source!r}: the recipe has {[s.name for s in recipe.sources]}")
        if chosen.align is not None:
            raise ValueError(
                f"source {source!r} is aligned to {chosen.align.to!r}: acquire it with "
                f"AcquireCells(recipe, {chosen.align.to!r}, aligned=True)"
            )
        self.recipe, self.source, self.aligned, self.batch = recipe, source, aligned, batch

    def expand(self, cells):
        """Batch the cells, then acquire each batch."""
        return (
            cells
            | f"batch {self.source} cells" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch)
            | f"acquire {self.source}" >> beam.ParDo(_Acquire(self.recipe, self.source, self.aligned))
        )


# ------------------------------------------------------------------------------------- columns of yours
def column_row(sample: Sample, function: Callable[[Sample], dict]) -> dict | None:
    """``function``'s columns for an ok sample, after its ``sample_id``; None for a sample without pixels."""
    if sample.status != OK:
        return None
    return {"sample_id": str(sample.sample_id), **function(sample)}


def write_table(root: Location | str, name: str, rows: Iterable[dict]) -> Location:
    """``rows`` as the table ``<name>.parquet`` beside the index, in ``sample_id`` order, whole or not at all:
    what ``open_dataset(root, stages=[name])`` joins to the samples."""
    if not STAGE_NAME.fullmatch(name):
        raise ValueError(f"table name {name[:40]!r}: expected {STAGE_NAME.pattern}")
    rows = sorted(rows, key=lambda row: row["sample_id"])
    table = pa.Table.from_pylist(rows) if rows else pa.table({"sample_id": pa.array([], pa.string())})
    target = Location.of(root) / f"{name}.parquet"
    with target.staged_file() as partial:
        pq.write_table(table, partial)
    return target


class SampleColumns(beam.PTransform):
    """A step of yours over samples: ``function(sample) -> {column: value}`` for each ok sample, written as the
    table ``<name>.parquet`` keyed by ``sample_id``; the samples pass on unchanged.

    Args:
        name: the table's name (``[a-z][a-z0-9_]{0,31}``), as ``open_dataset(…, stages=[name])`` asks for it.
        function: a sample's columns (plain values: numbers, text, lists); it must pickle (a module's function).
        root: the dataset's folder or URL.
    """

    def __init__(self, name: str, function: Callable[[Sample], dict], root: Location | str):
        super().__init__()
        if not STAGE_NAME.fullmatch(name):
            raise ValueError(f"table name {name[:40]!r}: expected {STAGE_NAME.pattern}")
        self.name, self.function, self.root = name, function, Location.of(root)

    def expand(self, samples):
        """Compute each sample's row; gather the rows into the table once every sample has passed."""
        _ = (
            samples
            | f"{self.name} rows" >> beam.Map(column_row, self.function)
            | f"{self.name} rows of ok samples" >> beam.Filter(lambda row: row is not None)
            | f"gather {self.name}" >> beam.combiners.ToList()
            | f"write {self.name}" >> beam.Map(_write_rows, self.root, self.name)
        )
        return samples | f"{self.name} passed" >> beam.Map(_same)


def _write_rows(rows: list[dict], root: Location, name: str) -> str:
    return str(write_table(root, name, rows))


def _same(sample: Sample) -> Sample:
    return sample


# ---------------------------------------------------------------------------------------------- store
def stage_samples(samples: Iterable[Sample], recipe: Recipe, root: Location | str, version: int) -> int:
    """Stage ``samples`` (of any sources, in any order) in the build's state as the build does, range by range of
    plan rows: each range's ok pixels in one file, then its records (so ``eo-etl build`` resumes from them); a
    cell's samples replace those it had. The number staged. Samples of cells not in the plan are refused."""
    plan, recipe_hash = _PlanRanges(Location.of(root)), recipe.fingerprint()
    samples = sorted(samples, key=lambda sample: (sample.source, plan.row(sample)))  # plan order, each range whole
    for (source, *part), group in itertools.groupby(samples, key=lambda s: (s.source, *plan.range_of(s))):
        _stage_range(plan.root, source, tuple(part), list(group), recipe_hash, version)
    return len(samples)


class _PlanRanges:
    """The plan's cells by row and range of rows (the unit the build stages and records), read once."""

    def __init__(self, root: Location):
        self.root, self.path = root, root / PLAN_NAME
        rows = plan_length(self.path)
        cells = PlanReader(self.path, ["grid_cell"]).rows(0, rows).grid_cell
        self.rows = {cell: i for i, cell in enumerate(cells)}
        self.ranges, self.size = plan_ranges(rows), range_size(rows)

    def row(self, sample: Sample) -> int:
        if sample.cell not in self.rows:
            raise ValueError(f"cell {sample.cell!r} of {sample.source} is not in {self.path}")
        return self.rows[sample.cell]

    def range_of(self, sample: Sample) -> tuple[int, int]:
        return self.ranges[self.row(sample) // self.size]


def _stage_range(root: Location, source: str, part: Range, samples: Iterable[Sample], recipe_hash: str,
                 version: int) -> int:  # fmt: skip
    """The samples of ``source`` in one range of plan rows staged (``BuildState.stage_samples``, as the build's
    workers do), after those of its other cells staged before; how many. ``samples`` is read twice: their cells,
    then their pixels."""
    cells, count = set(), 0
    for sample in samples:
        cells.add(sample.cell)
        count += 1
    state = BuildState(root)
    kept = [record for record in state.range_records(version, source, *part) if record.grid_cell not in cells]
    state.stage_samples(version, source, samples, dict.fromkeys(cells, part), {part: kept}, recipe_hash)
    return count


def positions_of(recipe: Recipe, root: Location | str) -> Positions:
    """Every recorded sample's position: each range of every source settled and its stored samples counted, as the
    build's workers do (``eo_etl.pipeline.shards``), in this process."""
    ranges = RangeReader(Location.of(root))
    counts = {}
    for source in recipe.sources:
        for first, stop in plan_ranges(ranges.rows):
            for part in ranges.settle(source.name, first, stop):
                counts[(source.name, part.version, first, stop)] = len(part.stored)
    return Positions.of(counts)


def write_shards(recipe: Recipe, root: Location | str) -> Positions:
    """Positions for every recorded sample, then the shards not written yet, in this process (``WriteShardsAt``'s
    steps, one after the other): the positions (which ``finish_dataset`` needs)."""
    root = Location.of(root)
    positions = positions_of(recipe, root)
    checker, writer = CheckShard(root), WriteShard(recipe, root)
    checker.setup()
    writer.setup()
    pending = [task for task in shard_tasks(positions, recipe) for task in checker.process(task)]
    opened = [open_store((source, first_to_write(tasks)), recipe, root, positions)
              for source, tasks in _by_source(pending).items()]  # fmt: skip
    for task in pending:
        list(writer.process(task, opened))
    return positions


def _by_source(tasks) -> dict:
    grouped = {}
    for task in tasks:
        grouped.setdefault(task.source, []).append(task)
    return grouped


class _KeyByRange(beam.DoFn):
    """Each sample keyed by its source and range of plan rows (the plan read once, after PlanCells wrote it)."""

    def __init__(self, root: Location):
        self.root, self.plan = root, None

    def process(self, sample: Sample) -> Iterator[tuple[tuple[str, int, int], Sample]]:
        if self.plan is None:
            self.plan = _PlanRanges(self.root)
        yield (sample.source, *self.plan.range_of(sample)), sample


class _StageRange(beam.DoFn):
    """Stages a range's samples (keyed by ``_KeyByRange``) in the version its window builds (looked up once, after
    the plan opened it); how many."""

    def __init__(self, recipe: Recipe, root: Location):
        self.recipe, self.root, self.version = recipe, root, None

    def process(self, grouped: tuple[tuple[str, int, int], Iterable[Sample]]) -> Iterator[int]:
        if self.version is None:
            self.version = BuildState(self.root).open_version(self.recipe)  # the one PlanCells opened
            self.recipe_hash = self.recipe.fingerprint()
        (source, first, stop), samples = grouped
        yield _stage_range(self.root, source, (first, stop), samples, self.recipe_hash, self.version)


class WriteShards(beam.PTransform):
    """Samples into the dataset's stores: staged and recorded, given positions, written shard by shard in every
    format of ``outputs.formats``; the positions (one element) that ``FinishDataset`` takes. The samples of a range
    of plan rows meet on one worker to be staged and recorded as the build's own graph (``eo_etl.pipeline.graph``)
    does where it acquires them: the range's pixels in one file, one sample's held at a time, then its records.

    Args:
        recipe: the recipe (its outputs and sources).
        root: the dataset's folder or URL.
    """

    def __init__(self, recipe: Recipe, root: Location | str):
        super().__init__()
        self.recipe, self.root = recipe, Location.of(root)

    def expand(self, samples):
        """Stage and record the samples; once all are, assign positions and write the shards."""
        recipe, root = self.recipe, self.root
        recorded = (
            samples
            | "by range" >> beam.ParDo(_KeyByRange(root))
            | "range's samples" >> beam.GroupByKey()
            | "stage and record" >> beam.ParDo(_StageRange(recipe, root))
            | "all samples recorded" >> beam.CombineGlobally(sum)
        )
        positions = recorded | "positions" >> beam.Map(_positions, recipe, root)
        written = positions | "write shards" >> WriteShardsAt(recipe, root)
        return written | "positions, shards written" >> beam.Map(_second, beam.pvalue.AsSingleton(positions))


def _positions(_recorded: int, recipe: Recipe, root: Location) -> Positions:
    return positions_of(recipe, root)


def _second(_first, second):
    return second


# --------------------------------------------------------------------------------------------- finish
def finish_dataset(recipe: Recipe, root: Location | str, positions: Positions) -> str:
    """The dataset's closing writes (statistics, STAC, exports, versions, then the index: its parts written and
    merged) once every shard of ``positions`` is written, in this process (``FinishAt``'s steps); the dataset's
    root."""
    root = Location.of(root)
    writer = WriteIndexPart(recipe, root)
    writer.setup()
    parts = [part for element in index_ranges(recipe, root, 1) for part in writer.process(element, positions)]
    return finished(0, recipe, root, positions, parts)


class FinishDataset(beam.PTransform):
    """The positions of ``WriteShards`` to a finished dataset: its root (one element), for the stages after. The
    index is written in parts by the workers, range by range, then merged (the build's own ``FinishAt``, which
    starts the index parts as the shards are written).

    Args:
        recipe: the recipe.
        root: the dataset's folder or URL.
    """

    def __init__(self, recipe: Recipe, root: Location | str):
        super().__init__()
        self.recipe, self.root = recipe, Location.of(root)

    def expand(self, positions):
        """The positions come once every shard is written: finish from them."""
        return (positions, positions) | "finish dataset" >> FinishAt(self.recipe, self.root)


# ------------------------------------------------------------------------------------ after the store
class StageAfterStore(beam.PTransform):
    """A stage after the store (``eo_etl.stages``: labels, captions, curation, or one of yours) on a finished
    dataset, planned, run and assembled by ``eo_etl.stages.run.run_stage``; the root passes on.

    Args:
        stage: the stage (a :class:`eo_etl.stages.core.Stage`); it runs where the recipe configures it.
        recipe: the recipe, whose section ``stage.section`` holds the stage's settings.
    """

    def __init__(self, stage: Stage, recipe: Recipe):
        super().__init__()
        self.stage, self.recipe = stage, recipe

    def expand(self, roots):
        """Run the stage on each root, then pass it on."""
        return roots | f"stage {self.stage.name}" >> beam.Map(_run_stage, self.stage, self.recipe)


def _run_stage(root: str, stage: Stage, recipe: Recipe) -> str:
    run_stage(stage, recipe, Location.of(root))
    return root
