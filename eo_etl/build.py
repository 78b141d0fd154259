"""Building a dataset from a recipe: plan the cells, run the Beam pipeline over those not done yet, report
each stage (and say plainly which did not run), with the pipeline's counters.

The dataset goes to a local folder or an object store's prefix (``s3://…``, ``gs://…``): runners whose
workers share no disk (Dataflow, Spark, Flink) need the latter. Every worker reaches it the same way."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import geopandas as gpd
import pyarrow as pa
import pyarrow.parquet as pq

from eo_etl.extras import require_extras
from eo_etl.pipeline.lock import DatasetLock
from eo_etl.pipeline.options import pipeline_options
from eo_etl.pipeline.plan_rows import plan_length
from eo_etl.pipeline.run import make_pipeline, run_pipeline, stages_a_template
from eo_etl.pipeline.stages import run_stage_pipeline
from eo_etl.pipeline.state import BuildState
from eo_etl.pipeline.transforms import SKIPPED_ITEM, WARNINGS
from eo_etl.plan import PLAN_NAME, check_buildable, plan_bands, write_plan
from eo_etl.recipe import Recipe
from eo_etl.recipe.models import TimeRange
from eo_etl.sample import FAILED, OK, REJECTED, TRANSIENT
from eo_etl.stages.core import Stage, View, stage_settings
from eo_etl.stages.registry import STAGES, find_stages
from eo_etl.stages.run import assemble, plan_stage
from eo_etl.stages.views import plan_view, write_view
from eo_etl.store.index import INDEX_NAME, INDEX_ROW_GROUP
from eo_etl.store.location import Location


@dataclass
class StageReport:
    """One step of a build and how it went."""

    name: str
    # "done", "failed" (done, but too many cells failed; a stage that failed), "up to date" (a stage with nothing
    # to do), "not configured" or "not available"
    status: str
    detail: str


@dataclass
class BuildReport:
    """What a build did: its stages, the index records, the pipeline's counters, the versions."""

    output: Path | str  # the dataset folder: an absolute path, or the URL of an object store's prefix
    cells: gpd.GeoDataFrame  # the plan's cells; its first SHOWN_CELLS only, past that (``planned`` counts them)
    stages: list[StageReport] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # index records, one per (cell, source, version); the first
    # SHOWN_CELLS only, past that (``outcomes`` counts this version's)
    outcomes: dict[str, int] = field(default_factory=dict)  # this version's index rows by status
    metrics: dict[str, int] = field(default_factory=dict)  # the pipeline's counters, by name
    version: int | None = None  # the version this build made
    versions: list[dict] = field(default_factory=list)  # every version of the dataset (versions.json)
    up_to_date: bool = False  # --since found no new time to build
    # what was skipped or changed on the way: unreadable catalogue items, video cubes stored lossless (a target PSNR
    # out of reach)
    warnings: list[str] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)  # the most common reasons cells failed, counted
    planned: int | None = None  # cells in the plan

    @property
    def failed(self) -> bool:
        """Too many cells failed (``runner.max_failed_fraction``, or all of them): the build's exit code says so."""
        return any(stage.status == "failed" for stage in self.stages)


# Stages after storing, in pipeline order: which recipe section configures each. Those the registry
# (eo_etl/stages/registry.py) has stages for run; the others are reported as not available yet. Publishing
# comes after them all (``_publish``): it uploads the dataset, it makes no table.
LATER_STAGES = [
    ("labels", "labels"),
    ("captions", "captions"),
    ("curate", "curation"),
]


def build(
    recipe: Recipe,
    output: Path | str | None = None,
    *,
    since: str | None = None,
    until: date | None = None,
    runner: str | None = None,
    options: dict | None = None,
    progress: bool = False,
    stages: list[str] | None = None,
    redo: bool = False,
) -> BuildReport:
    """Build (or resume, or extend) the dataset of ``recipe`` in ``output`` (the recipe's by default), a
    folder or a URL (``s3://bucket/prefix``; credentials from the environment, as fsspec finds them).

    ``since`` ("LAST" or an ISO date) builds a new version from there (LAST: where the last version ended)
    to ``until`` (yesterday, UTC, by default). ``runner`` and ``options`` override the recipe's runner.
    ``stages`` (names or groups: ``labels``) runs only those stages on the dataset as built, no acquisition;
    ``redo`` makes them forget their recorded work and start afresh.
    """
    location = Location.of(output or recipe.output_path)
    recipe = _with_runner(recipe, runner)
    beam_options = _beam_options(recipe, location, options, out_given=output is not None, runner=runner)
    if stages is not None:
        return _run_stages_alone(recipe, location, beam_options, find_stages(stages), since=since, redo=redo)
    state = BuildState(location)
    if since is not None:
        recipe = _in_window(recipe, window_since(state, since, until))
        if recipe is None:
            return BuildReport(location.native, gpd.GeoDataFrame(), up_to_date=True)
    location.mkdir()
    with DatasetLock(location):  # one writer per dataset, from here to the end
        return _build_locked(recipe, location, state, beam_options, progress=progress)


def _with_runner(recipe: Recipe, runner: str | None) -> Recipe:
    """The recipe with its runner's kind overridden (``--runner``), or as it is."""
    if not runner:
        return recipe
    return recipe.model_copy(update={"runner": recipe.runner.model_copy(update={"kind": runner})})


def _beam_options(recipe: Recipe, location: Location, options: dict | None, *, out_given: bool,
                    runner: str | None):  # fmt: skip
    """The runner's Beam options, after the checks that would otherwise fail a build at its end: a runner
    without its options, Dataflow writing to a local folder, a missing extra."""
    beam_options = pipeline_options(recipe.runner, options)  # a runner without its options fails before any work
    if recipe.runner.kind == "dataflow" and location.local:
        raise ValueError(f"--out {location}: Dataflow's workers share no disk; write the dataset to gs://… or s3://…")
    require_extras(recipe, out=location.native if out_given else None, runner=runner)  # not a build lost at its end
    return beam_options


def _in_window(recipe: Recipe, window: TimeRange | None) -> Recipe | None:
    """The recipe over ``--since``'s window; None when that window is empty (nothing new to build)."""
    return None if window is None else recipe.model_copy(update={"time": window})


def _build_locked(recipe: Recipe, location: Location, state: BuildState, beam_options, *, progress: bool):
    """The build under the dataset's lock: plan, acquire and store, the stages after the store, publish."""
    report = _plan(recipe, location, state)
    if not recipe.sources:
        report.stages.append(StageReport("acquire", "not configured", "the recipe has no sources"))
    elif stages_a_template(beam_options):  # the job runs later: nothing to wait for or read back
        make_pipeline(recipe, location, report.version, beam_options).run()
        report.stages.append(StageReport("acquire", "not available", "staged as a Dataflow template"))
        return report
    else:  # the workers read the cells from the plan and skip those finished before: nothing per cell here
        report.metrics = run_pipeline(recipe, location, report.version, beam_options, progress=progress,
                                      cells=report.planned)  # fmt: skip
        _read_back(recipe, location, state, report)
    report.stages += _later_stages(recipe, location, beam_options, metrics=report.metrics)
    report.stages.append(_publish(recipe, location, report))
    return report


def _plan(recipe: Recipe, location: Location, state: BuildState) -> BuildReport:
    """Write the plan and the recipe as resolved, open this build's version: the report, its plan stage done."""
    plan = location / PLAN_NAME
    location.remove_partial_files()  # a killed build's half-written files; the lock makes this build the only writer
    check_buildable(recipe)
    write_plan(plan_bands(recipe), plan)  # band by band: the driver never holds every cell
    planned = plan_length(plan)
    (location / "recipe.json").write_text(recipe.model_dump_json(indent=2) + "\n")
    report = BuildReport(location.native, _cells_shown(plan, planned), version=state.open_version(recipe))
    report.planned = planned
    report.stages.append(StageReport("plan", "done", f"{planned} cells → {plan}"))
    return report


def _read_back(recipe: Recipe, location: Location, state: BuildState, report: BuildReport) -> None:
    """What the pipeline did, into ``report``: its counters (skipped catalogue items and lossless fallbacks of
    video cubes as warnings), the index's
    first records, the versions, and the acquire and store stages."""
    report.warnings = sorted(name for name in report.metrics if name.startswith(WARNINGS))
    for name in report.warnings:
        del report.metrics[name]
    report.metrics["cells planned"] = report.planned * len(recipe.sources)
    report.metrics.setdefault("cells already finished", 0)
    report.samples = _samples_shown(location / INDEX_NAME)
    report.versions = state.versions()
    report.stages += _stage_reports(recipe, location, report)


SHOWN_CELLS = 1_000  # the plan's cells (and index rows) a report holds: all of a small plan, the first of a larger


def _cells_shown(plan: Location, planned: int) -> gpd.GeoDataFrame:
    """The plan's cells for the report, read back: all of them up to ``SHOWN_CELLS``, else the first."""
    if planned <= SHOWN_CELLS:
        return gpd.read_parquet(plan.url, storage_options=plan.storage_options)
    with plan.fs.open(plan.path, "rb") as file:
        source = pq.ParquetFile(file)
        columns = [name for name in source.schema_arrow.names if name != "geometry"]  # not shown: not read
        table = next(source.iter_batches(batch_size=SHOWN_CELLS, columns=columns))
    return gpd.GeoDataFrame(table.to_pandas())


def _samples_shown(index: Location) -> list[dict]:
    """The index's records for the report: all of a small dataset's, the first ``SHOWN_CELLS`` of a larger one's
    (read a batch at a time: the driver never holds a continent's rows)."""
    with index.fs.open(index.path, "rb") as file:
        source = pq.ParquetFile(file)
        if source.metadata.num_rows <= SHOWN_CELLS:
            return gpd.read_parquet(index.url, storage_options=index.storage_options).to_dict("records")
        # a column at a time, in one thread: decoding every column of its first row group (16,384 rows) at once
        # raised the driver's peak by 28 MB at 100 k cells (17 at 2 k); a column at a time, by 18 (15 at 2 k)
        schema = source.schema_arrow
        columns = [_first_rows(source, name) for name in schema.names]
        return pa.RecordBatch.from_arrays(columns, schema=schema).to_pandas().to_dict("records")


def _first_rows(source: pq.ParquetFile, column: str) -> pa.Array:
    return next(source.iter_batches(batch_size=SHOWN_CELLS, columns=[column], use_threads=False)).column(0)


def _outcomes(index: Location, version: int | None) -> tuple[Counter, Counter]:
    """A version's rows in the index: how many of each status, and of the failed ones' reasons (a few columns
    read, a batch at a time)."""
    statuses, reasons = Counter(), Counter()
    with index.fs.open(index.path, "rb") as file:
        for batch in pq.ParquetFile(file).iter_batches(INDEX_ROW_GROUP, columns=["status", "reason", "version"]):
            rows = batch.to_pandas()
            rows = rows[rows["version"] == version]
            statuses.update(rows["status"])
            reasons.update(rows.loc[rows["status"] == FAILED, "reason"])
    return statuses, reasons


def _run_stages_alone(recipe: Recipe, location: Location, beam_options, selected: list[Stage | View], *, since,
                      redo: bool):  # fmt: skip
    """``--stages``: the stages named, on the dataset as it is built."""
    if since is not None:
        raise ValueError("--stages runs stages on the dataset as built; a new version (--since) runs them itself")
    if not (location / INDEX_NAME).exists():
        raise ValueError(f"{location} has no built dataset (no {INDEX_NAME}): build it first, then run --stages")
    report = BuildReport(location.native, gpd.GeoDataFrame())
    with DatasetLock(location):
        report.stages += _later_stages(recipe, location, beam_options, selected, redo=redo, metrics=report.metrics)
    return report


def _later_stages(recipe: Recipe, location: Location, beam_options, selected: list[Stage | View] | None = None,
                  *, redo: bool = False, metrics: dict[str, int]) -> list[StageReport]:  # fmt: skip
    """Run the configured stages after the store (``selected``: only those), in order; a report each, their
    pipelines' counters added to ``metrics``."""
    reports = []
    for group, section in LATER_STAGES:
        registered = [stage for stage in STAGES if stage.group == group]
        if not registered and selected is None:
            if not getattr(recipe, section):
                reports.append(StageReport(group, "not configured", f"the recipe has no {section}"))
            else:
                reports.append(
                    StageReport(group, "not available", f"{section} is set, but this eo-etl cannot run {group} yet")
                )
        for stage in registered:
            if selected is None or stage in selected:
                reports.append(_later_stage(stage, recipe, location, beam_options, redo=redo, metrics=metrics))
        reports += [] if selected is not None else _unavailable_parts(recipe, section, registered)
    return reports


def _unavailable_parts(recipe: Recipe, section: str, registered: list[Stage]) -> list[StageReport]:
    """Parts of a section set in the recipe that no registered stage runs (labels.osm before its stage)."""
    configured = getattr(recipe, section)
    covered = {stage.section for stage in registered}
    if not registered or configured is None or section in covered:
        return []
    return [
        StageReport(name, "not available", f"{section}.{name} is set, but this eo-etl cannot run it yet")
        for name in type(configured).model_fields
        if getattr(configured, name) is not None and f"{section}.{name}" not in covered
    ]


def _later_stage(stage: Stage | View, recipe: Recipe, location: Location, beam_options, *, redo: bool,
                 metrics: dict[str, int]) -> StageReport:  # fmt: skip
    """Run one stage after the store on the samples whose inputs changed since it last ran."""
    if stage_settings(stage, recipe) is None:
        return StageReport(stage.name, "not configured", f"the recipe has no {stage.section}")
    if not (location / INDEX_NAME).exists():
        return StageReport(stage.name, "not available", f"no {INDEX_NAME} to run it on: the recipe has no sources")
    table = location / stage.table_name
    if isinstance(stage, View):
        return _later_view(stage, recipe, location, redo=redo)
    try:
        plan = plan_stage(stage, recipe, location, redo=redo)
        if plan.up_to_date:
            return StageReport(stage.name, "up to date", f"{len(plan.order)} samples → {table}")
        if plan.batches:
            metrics.update(run_stage_pipeline(stage, plan, recipe, location, beam_options))
        assemble(plan, location)
    except Exception as error:  # the stage's failure is reported; the batches it finished are kept for a rerun
        return StageReport(stage.name, "failed", f"{type(error).__name__}: {error}")
    kept = len(plan.order) - plan.todo
    return StageReport(stage.name, "done", f"{plan.todo} samples run, {kept} kept → {table}")


def _later_view(view: View, recipe: Recipe, location: Location, *, redo: bool) -> StageReport:
    """Write a view over the whole dataset (dedup, balance) unless its settings and inputs are unchanged."""
    table = location / view.table_name
    try:
        plan = plan_view(view, recipe, location, redo=redo)
        if plan.up_to_date:
            return StageReport(view.name, "up to date", f"→ {table}")
        write_view(plan, recipe, location)
    except Exception as error:  # reported; the file it had is kept (written atomically)
        return StageReport(view.name, "failed", f"{type(error).__name__}: {error}")
    return StageReport(view.name, "done", f"→ {table}")


def _publish(recipe: Recipe, location: Location, report: BuildReport) -> StageReport:
    """The build's last step: the card, then the upload (a folder only: the Hub client uploads local files)."""
    if not recipe.publish:
        return StageReport("publish", "not configured", "the recipe has no publish")
    from eo_etl.publish.hub import PublishError, publish

    if report.failed or not report.samples:
        return StageReport("publish", "not configured", "not run: the build stored nothing or failed")
    if not location.local:
        return StageReport("publish", "not available", "publishing uploads a local folder; build to one")
    try:
        done = publish(location.local_path, recipe, recipe.publish)
    except PublishError as error:
        return StageReport("publish", "failed", str(error))
    return StageReport("publish", "done", f"{len(done.files)} files → {done.url or done.repo_id}")


def window_since(state: BuildState, since: str, until: date | None) -> TimeRange | None:
    """The time window of an incremental build; None when it would be empty (nothing new yet)."""
    if since.upper() == "LAST":
        versions = state.versions()
        if not versions:
            raise ValueError(f"--since LAST: {state.root} has no finished version yet; build it once without --since")
        start = datetime.fromisoformat(versions[-1]["end"])
    else:
        try:
            start = datetime.combine(date.fromisoformat(since), datetime.min.time(), tzinfo=UTC)
        except ValueError:
            raise ValueError(f"--since {since!r}: expected LAST or a date such as 2024-06-01") from None
    end = until or datetime.now(UTC).date() - timedelta(days=1)  # whole days: today is still arriving
    if datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC) <= start:
        return None
    return TimeRange(start=start, end=end)


def _stage_reports(recipe: Recipe, location: Location, report: BuildReport) -> list[StageReport]:
    statuses, reasons = _outcomes(location / INDEX_NAME, report.version)
    report.outcomes = dict(statuses)
    counts = {status: statuses[status] for status in (OK, REJECTED, FAILED)}
    m = report.metrics
    acquired = ", ".join(f"{n} {status}" for status, n in counts.items())
    resumed = m.get("cells already finished", 0)
    acquire = f"{acquired} in version {report.version}" + (f" ({resumed} finished before)" if resumed else "")
    acquire += f", {m.get('retries', 0)} retries"
    skipped = sum(warning.startswith(SKIPPED_ITEM) for warning in report.warnings)
    if skipped:
        acquire += f", {skipped} catalogue items skipped (unreadable)"
    transient = sum(n for reason, n in reasons.items() if reason.startswith(TRANSIENT))
    if transient:
        acquire += f", {transient} failed transiently (a rerun tries them again)"
    report.failures = [(n, reason) for reason, n in reasons.most_common(3)]
    failed, rows = reasons.total(), statuses.total()
    too_many = bool(failed) and (failed == rows or failed > recipe.runner.max_failed_fraction * rows)
    written = f"{m.get('shards written', 0)} shards written, {m.get('shards already written', 0)} kept"
    store = f"{written} → {', '.join(recipe.outputs.formats)}, {location / INDEX_NAME}"
    return [StageReport("acquire", "failed" if too_many else "done", acquire), StageReport("store", "done", store)]
