"""Building a dataset from a recipe: run the stages this version has, say plainly which did not run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd

from eo_etl.plan import plan, write_plan
from eo_etl.recipe import Recipe


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


# Stages after planning, in pipeline order: which recipe section configures each.
LATER_STAGES = [
    ("acquire", "sources"),
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
    for stage, section in LATER_STAGES:
        if not getattr(recipe, section):
            report.stages.append(StageReport(stage, "not configured", f"the recipe has no {section}"))
        else:
            report.stages.append(
                StageReport(stage, "not available", f"{section} is set, but this eo-etl cannot run {stage} yet")
            )
    return report
