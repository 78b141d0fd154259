"""The build driver's imports: a driver that plans and launches Beam jobs loads no model library (torch, faiss,
transformers, llama-cpp …) unless a stage of its recipe runs a model in the driver. Beam's inference module
imports torch (about 200 MB) wherever torch is installed, so only a stage with a model step imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = ("torch", "transformers", "faiss", "llama_cpp", "apache_beam.ml.inference.base")

# What `eo-etl build` does before the job runs, in a fresh interpreter: the command line's module, the recipe
# checks and the plan written, the acquisition's job graph and the graph of each stage after the store.
DRIVER = f"""
import sys
import apache_beam as beam
from eo_etl.build import _beam_options, _plan
from eo_etl.cli import app
from eo_etl.pipeline.run import make_pipeline
from eo_etl.pipeline.stages import RunStage
from eo_etl.pipeline.state import BuildState
from eo_etl.recipe import load_recipe
from eo_etl.stages.core import Stage, stage_settings
from eo_etl.stages.registry import STAGES
from eo_etl.stages.run import StagePlan
from eo_etl.store.location import Location

recipe, location = load_recipe(sys.argv[1]), Location.of(sys.argv[2])
options = _beam_options(recipe, location, None, out_given=True, runner=None)
location.mkdir()
report = _plan(recipe, location, BuildState(location))
graphs = [make_pipeline(recipe, location, report.version, options)]
for stage in STAGES:
    settings = stage_settings(stage, recipe)
    if isinstance(stage, Stage) and settings is not None:
        graphs.append(beam.Pipeline(runner="FnApiRunner"))
        _ = graphs[-1] | RunStage(StagePlan(stage, settings, "", [], {{}}, [[]], False), recipe, location)
        print("stage", stage.name, stage.model is None)
print("planned", report.planned, sum(len(g.to_runner_api().components.transforms) > 0 for g in graphs))
print("loaded", sorted(name for name in {MODEL_LIBRARIES!r} if name in sys.modules))
"""


def test_planning_and_making_the_demo_builds_job_graphs_loads_no_model_library(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(ROOT / "pipelines" / "demo.yaml"), str(tmp_path / "demo")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    stages = {line.split()[1]: line.split()[2] for line in lines if line.startswith("stage ")}
    assert {"landcover", "captions", "quality"} <= set(stages)  # the demo's stages, none with a model
    assert set(stages.values()) == {"True"}
    assert "planned 12 4" in lines and (tmp_path / "demo" / "plan.parquet").is_file()  # 12 cells; 4 job graphs
    assert lines[-1] == "loaded []"
