"""The stages after the store as Beam pipelines, on the build's runner: a thin transform over
``eo_etl.stages.run``, which plans the work and writes the table (here: the batches, spread over workers).

    batches still to do ─► Reshuffle ─► run batch (the stage's function, opened once per worker) ─► count

Each batch records its outputs when done, so a killed run resumes from the batches it finished.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from eo_etl.pipeline.run import beam_scratch, counters
from eo_etl.pipeline.transforms import counter
from eo_etl.recipe import Recipe
from eo_etl.stages.core import Stage
from eo_etl.stages.run import BatchRunner, StagePlan, Work
from eo_etl.store.location import Location


class RunStageBatch(beam.DoFn):
    """Runs one stage on a batch of samples and records it; the stage's function opens once per worker."""

    def __init__(self, stage: str, recipe: Recipe, root: Location):
        self.stage, self.recipe, self.root = stage, recipe, root

    def setup(self):
        from eo_etl.stages.registry import STAGES  # looked up by name: a Stage holds functions, not data

        stage = next(stage for stage in STAGES if stage.name == self.stage)
        self.runner = BatchRunner(stage, self.recipe, self.root)

    def process(self, batch: list[Work]) -> Iterator[int]:
        done = self.runner.run(batch)
        counter(f"{self.stage} samples").inc(done)
        yield done


class RunStage(beam.PTransform):
    """The batches of a stage's plan, spread and run: the count of samples done."""

    def __init__(self, plan: StagePlan, recipe: Recipe, root: Location):
        super().__init__()
        self.plan, self.recipe, self.root = plan, recipe, root

    def expand(self, pipeline):
        name = self.plan.stage.name
        return (
            pipeline
            | f"{name} batches" >> beam.Create(self.plan.batches)
            | f"spread {name} batches" >> beam.Reshuffle()
            | f"run {name}" >> beam.ParDo(RunStageBatch(name, self.recipe, self.root))
            | f"{name} done" >> beam.combiners.Count.Globally()
        )


def run_stage_pipeline(stage: Stage, plan: StagePlan, recipe: Recipe, root: Location, options) -> dict[str, int]:
    """Run the plan's batches on the build's runner; the pipeline's counters."""
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | f"stage {stage.name}" >> RunStage(plan, recipe, root)
    with beam_scratch():
        result = pipeline.run()
        result.wait_until_finish()
        return counters(result)
