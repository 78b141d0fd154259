"""The ``eo-etl`` command line: validate, plan and build recipes; map points onto the grid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from eo_etl import __version__
from eo_etl.extras import MissingExtras
from eo_etl.grid import get_grid
from eo_etl.recipe import Recipe, RecipeError, load_recipe
from eo_etl.recipe.load import parse_section
from eo_etl.recipe.models import MAX_CELLS, Publish, Runner
from eo_etl.sample import SampleId
from eo_etl.store.location import Location, local_file_problem, local_folder_problem
from eo_etl.text import printable

if TYPE_CHECKING:
    import pandas as pd

    from eo_etl.build import BuildReport

# pandas, geopandas (the points table), Beam and the stages are imported by the commands that use them: `--help`,
# `--version` and `grid cell` start without them.

app = typer.Typer(
    help="Build and curate ML-ready Earth observation datasets from a recipe.",
    epilog="Start with: eo-etl demo (the offline demo), or eo-etl validate recipe.yaml, then eo-etl build recipe.yaml",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
grid_app = typer.Typer(help="The Major TOM grid: map points to cells, describe a cell.", no_args_is_help=True)
app.add_typer(grid_app, name="grid")

out = Console(emoji=False)  # a recipe's ":warning:" stays text
err = Console(stderr=True, emoji=False)

REASON_LIMIT = 240  # characters of each failure reason in the one line that counts them
RUNNERS = get_args(Runner.model_fields["kind"].annotation)  # the recipe's runner kinds
RecipePath = Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. pipelines/demo.yaml.", show_default=False)]


def safe(value: object) -> str:
    """Text from users, recipes, catalogues or errors, to put inside Rich markup: markup escaped (``[/red]`` in a
    band name prints as itself), control characters escaped, cut to a line's length. Where nothing follows it,
    print with ``markup=False`` or as :func:`plain` instead (Rich doubles a trailing backslash)."""
    return escape(printable(str(value)))


def plain(value: object, style: str = "") -> Text:
    """The same text as :func:`safe`, as a Rich Text: never read as markup, for table cells and whole values."""
    return Text(printable(str(value)), style=style)


def error_line(message: object) -> Text:
    return Text.assemble(("error:", "red"), " ", plain(message))


def say_error(message: object) -> None:
    err.print(error_line(message), highlight=False, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input ends the command with one line per problem on stderr and exit code 2, no traceback."""
    try:
        yield
    except RecipeError as error:
        for problem in error.problems:
            say_error(f"{error.path}: {problem}")
        raise typer.Exit(2) from None
    except MissingExtras as error:
        for problem in error.problems:
            say_error(problem)
        raise typer.Exit(2) from None
    except ValueError as error:  # the commands' own, CellNameError, PointsError
        say_error(error)
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"eo-etl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """eo-etl turns a recipe (area, time, sources, labels, captions, curation, outputs) into a dataset."""


@app.command()
def validate(recipe: RecipePath) -> None:
    """Check a recipe; print a summary, or each problem with the field it is in."""
    with user_errors():
        parsed = load_recipe(recipe)
    out.print(f"[green]✓[/green] {safe(recipe)} is a valid recipe: [bold]{parsed.name}[/bold]", highlight=False)
    summary = "\n".join(map(printable, _summary(parsed).splitlines()))  # each line cleaned, the lines kept
    out.print(summary, markup=False, highlight=False, soft_wrap=True)


@app.command()
def plan(
    recipe: RecipePath,
    out_file: Annotated[
        Optional[str],
        typer.Option("--out", help="GeoParquet to write (a path or URL); <outputs.path>/plan.parquet by default."),
    ] = None,
) -> None:
    """List the grid cells of the recipe's AOI into a GeoParquet file (Major TOM columns + geometry); an AOI of
    any size, in bands of grid rows."""
    import pandas as pd

    from eo_etl.plan import PLAN_NAME, plan_bands, write_plan

    with user_errors():
        parsed = load_recipe(recipe)
        target = Location.of(out_file or Location.of(parsed.output_path) / PLAN_NAME)
        problem = target.local and local_file_problem(target.local_path)
        if problem:
            raise ValueError(f"{'--out' if out_file else 'outputs.path'}: {problem}")
        counts, first = [], []

        def noted(bands: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for band in bands:  # what the summary shows: how many, and the first few
                counts.append(len(band))
                if sum(map(len, first)) < 8:
                    first.append(band.head(8))
                yield band

        target = write_plan(noted(plan_bands(parsed)), target)
    count = sum(counts)
    grid = f"{parsed.grid.distance_km:g} km {parsed.grid.kind} grid"
    out.print(f"{count} cells of the {grid} → {printable(str(target))}", markup=False, highlight=False)
    _print_cells(pd.concat(first) if first else pd.DataFrame(), total=count)


@app.command()
def build(
    recipe: RecipePath,
    output: Annotated[
        Optional[str],  # not a Path: that would make s3://bucket/x into s3:/bucket/x
        typer.Option("--out", help="Dataset folder or URL (s3://…, gs://…); the recipe's outputs.path by default."),
    ] = None,
    since: Annotated[
        Optional[str],
        typer.Option(help="Build a new version from here: LAST (where the last version ended) or a date."),
    ] = None,
    until: Annotated[
        Optional[datetime], typer.Option(formats=["%Y-%m-%d"], help="Last day of a --since build; yesterday if unset.")
    ] = None,
    runner: Annotated[
        Optional[str], typer.Option(help="direct, dataflow, spark or flink; the recipe's runner.kind by default.")
    ] = None,
    option: Annotated[
        Optional[list[str]], typer.Option(help="A pipeline option key=value for the runner (repeat it).")
    ] = None,
    stages: Annotated[
        Optional[str],
        typer.Option(
            help="Run only these stages after the store (names or groups, e.g. labels or landcover,osm) on "
            "the dataset as built: no acquisition."
        ),
    ] = None,  # fmt: skip
    redo: Annotated[
        bool, typer.Option("--redo", help="With --stages: forget their recorded work and run them afresh.")
    ] = False,
) -> None:
    """Build the dataset through the Beam pipeline: resumes a killed build, extends one with --since; then the
    stages after the store (labels, …), each skipped when up to date. Long only for its flat table of options:
    the work is in the steps it calls."""
    with user_errors():
        parsed = load_recipe(recipe)  # before Beam is imported: a bad recipe fails at once
        from eo_etl.build import build as run_build

        options = _checked_build(recipe, parsed, output, runner, option, stages, redo)
        kind = runner or parsed.runner.kind
        selected = None if stages is None else [name.strip() for name in stages.split(",") if name.strip()]
        report = run_build(
            parsed, output, since=since, until=until.date() if until else None, runner=runner, options=options,
            progress=kind == "direct" and out.is_terminal, stages=selected, redo=redo,
        )  # fmt: skip
    if report.up_to_date:
        out.print(f"[bold]{parsed.name}[/bold] → {safe(report.output)}: up to date, no new days since the last version")
        return
    _print_build(parsed, report, stages)
    if report.failed:
        raise typer.Exit(1)


def _checked_build(
    recipe: Path,
    parsed: Recipe,
    output: str | None,
    runner: str | None,
    option: list[str] | None,
    stages: str | None,
    redo: bool,
) -> dict[str, str]:
    """The build command's options checked against the recipe, before anything runs; the runner's options."""
    from eo_etl.pipeline.options import parse_option
    from eo_etl.plan import check_buildable

    if runner is not None and runner not in RUNNERS:
        raise ValueError(f"--runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    if runner is not None:  # the recipe's runner section, checked again for this kind (direct: workers)
        parse_section(Runner, {**parsed.runner.model_dump(), "kind": runner}, f"--runner {runner}", "runner")
    options = dict(parse_option(text) for text in option or [])
    target = Location.of(output or parsed.output_path)
    problem = target.local and local_folder_problem(target.local_path)
    if problem:
        raise ValueError(f"{'--out' if output else 'outputs.path'}: {problem}")
    try:
        check_buildable(parsed)
    except ValueError as error:  # the recipe's AOI: said as a recipe's problems are
        raise RecipeError(recipe, [str(error)]) from None
    if redo and stages is None:
        raise ValueError("--redo: name the stages to run afresh with --stages")
    return options


def _print_build(parsed: Recipe, report: BuildReport, stages: str | None) -> None:
    """What a build did: its warnings, each stage's status, the counters, the samples (or cells), the captions."""
    for warning in report.warnings:
        err.print(Text.assemble(("warning: ", "yellow"), plain(warning)), highlight=False, soft_wrap=True)
    version = f" (version {report.version})" if report.version is not None else ""
    out.print(f"[bold]{parsed.name}[/bold] → {safe(report.output)}{version}", highlight=False)
    marks = {"done": "[green]✓[/green]", "failed": "[red]✗[/red]", "not configured": "[dim]–[/dim]",
             "not available": "[yellow]![/yellow]", "up to date": "[green]✓[/green]"}  # fmt: skip
    for stage in report.stages:
        line = f"{marks[stage.status]} {stage.name:<9} {stage.status:<15} [dim]{safe(stage.detail)}[/dim]"
        out.print(line, highlight=False, soft_wrap=True)
    if report.metrics:
        counters = ", ".join(f"{name} {value}" for name, value in sorted(report.metrics.items()))
        out.print(f"[dim]counters: {safe(counters)}[/dim]", highlight=False, soft_wrap=True)
    first = {source.name: rank for rank, source in enumerate(parsed.sources)}  # the recipe's first source first
    if report.samples:
        _print_samples(sorted(report.samples, key=lambda r: first.get(r["source"], len(first))), report.output)
    elif stages is None:
        _print_cells(report.cells, total=report.planned)
    if any(stage.name == "captions" and stage.status in ("done", "up to date") for stage in report.stages):
        _print_captions(report.output, first)
    if report.failures:
        _print_failures(parsed, report)


def _print_failures(parsed: Recipe, report: BuildReport) -> None:
    """One line, most common reasons first: an unreachable catalogue is said once."""
    failed, cells = report.outcomes.get("failed", 0), sum(report.outcomes.values())  # counted over the whole index
    reasons = "; ".join(f"{n} × {printable(reason, REASON_LIMIT)}" for n, reason in report.failures)
    level = ("error:", "red") if report.failed else ("warning:", "yellow")
    allowed = f"runner.max_failed_fraction is {parsed.runner.max_failed_fraction:g}"
    limit = f"too many: {allowed}" if report.failed else allowed
    said = plain(f"{failed} of {cells} cells failed ({limit}): {reasons}")
    err.print(Text.assemble(level, " ", said), highlight=False, soft_wrap=True)


@app.command()
def publish(
    dataset: Annotated[Path, typer.Argument(help="A built dataset folder (with index.parquet).", show_default=False)],
    repo: Annotated[
        Optional[str],
        typer.Option(help="Hugging Face dataset repo, owner/name; the recipe's publish.repo_id if unset."),
    ] = None,
    private: Annotated[Optional[bool], typer.Option("--private", help="Create the repo private.")] = None,
    revision: Annotated[Optional[str], typer.Option(help="The branch to commit to (main by default).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write the card and list the files; send nothing.")
    ] = False,
) -> None:
    """Write the dataset card into DATASET and upload the dataset to the Hugging Face Hub (resumable: rerun an
    interrupted publish). The token is HF_TOKEN's or the one `hf auth login` saved; it is never printed."""
    with user_errors():
        parsed, settings = _publish_settings(dataset, {"repo_id": repo, "private": private, "revision": revision})
        from eo_etl.extras import require
        from eo_etl.publish.hub import PublishError
        from eo_etl.publish.hub import publish as run_publish

        require("publish", "eo-etl publish")
        try:
            report = run_publish(dataset, parsed, settings, dry_run=dry_run)
        except PublishError as error:
            say_error(error)
            raise typer.Exit(1) from None
    size = f"{len(report.files)} files, {report.bytes / 2**20:.1f} MiB"
    if report.dry_run:
        out.print(f"dry run: would upload {size} to {safe(report.repo_id)}@{safe(report.revision)}", highlight=False)
        for name in report.files:
            out.print(plain(f"  {name}"), highlight=False)
        return
    out.print(f"published {size} → {safe(report.url)}", highlight=False)


def _publish_settings(dataset: Path, given: dict[str, object]) -> tuple[Recipe, Publish]:
    """The built dataset's recipe, and its publish section with the options given on the command line over it."""
    built = dataset / "recipe.json"
    if not built.is_file() or not (dataset / "index.parquet").is_file():
        raise ValueError(f"{dataset}: not a built dataset (no recipe.json and index.parquet)")
    parsed = parse_section(Recipe, json.loads(built.read_text()), str(built), "recipe")
    settings = parsed.publish.model_dump() if parsed.publish else {}
    settings |= {key: value for key, value in given.items() if value is not None}
    if "repo_id" not in settings:
        raise ValueError("--repo: say which Hub repo (owner/name); the recipe has no publish.repo_id")
    return parsed, parse_section(Publish, settings, "--repo/--revision", "publish")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo's files go.")] = Path("out"),
) -> None:
    """The offline demo, no clone needed: write the Sentinel-2 scene that xarray-spatial ships as a STAC catalog
    (<out>/demo-catalog), the demo recipe reading it (<out>/demo.yaml), and build that (<out>/demo)."""
    from eo_etl.demo import LAND_COVER_HINT, land_cover_installed, write_demo

    with user_errors():
        recipe = write_demo(out_dir)  # checks every extra it needs before writing anything
    if not land_cover_installed():
        err.print(Text.assemble(("note: ", "yellow"), LAND_COVER_HINT), highlight=False, soft_wrap=True)
    out.print(f"wrote the demo scene and {recipe}; building it", highlight=False)
    build(recipe)


@grid_app.command("locate")
def grid_locate(
    points: Annotated[
        Optional[Path], typer.Argument(help="CSV or (Geo)Parquet with lat/lon columns (or point geometries).")
    ] = None,
    lat: Annotated[Optional[float], typer.Option(help="Latitude of a single point.")] = None,
    lon: Annotated[Optional[float], typer.Option(help="Longitude of a single point.")] = None,
    dist: Annotated[float, typer.Option(help="Grid distance in km.")] = 10.0,
    grid: Annotated[str, typer.Option(help="Grid definition (see grids/).")] = "majortom",
    out_file: Annotated[
        Optional[Path], typer.Option("--out", help="Write here (.csv or .parquet) instead of CSV on stdout.")
    ] = None,
) -> None:
    """Add grid_cell, grid_row_u, grid_col_r to a table of points, e.g. to map your samples onto Major TOM."""
    import pandas as pd

    from eo_etl.grid.points import locate_points, read_points, write_points

    with user_errors():
        if (points is None) == (lat is None or lon is None):
            raise ValueError("give a POINTS file, or both --lat and --lon")
        table = read_points(points) if points is not None else pd.DataFrame({"lat": [lat], "lon": [lon]})
        located, outside = locate_points(get_grid(grid, dist), table)
        write_points(located, out_file)
    if outside:
        err.print(f"[yellow]warning:[/yellow] {outside} of {len(located)} points are outside the grid (empty cell)")
    if out_file is not None:
        err.print(f"{len(located)} points → {printable(str(out_file))}", markup=False, highlight=False)


@grid_app.command("cell")
def grid_cell(
    name: Annotated[str, typer.Argument(help="Cell name, e.g. 454U_120R.", show_default=False)],
    dist: Annotated[float, typer.Option(help="Grid distance in km.")] = 10.0,
    grid: Annotated[str, typer.Option(help="Grid definition (see grids/).")] = "majortom",
) -> None:
    """Describe a cell: its bounds, centre, UTM zone and sample footprint."""
    with user_errors():
        the_grid = get_grid(grid, dist)
        row, col = the_grid.parse([name])
    west, south, east, north = (float(v[0]) for v in the_grid.bounds(row, col))
    lat, lon = (float(v[0]) for v in the_grid.centre(row, col))
    fp = the_grid.footprints(row, col)
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_row("cell", plain(f"{name}  (row {int(row[0])}, col {int(col[0])}, {dist:g} km {grid})"))
    table.add_row("bounds", f"west {west:.6f}, south {south:.6f}, east {east:.6f}, north {north:.6f}")
    table.add_row("centre", f"lat {lat:.6f}, lon {lon:.6f}")
    table.add_row("crs", f"EPSG:{int(fp.epsg[0])}")
    table.add_row(
        "footprint",
        f"x {fp.xmin[0]:.2f} – {fp.xmax[0]:.2f}, y {fp.ymin[0]:.2f} – {fp.ymax[0]:.2f} "
        f"({the_grid.footprint_m:g} m square)",
    )
    out.print(table, highlight=False)


@app.command()
def schema(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the JSON Schemas.")] = Path("schemas"),
    check: Annotated[bool, typer.Option(help="Only check the files are current; exit 1 if not.")] = False,
) -> None:
    """Write the JSON Schemas generated from the pydantic models (recipe, …) into schemas/."""
    from eo_etl.schemas import stale_schemas, write_schemas

    if check:
        stale = stale_schemas(out_dir)
        for path in stale:
            err.print(f"[red]stale:[/red] {safe(path)} (run eo-etl schema)")
        raise typer.Exit(1 if stale else 0)
    for path in write_schemas(out_dir):
        out.print(f"wrote {printable(str(path))}", markup=False)


def _summary(recipe: Recipe) -> str:
    from eo_etl.stages.core import stage_settings
    from eo_etl.stages.registry import STAGES  # the stage modules (rasterio …): only where a summary is shown

    aoi = recipe.aoi
    where = f"bbox {list(aoi.bbox)}" if aoi.bbox else f"file {aoi.file}" if aoi.file else f"points {aoi.points}"
    where = f"{len(aoi.cells)} cells" if aoi.cells else where
    if aoi.bbox:
        count = get_grid(recipe.grid.kind, recipe.grid.distance_km).count_in_bbox(*aoi.bbox)
        if count > MAX_CELLS:
            where += f": about {count:,} cells, for `plan`; a build takes at most {MAX_CELLS:,}"
    sources = ", ".join(
        f"{s.name} ({s.kind}, {len(s.bands)} bands @ {s.resolution_m:g} m{_aligned(s)})" for s in recipe.sources
    )
    stages = [f"{stage.name} ({stage.section})" for stage in STAGES if stage_settings(stage, recipe) is not None]
    lines = [
        f"  aoi      {where}",
        f"  grid     {recipe.grid.kind}, {recipe.grid.distance_km:g} km",
        f"  time     {recipe.time.start} → {recipe.time.end}{_slicing(recipe.time.slices)}",
        f"  sources  {sources or 'none: a build writes only the plan of cells'}",
        f"  stages   {', '.join(stages) or 'none after the store'}",
        f"  output   {recipe.output_path} ({', '.join(recipe.outputs.formats)})",
        f"  runner   {recipe.runner.kind}, {recipe.runner.workers} workers",
    ]
    return "\n".join(lines)


def _aligned(source) -> str:
    """How a source aligns to another, for the recipe's summary."""
    if source.align is None:
        return ""
    days = "any date" if source.align.within_days is None else f"≤ {source.align.within_days:g} days"
    return f", on {source.align.to}'s grid, {days}"


def _slicing(slices) -> str:
    """How ``time.slices`` cuts the window, for the summary: ", every season, the best scene"."""
    if slices is None:
        return ""
    every = f"every {slices.days} days" if slices.every == "days" else f"every {slices.every}"
    pick = {"best": "the best scene", "all": "every scene", "k_best": f"the {slices.k} best scenes"}[slices.pick]
    return f", {every}, {pick} of each"


def _print_cells(cells: pd.DataFrame, limit: int = 8, total: int | None = None) -> None:
    total = len(cells) if total is None else total
    if cells.empty:
        out.print("[yellow]no cells: the AOI overlaps no grid cell[/yellow]")
        return
    table = Table("grid_cell", "centre_lat", "centre_lon", "crs", box=None, header_style="bold")
    for row in cells.head(limit).itertuples():
        table.add_row(plain(row.grid_cell), f"{row.centre_lat:.5f}", f"{row.centre_lon:.5f}", plain(row.crs))
    out.print(table)
    if total > limit:
        out.print(f"[dim]… and {total - limit} more[/dim]")


def _print_captions(output: Path | str, first: dict[str, int], limit: int = 3) -> None:
    """A few of the captions just made, as text from the dataset: escaped (OSM names are untrusted); samples of
    the sources ranked first in ``first`` (a source's name → its rank) first."""
    import pandas as pd

    table = Location.of(output) / "captions.parquet"
    rows = pd.read_parquet(table.url, storage_options=table.storage_options, columns=["sample_id", "captions"])
    rank = rows.sample_id.map(lambda text: first.get(SampleId.parse(text).source, len(first)))
    rows = rows.iloc[rank.argsort(kind="stable")]
    shown_rows = 0
    for row in rows.itertuples():
        texts = [c["text"] for c in row.captions if c["text"]]
        if texts and shown_rows < limit:
            out.print(printable(f"{row.sample_id}: {texts[0]}", 400), markup=False, highlight=False, soft_wrap=True)
            shown_rows += 1


def _print_samples(records: list[dict], output: Path | str, limit: int = 8) -> None:
    import pandas as pd

    made = [r for r in records if r["status"] == "ok"]
    if not made:
        return
    table = Table("grid_cell", "source", "product_id", "time", "cloud %", "nodata %", box=None, header_style="bold")
    for r in made[:limit]:
        cloud = "" if pd.isna(r["cloud_cover"]) else f"{r['cloud_cover']:.1f}"
        when = r["timestamp"].strftime("%Y-%m-%d %H:%M")
        nodata = f"{100 * r['nodata']:.1f}"
        table.add_row(*map(plain, (r["grid_cell"], r["source"], r["product_id"], when, cloud, nodata)))
    out.print(table)
    if len(made) > limit:
        out.print(f"[dim]… and {len(made) - limit} more[/dim]")
    if made:
        out.print(
            printable(
                f"open it: eo_etl.open_dataset('{output}', '{made[0]['source']}') (xarray), "
                f"xarray.open_zarr('{output}/pixels.zarr', group='{made[0]['source']}'), "
                f"or the index: geopandas.read_parquet('{output}/index.parquet')"
            ),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


if __name__ == "__main__":
    app()
