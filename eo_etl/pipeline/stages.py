"""The stages after the store as Beam pipelines, on the build's runner: a thin transform over
``eo_etl.stages.run``, which plans the work and writes the table (here: the batches, spread over workers).

    batches still to do ─► Reshuffle ─► run batch (the stage's function, opened once per worker) ─► count

A stage with a model step (``Stage.model``: embeddings) runs its model as a step of its own, so the accelerator
is not held while pixels are read and outputs written (on Dataflow, give that step its accelerator hints):

    batches ─► Reshuffle ─► read + prepare (CPU) ─► RunInference (the model, loaded once per worker process)
            ─► finish + record ─► count

Each batch records its outputs when done, so a killed run resumes from the batches it finished.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from eo_etl.pipeline.run import beam_scratch, counters
from eo_etl.pipeline.transforms import counter
from eo_etl.recipe import Recipe
from eo_etl.stages.core import Stage, stage_settings
from eo_etl.stages.run import BatchRunner, StagePlan, Work
from eo_etl.store.location import Location


class RunStageBatch(beam.DoFn):
    """Runs one stage on a batch of samples and records it; the stage's function opens once per worker."""

    def __init__(self, stage: str, recipe: Recipe, root: Location):
        self.stage, self.recipe, self.root = stage, recipe, root

    def setup(self):
        self.runner = BatchRunner(_stage_named(self.stage), self.recipe, self.root)

    def process(self, batch: list[Work]) -> Iterator[int]:
        done = self.runner.run(batch)
        counter(f"{self.stage} samples").inc(done)
        yield done


def _stage_named(name: str) -> Stage:
    from eo_etl.stages.registry import STAGES  # looked up by name: a Stage holds functions, not data

    return next(stage for stage in STAGES if stage.name == name)


class PrepareBatch(beam.DoFn):
    """The read step of a stage with a model: a batch's pixels, made into the model's input (no model here)."""

    def __init__(self, stage: str, recipe: Recipe, root: Location):
        self.stage, self.recipe, self.root = stage, recipe, root

    def setup(self):
        self.runner = BatchRunner(_stage_named(self.stage), self.recipe, self.root)

    def process(self, batch: list[Work]):
        layout, model_input = self.runner.stage.model.prepare(self.runner.settings, self.runner.items(batch))
        yield (batch, layout), model_input


class RecordBatch(beam.DoFn):
    """The write step of a stage with a model: the model's result made into outputs, recorded as a batch."""

    def __init__(self, stage: str, recipe: Recipe, root: Location):
        self.stage, self.recipe, self.root = stage, recipe, root

    def setup(self):
        self.runner = BatchRunner(_stage_named(self.stage), self.recipe, self.root)

    def process(self, keyed) -> Iterator[int]:
        (batch, layout), result = keyed
        outputs = self.runner.stage.model.finish(self.runner.settings, layout, result.inference, result.model_id)
        done = self.runner.record(batch, outputs)
        counter(f"{self.stage} samples").inc(done)
        yield done


def model_handler(stage: Stage, recipe: Recipe):
    """The stage's Beam model handler (``Stage.model.handler``), built from its settings."""
    module, _, name = stage.model.handler.partition(":")
    return getattr(importlib.import_module(module), name)(stage_settings(stage, recipe))


def run_model(stage: Stage, recipe: Recipe) -> beam.PTransform:
    """The stage's model as a Beam step: RunInference, keyed by batch. Imported here, for stages with a model
    only: Beam's inference module imports torch (and scipy) whenever torch is installed, 300 MB in the driver."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    return RunInference(KeyedModelHandler(model_handler(stage, recipe)))


class RunStage(beam.PTransform):
    """The batches of a stage's plan, spread and run: the count of samples done."""

    def __init__(self, plan: StagePlan, recipe: Recipe, root: Location):
        super().__init__()
        self.plan, self.recipe, self.root = plan, recipe, root

    def expand(self, pipeline):
        stage = self.plan.stage
        name = stage.name
        batches = (
            pipeline
            | f"{name} batches" >> beam.Create(self.plan.batches)
            | f"spread {name} batches" >> beam.Reshuffle()
        )
        if stage.model is None:
            done = batches | f"run {name}" >> beam.ParDo(RunStageBatch(name, self.recipe, self.root))
        else:
            done = (
                batches
                | f"read {name} batches" >> beam.ParDo(PrepareBatch(name, self.recipe, self.root))
                | f"{name} model" >> run_model(stage, self.recipe)
                | f"record {name} batches" >> beam.ParDo(RecordBatch(name, self.recipe, self.root))
            )
        return done | f"{name} done" >> beam.combiners.Count.Globally()


def run_stage_pipeline(stage: Stage, plan: StagePlan, recipe: Recipe, root: Location, options) -> dict[str, int]:
    """Run the plan's batches on the build's runner; the pipeline's counters."""
    pipeline = beam.Pipeline(options=_fitted(options, len(plan.batches)))
    _ = pipeline | f"stage {stage.name}" >> RunStage(plan, recipe, root)
    with beam_scratch():
        result = pipeline.run()
        result.wait_until_finish()
        return counters(result)


def _fitted(options: PipelineOptions, batches: int) -> PipelineOptions:
    """The direct runner in this process (its FnApiRunner) for work of fewer batches than two per worker: starting
    worker processes costs more than such work (a rerun labelling a new version's few samples, 12 demo
    samples: 35 s in two processes, 5 s in one, measured on a loaded 2-CPU machine)."""
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers or 1
    if options.view_as(StandardOptions).runner != "DirectRunner" or batches >= 2 * workers:
        return options
    return PipelineOptions.from_dictionary(
        options.get_all_options(drop_default=True) | {"direct_running_mode": "in_memory", "direct_num_workers": 1}
    )
