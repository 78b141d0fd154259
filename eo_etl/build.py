"""Building a dataset from a recipe: run the stages this version has, say plainly which did not run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd

from eo_etl.plan import plan, write_plan
from eo_etl.recipe import Recipe
from eo_etl.sample import FAILED, OK, REJECTED
from eo_etl.sources.acquire import acquire_source
from eo_etl.sources.cell import cells_of
from eo_etl.store.dataset import DatasetWriter
from eo_etl.store.index import INDEX_NAME


@dataclass
class StageReport:
    name: str
    status: str  # "done", "not configured" or "not available"
    detail: str


@dataclass
class BuildReport:
    output: Path
    cells: gpd.GeoDataFrame
    stages: list[StageReport] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # index records, one per (cell, source)


# Stages after planning, in pipeline order: which recipe section configures each.
LATER_STAGES = [
    ("labels", "labels"),
    ("captions", "captions"),
    ("curate", "curation"),
    ("publish", "publish"),
]


def build(recipe: Recipe, output: Path | None = None) -> BuildReport:
    """Plan the cells, write the plan and the resolved recipe into the dataset folder, report each stage."""
    output = Path(output or recipe.output_path)
    output.mkdir(parents=True, exist_ok=True)
    cells = plan(recipe)
    write_plan(cells, output / "plan.parquet")
    (output / "recipe.json").write_text(recipe.model_dump_json(indent=2) + "\n")
    report = BuildReport(output, cells)
    report.stages.append(StageReport("plan", "done", f"{len(cells)} cells → {output / 'plan.parquet'}"))
    report.stages.append(acquire(recipe, cells, output, report.samples))
    for stage, section in LATER_STAGES:
        if not getattr(recipe, section):
            report.stages.append(StageReport(stage, "not configured", f"the recipe has no {section}"))
        else:
            report.stages.append(
                StageReport(stage, "not available", f"{section} is set, but this eo-etl cannot run {stage} yet")
            )
    return report


def acquire(recipe: Recipe, cells: gpd.GeoDataFrame, output: Path, records: list[dict]) -> StageReport:
    """Cut every source's patch for every cell and store it; the index records every outcome."""
    if not recipe.sources:
        return StageReport("acquire", "not configured", "the recipe has no sources")
    targets = cells_of(recipe, cells)
    dataset = DatasetWriter(output, recipe, cells)
    for source in recipe.sources:
        for sample in acquire_source(recipe, source, targets, workers=recipe.runner.workers):
            dataset.add(sample)
    index = dataset.close()
    records.extend(index.to_dict("records"))
    counts = {status: int((index.status == status).sum()) for status in (OK, REJECTED, FAILED)}
    formats = ", ".join(recipe.outputs.formats)
    detail = ", ".join(f"{n} {status}" for status, n in counts.items()) + f" → {formats}, {output / INDEX_NAME}"
    return StageReport("acquire", "done", detail)
