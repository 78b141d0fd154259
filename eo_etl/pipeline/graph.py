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

import apache_beam as beam

from eo_etl.pipeline.shards import Positions
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
    aligned to another with it, in the same step: sources/align.py)."""
    sources = [source.name for source in recipe.sources]  # the index: every source's rows
    workers = recipe.runner.workers
    positions = (
        pipeline
        | "plan" >> beam.Create([list(aligned_groups(recipe))])  # primaries: each acquires its aligned sources
        | "ranges of plan rows" >> beam.FlatMap(ranges_of_plan, root, workers)
        | "spread cells" >> beam.Reshuffle()
        | "acquire and stage" >> beam.ParDo(AcquireRange(recipe, root, version))
        | "samples per range" >> beam.combiners.ToDict()
        | "positions" >> beam.Map(Positions.of)
    )
    at = beam.pvalue.AsSingleton(positions)
    shards_done = positions | "write shards" >> WriteShardsAt(recipe, root)
    parts = (
        positions
        | "ranges again" >> beam.FlatMap(lambda _, sources: ranges_of_plan(sources, root, workers), sources)
        | "spread index" >> beam.Reshuffle()
        | "index parts" >> beam.ParDo(WriteIndexPart(recipe, root), at)
    )
    return shards_done | "index, STAC, exports" >> beam.Map(finish, recipe, root, at, beam.pvalue.AsList(parts))


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
            | "first to write" >> beam.CombinePerKey(lambda tasks: min(tasks, key=lambda task: task.k))
            | "open stores" >> beam.Map(open_store, recipe, root, beam.pvalue.AsSingleton(positions))
        )
        return (
            pending
            | "spread writes" >> beam.Reshuffle()
            | "write shards" >> beam.ParDo(WriteShard(recipe, root), beam.pvalue.AsList(opened))
            | "all shards written" >> beam.combiners.Count.Globally()
        )
