"""The Beam graph of a build, generated from the recipe:

    cells ─► Reshuffle ─► acquire ─► quality ─► stage (per-cell state) ─┐
                                                                         │ all cells finished
    positions + open stores ◄────────────────────────────────────────────┘
        ─► Reshuffle ─► write shards (Zarr, video) ─► all shards written ─► statistics, STAC, TACO, index

Stages not in this version (labels, captions, embeddings and curation) are not in the graph. Work already
recorded in the build's state is left out: cells finished before, shards already written.
"""

from __future__ import annotations

import apache_beam as beam

from eo_etl.pipeline.transforms import (
    AcquireCells,
    CountOutcomes,
    StageSample,
    WriteShard,
    assign,
    finish,
    shards_to_write,
)
from eo_etl.recipe import Recipe
from eo_etl.sources.cell import Cell
from eo_etl.store.location import Location

BATCHES_PER_WORKER = 4  # enough elements to keep every worker busy to the end
MAX_BATCH = 64  # cells per catalogue search


def batch_cells(cells: list[Cell], workers: int) -> list[list[Cell]]:
    """Cells in plan order, cut into batches (one catalogue search each) small enough to spread."""
    size = max(1, min(MAX_BATCH, -(-len(cells) // (workers * BATCHES_PER_WORKER))))
    return [cells[start : start + size] for start in range(0, len(cells), size)]


def build_graph(pipeline: beam.Pipeline, recipe: Recipe, root: Location, version: int, todo: dict[str, list[Cell]]):
    """Adds the build to ``pipeline``: ``todo`` holds the cells of each source still to acquire."""
    batches = [(source, batch) for source, cells in todo.items() for batch in batch_cells(cells, recipe.runner.workers)]
    cells_done = (
        pipeline
        | "cells" >> beam.Create(batches)
        | "spread cells" >> beam.Reshuffle()
        | "acquire" >> beam.ParDo(AcquireCells(recipe))
        | "quality" >> beam.ParDo(CountOutcomes())
        | "stage" >> beam.ParDo(StageSample(root, version, recipe.fingerprint()))
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
