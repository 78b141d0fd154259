"""Running a build's pipeline: to its end with its counters (and, locally, a progress view), or only staged
as a Dataflow template, which runs later."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from eo_etl.pipeline.graph import build_graph
from eo_etl.pipeline.progress import build_progress
from eo_etl.pipeline.state import BuildState
from eo_etl.pipeline.transforms import NAMESPACE
from eo_etl.recipe import Recipe
from eo_etl.store.location import Location


def stages_a_template(options: PipelineOptions) -> bool:
    """Staging a (classic or Flex) template only writes the job's graph: nothing runs here to wait for."""
    return bool(options.view_as(GoogleCloudOptions).template_location)


def make_pipeline(recipe: Recipe, location: Location, version: int, options):
    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # workers' start-up chatter
    pipeline = beam.Pipeline(options=options)
    build_graph(pipeline, recipe, location, version)
    return pipeline


def run_pipeline(recipe: Recipe, location: Location, version: int, options, *, progress: bool,
                 cells: int) -> dict[str, int]:  # fmt: skip
    """Run the build's pipeline over the plan written at ``location`` (``cells`` cells) to its end; its counters
    by name."""
    pipeline = make_pipeline(recipe, location, version, options)
    state = BuildState(location)
    with beam_scratch():
        if progress and location.local:  # the view polls the state folder: cheap on a disk, not in a bucket
            samples, shards = state.samples_dir(version).local_path, state.shards_dir.local_path
            with build_progress(samples, shards, cells * len(recipe.sources)):
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


# Beam's worker processes import modules that log a warning on import ("apitools not found"), which gives the root
# logger a stderr handler before the worker sends its logs to the runner: its start-up lines ("Logging handler
# created") then reach the terminal too. A handler of ours first, in a sitecustomize on the workers' PYTHONPATH,
# keeps them off it; any sitecustomize the interpreter had still runs.
WORKER_SITE = """\
import importlib.machinery, importlib.util, logging, os, sys
logging.getLogger().addHandler(logging.NullHandler())
_here = os.path.dirname(os.path.abspath(__file__))
_others = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _others)
if _spec is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
"""


@contextmanager
def beam_scratch() -> Iterator[str]:
    """A temporary folder of ours as the temp dir while the pipeline runs, removed after it: Beam's runners leave
    folders in the temp dir (artifact staging, a requirements cache, a job server's root), and its worker
    processes, which inherit TMPDIR, their own. The workers also get a quiet start (``WORKER_SITE``)."""
    scratch = tempfile.mkdtemp(prefix="eo-etl-beam-")
    site = os.path.join(scratch, "worker-site")
    os.mkdir(site)
    with open(os.path.join(site, "sitecustomize.py"), "w") as file:
        file.write(WORKER_SITE)
    before = {name: os.environ.get(name) for name in ("TMPDIR", "PYTHONPATH")}
    before_dir = tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = scratch, scratch
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, before["PYTHONPATH"]) if p)
    try:
        yield scratch
    finally:
        tempfile.tempdir = before_dir
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(scratch, ignore_errors=True)
