"""A recipe setting whose extra is not installed fails validation, and a build, with one line naming the field and
the command, before anything is written. The dev environment has most extras, so most cases point the check at a
module that does not exist (the tests say "fake"); gcsfs and apache-beam[gcp] are really absent here. CI's
tests/install/check_wheel.sh checks every case for real, in a virtual environment with no extra at all."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml

from eo_etl import extras
from eo_etl.build import build
from eo_etl.demo import demo_recipe_path, main, write_demo
from eo_etl.extras import MissingExtras, missing_extras
from eo_etl.recipe import RecipeError, load_recipe, parse_recipe
from tests.test_cli import run
from tests.test_recipe import ROOT, problems_of, recipe_with

GEE = {"kind": "gee", "collection": "COPERNICUS/S2_SR_HARMONIZED", "profile": "sentinel-2-l2a", "bands": ["B04"]}
FAKE = ("eo_etl_fake_missing_module",)


def line(what: str, extra: str) -> str:
    return f'{what} needs the {extra} extra: pip install "eo-etl[{extra}]"'


def setting(field: str, value: str, extra: str) -> str:
    return line(f"{field}: {value!r}", extra)


@pytest.fixture
def really_absent():
    """gcsfs (extra gcs) and apache-beam[gcp] (extra dataflow) are not in the dev environment."""
    assert importlib.util.find_spec("gcsfs") is None, "these tests need a dev environment without gcsfs"
    assert importlib.util.find_spec("apitools") is None, "these tests need a dev environment without apache-beam[gcp]"


@pytest.mark.parametrize(
    ("extra", "change", "field", "value"),
    [
        ("taco", {"outputs": {"formats": ["zarr", "taco"]}}, "outputs.formats", "taco"),
        ("video", {"outputs": {"formats": ["zarr", "video", "taco"]}}, "outputs.formats", "video"),
        ("gee", {"sources": [{"collection": "sentinel-2-l2a", "url": "http://x"}, GEE]}, "sources[1].kind", "gee"),
        ("s3", {"outputs": {"path": "s3://bucket/x"}}, "outputs.path", "s3://bucket/x"),
    ],
)
def test_a_setting_whose_extra_is_missing_is_one_line_naming_field_and_command_fake_missing_module(
    monkeypatch, extra, change, field, value
):
    assert parse_recipe(recipe_with(**change))  # installed here: valid
    monkeypatch.setitem(extras.MODULES, extra, FAKE)
    assert problems_of(recipe_with(**change)) == [setting(field, value, extra)]


def test_gs_paths_and_the_dataflow_runner_need_their_extras_really_absent_here(really_absent):
    change = {"outputs": {"path": "gs://bucket/x"}, "runner": {"kind": "dataflow"}}
    assert problems_of(recipe_with(**change)) == [
        setting("outputs.path", "gs://bucket/x", "gcs"),
        setting("runner.kind", "dataflow", "dataflow"),
    ]


def test_each_extra_the_code_checks_is_an_extra_of_the_package_and_in_all():
    optional = tomllib_extras()
    assert set(extras.MODULES) <= set(optional)
    assert {feature.extra for feature in extras.FEATURES} <= set(extras.MODULES)
    in_all = optional["all"][0].split("[")[1].rstrip("]").split(",")
    # llm-test: the caption tests' server only; local-llm: llama-cpp-python builds from source (no wheel)
    assert set(optional) - {"all", "dev", "llm-test", "local-llm"} == set(in_all)


def tomllib_extras() -> dict[str, list[str]]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_a_build_is_refused_before_it_writes_anything_fake_missing_module(monkeypatch, tmp_path):
    recipe = load_recipe(ROOT / "pipelines" / "demo.yaml")  # zarr, taco, video: all installed here
    monkeypatch.setitem(extras.MODULES, "video", FAKE)
    with pytest.raises(MissingExtras) as caught:
        build(recipe, tmp_path / "demo")
    assert caught.value.problems == [setting("outputs.formats", "video", "video")]
    assert list(tmp_path.iterdir()) == []


def test_a_builds_out_and_runner_are_named_as_the_flags_that_set_them(really_absent):
    recipe = load_recipe(ROOT / "pipelines" / "demo.yaml")
    assert missing_extras(recipe, out="gs://bucket/y", runner="dataflow") == [
        setting("--out", "gs://bucket/y", "gcs"),
        setting("--runner", "dataflow", "dataflow"),
    ]
    assert missing_extras(recipe, out=ROOT / "out" / "demo") == []  # a local folder needs nothing


def test_the_command_line_says_it_in_one_line_and_exit_2_really_absent_extra(really_absent, tmp_path, demo_catalog):
    data = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    for source in data["sources"]:
        source["url"] = str(demo_catalog)  # the copy lives elsewhere: its catalogue by absolute path
    (tmp_path / "gs.yaml").write_text(yaml.safe_dump(data | {"outputs": {"path": "gs://bucket/x"}}))
    result = run("validate", "gs.yaml", cwd=tmp_path)  # plan and build load it the same way
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: gs.yaml: {setting('outputs.path', 'gs://bucket/x', 'gcs')}"]
    result = run("build", str(ROOT / "pipelines" / "demo.yaml"), "--out", "gs://bucket/y", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {setting('--out', 'gs://bucket/y', 'gcs')}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs.yaml"]


def test_demo_writes_the_packaged_recipe_pointing_at_its_catalog(tmp_path):
    recipe_path = write_demo(tmp_path / "here")
    assert recipe_path == tmp_path / "here" / "demo.yaml"
    recipe = load_recipe(recipe_path)
    shipped = yaml.safe_load(demo_recipe_path().read_text())
    assert recipe.sources[0].url == str(tmp_path / "here" / "demo-catalog" / "catalog.json")
    assert (tmp_path / "here" / "demo-catalog" / "catalog.json").is_file()
    assert recipe.output_path == tmp_path / "here" / "demo"
    assert recipe.outputs.formats == shipped["outputs"]["formats"] and recipe.aoi.bbox == shipped["aoi"]["bbox"]


def test_demo_without_its_extra_is_one_line_and_writes_nothing_fake_missing_module(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(extras.MODULES, "demo", FAKE)
    with pytest.raises(MissingExtras, match=r'^eo-etl demo needs the demo extra: pip install "eo-etl\[demo\]"$'):
        write_demo(tmp_path / "demo")
    assert main([str(tmp_path / "catalog")]) == 2
    assert capsys.readouterr().err == 'error: python -m eo_etl.demo needs the demo extra: pip install "eo-etl[demo]"\n'
    assert list(tmp_path.iterdir()) == []


def test_a_demo_recipe_whose_extra_is_missing_is_a_recipe_error_fake_missing_module(monkeypatch, tmp_path):
    monkeypatch.setitem(extras.MODULES, "taco", FAKE)
    with pytest.raises(RecipeError) as caught:
        write_demo(tmp_path / "demo")
    assert caught.value.problems == [setting("outputs.formats", "taco", "taco")]
    assert list(tmp_path.iterdir()) == []


def test_the_torch_reader_names_its_extra_when_torch_is_missing_fake_missing_module():
    script = "import sys; sys.modules['torch'] = None; import eo_etl.store.torch_dataset"  # None: not importable
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"eo_etl.extras.MissingExtras: {line('eo_etl.store.torch_dataset', 'torch')}"
