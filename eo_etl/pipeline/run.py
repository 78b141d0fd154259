"""Running a build's pipeline: to its end with its counters (and, locally, a progress view), or only staged
as a Dataflow template, which runs later."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from eo_etl.pipeline.graph import build_graph
from eo_etl.pipeline.progress import build_progress
from eo_etl.pipeline.state import BuildState
from eo_etl.pipeline.transforms import NAMESPACE
from eo_etl.recipe import Recipe
from eo_etl.sources.cell import Cell
from eo_etl.store.location import Location


def stages_a_template(options: PipelineOptions) -> bool:
    """Staging a (classic or Flex) template only writes the job's graph: nothing runs here to wait for."""
    return bool(options.view_as(GoogleCloudOptions).template_location)


def make_pipeline(recipe: Recipe, location: Location, version: int, todo: dict[str, list[Cell]], options):
    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # workers' start-up chatter
    pipeline = beam.Pipeline(options=options)
    build_graph(pipeline, recipe, location, version, todo)
    return pipeline


def run_pipeline(recipe: Recipe, location: Location, version: int, todo: dict[str, list[Cell]], options,
                 *, progress: bool, cells: int) -> dict[str, int]:  # fmt: skip
    """Run the build's pipeline to its end; its counters by name."""
    pipeline = make_pipeline(recipe, location, version, todo, options)
    state = BuildState(location)
    if progress and location.local:  # the view polls the state folder: cheap on a disk, not in a bucket
        samples_dir = state.dir.local_path / "versions" / f"{version:04d}" / "samples"
        with build_progress(samples_dir, state.dir.local_path / "shards", cells * len(recipe.sources)):
            result = pipeline.run()
            result.wait_until_finish()
    else:
        result = pipeline.run()
        result.wait_until_finish()
    return counters(result)


def counters(result) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counter in result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals
