"""The Beam graph of a build, generated from the recipe:

    sources ─► ranges of plan rows ─► Reshuffle ─► acquire + stage (each range's cells, read from the plan) ─┐
                                                                                         all cells finished │
    positions + open stores ◄───────────────────────────────────────────────────────────────────────────────┘
        ─► Reshuffle ─► write shards (Zarr, video) ─► all shards written ─► statistics, STAC, TACO, index

The graph holds no cell: the workers read the ranges from the written plan (``plan_rows.py``), so it is the same
size for four cells and for the planet. Stages not in this version (labels, captions, embeddings and curation)
are not in the graph. Work already recorded in the build's state is skipped where it runs: cells finished
before (by range), shards already written.
"""

from __future__ import annotations

import apache_beam as beam

from eo_etl.pipeline.transforms import AcquireRange, WriteShard, assign, finish, ranges_of_plan, shards_to_write
from eo_etl.recipe import Recipe
from eo_etl.sources.align import aligned_groups
from eo_etl.store.location import Location


def build_graph(pipeline: beam.Pipeline, recipe: Recipe, root: Location, version: int):
    """Adds the build to ``pipeline``: every source over every cell of the plan written at ``root`` (a source
    aligned to another with it, in the same step: sources/align.py)."""
    sources = list(aligned_groups(recipe))
    cells_done = (
        pipeline
        | "plan" >> beam.Create([sources])
        | "ranges of plan rows" >> beam.FlatMap(ranges_of_plan, root, recipe.runner.workers)
        | "spread cells" >> beam.Reshuffle()
        | "acquire and stage" >> beam.ParDo(AcquireRange(recipe, root, version))
        | "all cells finished" >> beam.combiners.Count.Globally()
    )
    assignment = cells_done | "positions" >> beam.Map(assign, recipe, root)
    shards_done = (
        assignment
        | "open stores" >> beam.FlatMap(shards_to_write, recipe, root)
        | "spread shards" >> beam.Reshuffle()
        | "write shards" >> beam.ParDo(WriteShard(recipe, root))
        | "all shards written" >> beam.combiners.Count.Globally()
    )
    return shards_done | "index, STAC, exports" >> beam.Map(finish, recipe, root, beam.pvalue.AsSingleton(assignment))
