"""Malformed recipes as an untrusted user writes them: each one is refused by `validate` and `build` with exit
code 2 and exactly one line on stderr that names the field, no traceback, nothing written anywhere, in
seconds. Names never become paths outside the dataset, recipe text never becomes terminal markup or control
sequences, and every size a recipe sets has a bound.

The table runs the real `eo-etl` command in this process (typer's CliRunner: the same code as the console
script, without a Python start-up per case); a few cases also run as a real subprocess."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from eo_etl.cli import app, error_line, safe
from eo_etl.recipe import RecipeError, parse_recipe
from eo_etl.recipe.models import IDENTIFIER
from eo_etl.text import printable
from tests.test_cli import EO_ETL

S2 = {"name": "s2", "kind": "stac", "url": "http://127.0.0.1:9", "collection": "sentinel-2-l2a", "bands": ["B04"]}
BASE = {
    "name": "fuzz",
    "aoi": {"bbox": [14.0, 40.5, 14.5, 41.0]},
    "time": {"start": "2023-06-01", "end": "2023-06-30"},
    "sources": [S2],
    "outputs": {"path": "dataset"},
}


def source(**changes) -> dict:
    return {"sources": [{**S2, **changes}]}


CPUS = os.cpu_count() or 1
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL"]

# (id, change to BASE or the recipe's raw bytes, what the one line says after "bad.yaml: ")
CASES = [
    # names that would become paths outside the dataset
    ("source-name-climbs-out", source(name="../../../escape"), "sources[0].name: '../../../escape' is not a name"),
    ("source-name-absolute", source(name="/tmp/escape"), "sources[0].name: '/tmp/escape' is not a name"),
    ("source-name-with-slash", source(name="a/b"), "sources[0].name: 'a/b' is not a name"),
    ("source-name-dot", source(name=".."), "sources[0].name: '..' is not a name"),
    ("source-name-hidden", source(name=".zarr"), "sources[0].name: '.zarr' is not a name"),
    ("source-name-empty", source(name=""), "sources[0].name: '' is not a name"),
    ("source-name-upper", source(name="S2"), "sources[0].name: 'S2' is not a name"),
    ("source-name-too-long", source(name="a" * 65), "sources[0].name: 'aaaa"),
    ("source-name-number", source(name=5), "sources[0].name: input should be a valid string (got 5)"),
    ("recipe-name-climbs-out", {"name": "../x"}, "name: '../x' is not a name"),
    ("recipe-name-space", {"name": "My Set"}, "name: 'My Set' is not a name"),
    ("recipe-name-empty", {"name": ""}, "name: '' is not a name"),
    ("recipe-name-list", {"name": ["a"]}, "name: input should be a valid string"),
    ("duplicate-source-names", {"sources": [S2, S2]}, "sources: duplicate name 's2'"),
    # recipe text is not Rich markup, nor terminal control
    ("markup-in-name", {"name": "[/red]"}, "name: '[/red]' is not a name"),
    ("markup-in-band", source(bands=["[/red]"]), "sources[0].bands: unknown band '[/red]' for sentinel-2-l2a"),
    (
        "markup-in-collection",
        source(collection="[bold]x[/bold]"),
        "sources[0].collection: no profile for collection '[bold]x[/bold]'",
    ),
    ("markup-in-unknown-field", {"[/red]": 1}, "recipe: unknown field '[/red]'; allowed: name"),
    (
        "bracketed-hint",
        {"aoi": {"bbox": [14.0, 41.0, 14.5, 40.5]}},
        "aoi.bbox: south (41.0) must be below north (40.5); expected [west, south, east, north]",
    ),
    ("escape-sequence-in-band", source(bands=["\x1b[31mred"]), "sources[0].bands: unknown band '\\x1b[31mred'"),
    ("newline-in-name", {"name": "a\nb"}, "name: 'a\\nb' is not a name"),
    ("bidi-override-in-name", {"name": "a\u202eb"}, "name: 'a\\u202eb' is not a name"),
    # echoed values are cut short
    (
        "huge-collection",
        source(collection="x" * 5_000_000),
        "sources[0].collection: string should have at most 1024 characters (got 'xxx",
    ),
    (
        "huge-unknown-value",
        {"outputs": {"path": "s4://" + "y" * 1_000_000}},
        "outputs.path: string should have at most 4096",
    ),
    (
        "huge-time",
        {"time": {"start": "2023-06-01", "end": "z" * 1_000_000}},
        "time.end: expected a date (2023-06-01) or a datetime (2023-06-01T10:00:00Z), got 'zzz",
    ),
    # output folders
    ("output-in-proc", {"outputs": {"path": "/proc/eo-etl"}}, "outputs.path: /proc/eo-etl is in /proc, not on a disk"),
    ("output-is-a-file", {"outputs": {"path": "a-file"}}, "outputs.path: {tmp}/a-file is a file, not a folder"),
    (
        "output-under-a-file",
        {"outputs": {"path": "a-file/x"}},
        "outputs.path: {tmp}/a-file/x is under the file {tmp}/a-file",
    ),
    (
        "output-unknown-protocol",
        {"outputs": {"path": "s4://bucket/x"}},
        "outputs.path: 's4://bucket/x': unknown protocol 's4'",
    ),
    # local catalogues, checked like aoi.file
    (
        "catalog-missing",
        source(kind="local", url="nowhere/catalog.json"),
        "sources[0].url: no such file: {tmp}/nowhere/catalog.json",
    ),
    (
        "catalog-is-a-folder",
        source(kind="local", url="a-folder"),
        "sources[0].url: {tmp}/a-folder is a folder, not a file",
    ),
    (
        "catalog-is-etc-passwd",
        source(kind="local", url="/etc/passwd"),
        "sources[0].url: /etc/passwd is not a STAC catalog",
    ),
    (
        "catalog-is-an-item",
        source(kind="local", url="item.json"),
        "sources[0].url: {tmp}/item.json is not a STAC catalog: its JSON has no type Catalog",
    ),
    ("aoi-file-missing", {"aoi": {"file": "missing.gpkg"}}, "aoi.file: no such file: missing.gpkg"),
    ("aoi-file-is-a-device", {"aoi": {"file": "/dev/zero"}}, "aoi.file: /dev/zero is not a regular file"),
    ("aoi-file-is-a-folder", {"aoi": {"file": "a-folder"}}, "aoi.file: a-folder is a folder, not a file"),
    # the file itself
    ("not-utf8", b"name: fuzz\ndescription: caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"),
    ("not-yaml", b"name: x\naoi: {bbox: [1, 2\n", "line 3, column 1: not valid YAML"),
    ("a-list", b"- a\n- b\n", "a recipe is a YAML mapping of fields"),
    ("empty-file", b"", "a recipe is a YAML mapping of fields"),
    ("too-big", b"name: x\n" + b"#" * (17 << 20), "the recipe is larger than 16 MB"),
    # time
    (
        "end-before-start",
        {"time": {"start": "2023-06-30", "end": "2023-06-01"}},
        "time: empty time range: end (2023-06-01) is before start (2023-06-30)",
    ),
    (
        "exact-end-is-start",
        {"time": {"start": "2023-06-01T10:00:00Z", "end": "2023-06-01T10:00:00Z"}},
        "time: empty time range: end (2023-06-01 10:00:00+00:00) is start",
    ),
    (
        "end-day-over-at-start",
        {"time": {"start": "2023-06-02T00:00:00Z", "end": "2023-06-01"}},
        "time: empty time range: end (2023-06-01, the whole day) is over when start",
    ),
    ("start-not-a-date", {"time": {"start": "June", "end": "2023-06-01"}}, "time.start: expected a date (2023-06-01)"),
    ("time-a-string", {"time": "2023"}, "time: input should be a valid dictionary"),
    ("time-end-missing", {"time": {"start": "2023-06-01"}}, "time.end: required field is missing"),
    # sizes
    ("patch-200000", source(patch_size=200000), "sources[0].patch_size: input should be less than or equal to 4096"),
    ("patch-0", source(patch_size=0), "sources[0].patch_size: input should be greater than 0"),
    (
        "patch-from-fine-resolution",
        source(resolution_m=0.001),
        "sources[0].resolution_m: 0.001 m makes 10680000 px patches",
    ),
    ("workers-100000", {"runner": {"workers": 100000}}, "runner.workers: input should be less than or equal to 4096"),
    ("workers-0", {"runner": {"workers": 0}}, "runner.workers: input should be greater than or equal to 1"),
    (
        "direct-workers-beyond-cpus",
        {"runner": {"workers": 4 * CPUS + 1}},
        f"runner.workers: {4 * CPUS + 1} processes for the direct runner on a machine with {CPUS} CPUs",
    ),
    ("threads-100000", {"runner": {"threads": 100000}}, "runner.threads: input should be less than or equal to 256"),
    (
        "shard-size-100000",
        {"outputs": {"shard_size": 100000}},
        "outputs.shard_size: input should be less than or equal to 4096",
    ),
    (
        "shard-over-memory",
        {**source(patch_size=4096, bands=BANDS), "outputs": {"shard_size": 64}},
        "outputs.shard_size: a shard of 64 samples of s2 (13 bands, 4096 px) holds up to 52 GiB in memory; at most 8",
    ),
    ("max-cloud-120", source(max_cloud=120), "sources[0].max_cloud: input should be less than or equal to 100"),
    ("max-cloud-negative", source(max_cloud=-1), "sources[0].max_cloud: input should be greater than or equal to 0"),
    (
        "limit-concurrency",
        {"runner": {"limits": {"stac": {"concurrency": 100000}}}},
        "runner.limits.stac.concurrency: input should be less than or equal to 4096",
    ),
    (
        "limit-qps-0",
        {"runner": {"limits": {"stac": {"qps": 0}}}},
        "runner.limits.stac.qps: input should be greater than 0",
    ),
    (
        "grid-too-fine",
        {"grid": {"distance_km": 0.0001}},
        "grid.distance_km: input should be greater than or equal to 0.1",
    ),
    (
        "grid-too-coarse",
        {"grid": {"distance_km": 100000}},
        "grid.distance_km: input should be less than or equal to 1000",
    ),
    ("bands-1000", source(bands=["B04"] * 1000), "sources[0].bands: list should have at most 256 items"),
    (
        "sources-65",
        {"sources": [{**S2, "name": f"s{i}"} for i in range(65)]},
        "sources: list should have at most 64 items",
    ),
    (
        "max-tokens",
        {"captions": {"max_tokens": 10**9}},
        "captions.max_tokens: input should be less than or equal to 32768",
    ),
    ("crf-99", {"outputs": {"video": {"crf": 99}}}, "outputs.video.crf: input should be less than or equal to 51"),
    (
        "cloud-fraction-2",
        {"curation": {"quality": {"max_cloud_fraction": 2}}},
        "curation.quality.max_cloud_fraction: input should be less than or equal to 1",
    ),
    ("nul-in-source-name", source(name="a\x00b"), "sources[0].name: 'a\\x00b' is not a name"),
    (
        "processes-by-option",
        {"runner": {"options": {"direct_num_workers": 100000}}},
        f"runner.options: direct_num_workers 100000: at most {4 * CPUS} processes here (4 per CPU)",
    ),
    (
        "options-300",
        {"runner": {"options": {f"o{i}": i for i in range(300)}}},
        "runner.options: dictionary should have at most 256 items",
    ),
    # the rest of what a new user gets wrong
    ("layer-without-file", {"aoi": {"bbox": [14.0, 40.5, 14.5, 41.0], "layer": "x"}}, "aoi: layer is only for file"),
    ("bbox-three-numbers", {"aoi": {"bbox": [14.0, 40.5, 14.5]}}, "aoi.bbox: list should have at least 4 items"),
    (
        "bbox-longitude-190",
        {"aoi": {"bbox": [14.0, 40.5, 190, 41.0]}},
        "aoi.bbox: longitudes must be within [-180, 180]",
    ),
    ("bbox-a-string", {"aoi": {"bbox": "14,40,15,41"}}, "aoi.bbox: input should be a valid list"),
    (
        "aoi-two-kinds",
        {"aoi": {"bbox": [14.0, 40.5, 14.5, 41.0], "cells": ["454U_120R"]}},
        "aoi: give exactly one of bbox, file, cells or points",
    ),
    ("bad-cell", {"aoi": {"cells": ["0D_3R"]}}, "aoi.cells[0]: '0D_3R' is not a cell name"),
    ("unknown-grid", {"grid": {"kind": "h3"}}, "grid.kind: unknown grid 'h3'; allowed: majortom"),
    (
        "unknown-kind",
        source(kind="ftp"),
        "sources[0].kind: input should be 'stac', 'gee', 'local' or 'synthetic' (got 'ftp')",
    ),
    ("sources-not-a-list", {"sources": "s2"}, "sources: input should be a valid list"),
    ("unknown-field", {"extra": 1}, "recipe: unknown field 'extra'; allowed: name, description, aoi"),
    ("repo-id", {"publish": {"repo_id": "no-slash"}}, "publish.repo_id: string should match pattern"),
    (
        "runner-kind",
        {"runner": {"kind": "local"}},
        "runner.kind: input should be 'direct', 'dataflow', 'spark' or 'flink'",
    ),
]
BUILT_TOO = {  # a representative subset also goes through `build`, which must fail the same way before any work
    "source-name-climbs-out", "source-name-absolute", "recipe-name-climbs-out", "markup-in-band", "bracketed-hint",
    "huge-collection", "output-in-proc", "output-under-a-file", "catalog-is-etc-passwd", "not-utf8",
    "end-before-start", "patch-200000", "workers-100000", "shard-over-memory",
}  # fmt: skip


def test_the_table_is_at_least_sixty_distinct_cases():
    assert len(CASES) >= 60 and len({case[0] for case in CASES}) == len(CASES)
    assert {case[0] for case in CASES} >= BUILT_TOO


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A folder to run in, with the things recipes point at that are not what they should be."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_text("not a folder")
    (work / "a-folder").mkdir()
    (work / "item.json").write_text('{"type": "Feature", "id": "x"}')
    monkeypatch.chdir(work)
    return work


def write_case(work: Path, change: dict | bytes) -> Path:
    recipe = work / "bad.yaml"
    if isinstance(change, bytes):
        recipe.write_bytes(change)
    else:
        text = yaml.dump(copy.deepcopy(BASE) | change, Dumper=yaml.CSafeDumper, allow_unicode=True)  # libyaml: fast
        recipe.write_text(text)
    return recipe


def files_under(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_size for path in folder.rglob("*")}


def check_refused(stderr: str, stdout: str, expected: str, seconds: float) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[:2000]
    assert lines[0].startswith(f"error: bad.yaml: {expected}"), lines[0][:2000]
    assert len(lines[0]) < 2100  # an echoed value is cut short
    assert "\x1b" not in stderr and "Traceback" not in stderr + stdout
    assert seconds < 10


@pytest.mark.parametrize(("case", "change", "expected"), CASES, ids=[case[0] for case in CASES])
def test_a_malformed_recipe_is_refused_in_one_line_naming_the_field(workdir, case, change, expected):
    write_case(workdir, change)
    expected = expected.replace("{tmp}", str(workdir))
    before = files_under(workdir.parent)
    commands = ("validate", "build") if case in BUILT_TOO else ("validate",)
    for command in commands:
        started = time.monotonic()
        result = CliRunner().invoke(app, [command, "bad.yaml"])
        assert result.exit_code == 2, (command, result.output[:2000], result.exception)
        check_refused(result.stderr, result.stdout, expected, time.monotonic() - started)
    assert files_under(workdir.parent) == before  # nothing written, in the folder or beside it
    assert not (workdir.parent.parent / "escape").exists()


CLUSTER = {"runner": {"kind": "spark", "workers": 1000}}  # a cluster kind that needs no extra


@pytest.mark.parametrize(
    ("change", "args", "expected"),
    [
        ({}, ["--out", "a-file/x"], "error: --out: {tmp}/a-file/x is under the file {tmp}/a-file"),
        ({}, ["--out", "/proc/eo-etl"], "error: --out: /proc/eo-etl is in /proc, not on a disk"),
        (CLUSTER, ["--runner", "direct"], "error: --runner direct: runner.workers: 1000 processes for the direct"),
        ({}, ["--option", "direct_num_workers=100000"], "error: direct_num_workers 100000: at most"),
    ],
    ids=["out-under-a-file", "out-in-proc", "cluster-workers-on-direct", "processes-by-option"],
)
def test_a_build_refuses_what_it_alone_can_check_before_any_work(workdir, change, args, expected):
    (workdir / "ok.yaml").write_text(yaml.safe_dump(copy.deepcopy(BASE) | change))
    assert CliRunner().invoke(app, ["validate", "ok.yaml"]).exit_code == 0
    before = files_under(workdir.parent)
    result = CliRunner().invoke(app, ["build", "ok.yaml", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(expected.replace("{tmp}", str(workdir))), result.stderr
    assert files_under(workdir.parent) == before


@pytest.mark.parametrize("case", ["source-name-climbs-out", "markup-in-band", "huge-collection"])
def test_the_installed_command_refuses_them_too(workdir, case):
    _, change, expected = next(c for c in CASES if c[0] == case)
    write_case(workdir, change)
    before = files_under(workdir.parent)
    for command in ("validate", "build"):
        started = time.monotonic()
        result = subprocess.run([EO_ETL, command, "bad.yaml"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        check_refused(result.stderr, result.stdout, expected, time.monotonic() - started)
    assert files_under(workdir.parent) == before


def test_a_world_on_the_1_km_grid_is_a_valid_plan_that_a_build_refuses_before_any_work(workdir):
    (workdir / "world.yaml").write_text(
        yaml.safe_dump(copy.deepcopy(BASE) | {"aoi": {"bbox": [-180, -90, 180, 90]}, "grid": {"distance_km": 1}})
    )
    result = CliRunner().invoke(app, ["validate", "world.yaml"])
    assert result.exit_code == 0, result.output
    assert "about 509,304,205 cells, for `plan`; a build takes at most 6,000,000" in result.stdout
    before = files_under(workdir.parent)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["build", "world.yaml"])
    assert result.exit_code == 2 and time.monotonic() - started < 10
    assert result.stderr == (
        "error: world.yaml: aoi.bbox: the AOI covers about 509,304,205 cells of the 1 km grid; a build takes at "
        "most 6,000,000: split the AOI into several recipes or use a coarser grid\n"
    )
    assert files_under(workdir.parent) == before


def test_validate_says_when_a_recipe_has_no_sources(workdir):
    (workdir / "plan-only.yaml").write_text(yaml.safe_dump(copy.deepcopy(BASE) | {"sources": []}))
    result = CliRunner().invoke(app, ["validate", "plan-only.yaml"])
    assert result.exit_code == 0, result.output
    assert "sources  none: a build writes only the plan of cells" in result.stdout


def test_a_valid_recipe_keeps_brackets_and_markup_in_its_text_as_written(workdir):
    recipe = copy.deepcopy(BASE) | {"outputs": {"path": "out[/red]/[bold]x"}}
    (workdir / "ok.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["validate", "ok.yaml"])
    assert result.exit_code == 0, result.output
    assert "output   out[/red]/[bold]x (zarr)" in result.stdout


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_source_name_is_an_identifier_or_refused_naming_the_field(name):
    data = copy.deepcopy(BASE) | source(name=name)
    try:
        recipe = parse_recipe(data, "r.yaml")
    except RecipeError as error:
        assert len(error.problems) == 1 and error.problems[0].startswith("sources[0].name: ")
        assert not IDENTIFIER.fullmatch(name)
    else:
        assert recipe.sources[0].name == name and IDENTIFIER.fullmatch(name)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_prints_as_written_with_control_characters_escaped(text):
    console = Console(file=io.StringIO(), width=80, color_system=None, emoji=False)  # as the CLI's consoles
    console.print(error_line(text), highlight=False, soft_wrap=True)
    console.print(f"[dim]{safe(text)}[/dim]", highlight=False, soft_wrap=True)  # inside markup
    printed = console.file.getvalue()
    assert printed == f"error: {printable(text)}\n{printable(text)}\n"
    assert printed.count("\n") == 2 and not any(ord(c) < 32 and c != "\n" for c in printed)
