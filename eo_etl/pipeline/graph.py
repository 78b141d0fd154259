"""The Beam graph of a build, generated from the recipe:

    primary sources ─► ranges of plan rows ─► Reshuffle ─► acquire + stage (each range's cells, read from the
        plan; then the sources aligned to the primary, on its samples)
        ─► samples stored per (source, version, range) ─► combined: positions (prefix sums) ─┐
    ┌─────────────────────────────────────────────────────────────────────────────────────┘
    ├─► shards (as ranges) ─► Reshuffle ─► check (restage moved pixels) ─► open stores ─► write shards ─┐
    └─► ranges again ─► Reshuffle ─► index parts (placed by the positions) ──────────────────────────────┤
                                        statistics, STAC, exports, the index merged from its parts ◄──┘

The graph holds no cell: the workers read the ranges from the written plan (``plan_rows.py``), so it is the same
size for four cells and for the planet. Nor does any step hold every sample: positions come from counts per
range (``shards.Positions``, one entry per range and version), shards and index parts are made by the workers
from the ranges' records, and the index is merged a grid row at a time (``index_parts.py``). Stages not in this
version (labels, captions, embeddings and curation) are not in the graph. Work already recorded in the build's
state is skipped where it runs: cells finished before (by range), shards already written.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam

from eo_etl.pipeline.shards import Positions, ShardTask
from eo_etl.pipeline.transforms import (
    AcquireRange,
    CheckShard,
    WriteIndexPart,
    WriteShard,
    finish,
    open_store,
    ranges_of_plan,
    shard_tasks,
)
from eo_etl.recipe import Recipe
from eo_etl.sources.align import aligned_groups
from eo_etl.store.location import Location


def build_graph(pipeline: beam.Pipeline, recipe: Recipe, root: Location, version: int):
    """Adds the build to ``pipeline``: every source over every cell of the plan written at ``root`` (a source
    aligned to another with it, in the same step: sources/align.py). Composed of the transforms ``eo_etl.beam``
    offers: ``AcquirePlan``, ``WriteShardsAt`` and ``FinishAt``."""
    positions = pipeline | "acquire and stage" >> AcquirePlan(recipe, root, version)
    shards_done = positions | "write shards" >> WriteShardsAt(recipe, root)
    return (positions, shards_done) | "index, STAC, exports" >> FinishAt(recipe, root)


class AcquirePlan(beam.PTransform):
    """The plan written at ``root`` to the positions (one element): its cells as ranges of plan rows, read and
    acquired by the workers, every source (a source aligned to another with it, on its samples), each range staged
    and recorded in the build's state as it is done (cells finished before are skipped), and the samples each
    range stores counted and combined into positions (``shards.Positions``).

    Args:
        recipe: the recipe (its sources, rules, limits, runner).
        root: the dataset's folder or URL, where the plan is written (``eo_etl.beam.plan_cells`` writes it).
        version: the version this build makes (``BuildState(root).open_version(recipe)``; ``plan_cells`` opens it).
    """

    def __init__(self, recipe: Recipe, root: Location, version: int):
        super().__init__()
        self.recipe, self.root, self.version = recipe, Location.of(root), version

    def expand(self, pipeline):
        """Spread the ranges of plan rows, acquire and stage each, then combine their counts."""
        return (
            pipeline
            | "plan" >> beam.Create([list(aligned_groups(self.recipe))])  # primaries: each acquires its aligned ones
            | "ranges of plan rows" >> beam.FlatMap(ranges_of_plan, self.root, self.recipe.runner.workers)
            | "spread cells" >> beam.Reshuffle()
            | "acquire and stage" >> beam.ParDo(AcquireRange(self.recipe, self.root, self.version))
            | "samples per range" >> beam.combiners.ToDict()
            | "positions" >> beam.Map(Positions.of)
        )


class FinishAt(beam.PTransform):
    """(the positions, anything that comes once every shard is written) to the dataset's root (one element), once
    finished: the index written in parts by the workers, range by range, as the shards are written; then the
    closing writes (statistics, STAC, exports, versions, the index merged from its parts: ``finish``).

    Args:
        recipe: the recipe.
        root: the dataset's folder or URL.
    """

    def __init__(self, recipe: Recipe, root: Location):
        super().__init__()
        self.recipe, self.root = recipe, Location.of(root)

    def expand(self, inputs):
        """Write the index's parts from the positions; finish once the shards are written too."""
        positions, shards_done = inputs
        recipe, root = self.recipe, self.root
        at = beam.pvalue.AsSingleton(positions)
        parts = (
            positions
            | "ranges" >> beam.FlatMap(_index_ranges, recipe, root, recipe.runner.workers)
            | "spread index" >> beam.Reshuffle()
            | "index parts" >> beam.ParDo(WriteIndexPart(recipe, root), at)
        )
        return shards_done | "finish" >> beam.Map(finished, recipe, root, at, beam.pvalue.AsList(parts))


def index_ranges(recipe: Recipe, root: Location, workers: int) -> list[tuple[str, int, int]]:
    """The elements the index's parts are written from: ranges of plan rows of every source (the index holds
    every source's rows)."""
    return ranges_of_plan([source.name for source in recipe.sources], root, workers)


def _index_ranges(_positions, recipe: Recipe, root: Location, workers: int):
    return index_ranges(recipe, root, workers)


def finished(shards_done, recipe: Recipe, root: Location, positions: Positions, parts: list) -> str:
    """The closing writes (``finish``) once the shards and the index's ``parts`` are written; the dataset's root."""
    finish(shards_done, recipe, root, positions, parts)
    return str(root.native)


class WriteShardsAt(beam.PTransform):
    """The positions (one element) to every shard written: tasks checked (moved pixels restaged), each source's
    stores opened once by its first shard, then the shards written; one element, the count, once all are."""

    def __init__(self, recipe: Recipe, root: Location):
        super().__init__()
        self.recipe, self.root = recipe, root

    def expand(self, positions):
        recipe, root = self.recipe, self.root
        pending = (
            positions
            | "shards" >> beam.FlatMap(shard_tasks, recipe)
            | "spread shards" >> beam.Reshuffle()
            | "check shards" >> beam.ParDo(CheckShard(root))
        )
        opened = (
            pending
            | "by source" >> beam.Map(lambda task: (task.source, task))
            | "first to write" >> beam.CombinePerKey(first_to_write)
            | "open stores" >> beam.Map(open_store, recipe, root, beam.pvalue.AsSingleton(positions))
        )
        return (
            pending
            | "spread writes" >> beam.Reshuffle()
            | "write shards" >> beam.ParDo(WriteShard(recipe, root), beam.pvalue.AsList(opened))
            | "all shards written" >> beam.combiners.Count.Globally()
        )


def first_to_write(tasks: Iterable[ShardTask]) -> ShardTask:
    """Of a source's shards to write, the one that opens its store (shaped like its first sample): the first."""
    return min(tasks, key=lambda task: task.k)
