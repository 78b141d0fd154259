"""Recipes: valid ones resolve their defaults; invalid ones fail with one line naming the field."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from eo_etl.recipe import RecipeError, load_recipe, parse_recipe
from eo_etl.schemas import stale_schemas

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "test-set",
    "aoi": {"bbox": [14.0, 40.5, 14.5, 41.0]},
    "time": {"start": "2023-06-01", "end": "2023-06-30"},
    "sources": [{"collection": "sentinel-2-l2a", "url": "http://127.0.0.1:8080", "bands": ["B04", "B08"]}],
}


def recipe_with(**changes):
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def problems_of(data) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data, "r.yaml")
    return caught.value.problems


def test_defaults_are_resolved_from_the_profile_and_the_grid():
    recipe = parse_recipe(recipe_with(sources=[{"collection": "sentinel-2-l2a", "url": "http://x"}]))
    source = recipe.sources[0]
    assert source.name == "sentinel-2-l2a" and source.profile == "sentinel-2-l2a"
    assert source.bands[:3] == ["B01", "B02", "B03"] and "SCL" not in source.bands
    assert source.resolution_m == 10 and source.patch_size == 1068  # Major TOM Core's 1068 px at 10 m
    assert recipe.grid.kind == "majortom" and recipe.grid.distance_km == 10
    assert recipe.output_path == Path("out/test-set")


def test_a_collection_alias_or_an_explicit_profile_selects_the_profile():
    alias = parse_recipe(recipe_with(sources=[{"collection": "sentinel-2-c1-l2a", "url": "http://x"}]))
    assert alias.sources[0].profile == "sentinel-2-l2a"
    custom = parse_recipe(
        recipe_with(sources=[{"collection": "my-s2", "profile": "sentinel-2-l1c", "url": "http://x", "bands": ["B10"]}])
    )
    assert custom.sources[0].profile == "sentinel-2-l1c" and custom.sources[0].name == "my-s2"
    landsat = parse_recipe(recipe_with(sources=[{"collection": "landsat-c2-l2", "url": "http://x"}]))
    assert landsat.sources[0].resolution_m == 30 and landsat.sources[0].patch_size == 356


def test_time_range_dates_include_both_days_and_datetimes_are_exact():
    utc = UTC
    one_day = parse_recipe(recipe_with(time={"start": "2023-06-01", "end": "2023-06-01"}))
    assert one_day.time.start_utc == datetime(2023, 6, 1, tzinfo=utc)
    assert one_day.time.end_exclusive_utc == datetime(2023, 6, 2, tzinfo=utc)
    exact = parse_recipe(recipe_with(time={"start": "2023-06-01T10:00:00Z", "end": "2023-06-01T13:00:00+02:00"}))
    assert exact.time.end_exclusive_utc == datetime(2023, 6, 1, 11, tzinfo=utc)
    naive = parse_recipe(recipe_with(time={"start": "2023-06-01T10:00:00", "end": "2023-06-02"}))
    assert naive.time.start_utc == datetime(2023, 6, 1, 10, tzinfo=utc)
    # 12:00+02:00 is 10:00Z: nothing lies between start and end
    empty = recipe_with(time={"start": "2023-06-01T10:00:00Z", "end": "2023-06-01T12:00:00+02:00"})
    assert problems_of(empty)[0].startswith("time: empty time range")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"sources": [{"collection": "sentinel-2-l2a", "url": "http://x", "bands": ["B04", "B99"]}]},
            "sources[0].bands: unknown band 'B99' for sentinel-2-l2a; allowed: B01, B02",
        ),
        (
            {"aoi": {"bbox": [15.0, 40.5, 14.0, 41.0]}},
            "aoi.bbox: west (15.0) is east of east (14.0) but the box does not cross the antimeridian",
        ),
        ({"aoi": {"bbox": [14.0, 41.0, 14.5, 40.5]}}, "aoi.bbox: south (41.0) must be below north (40.5)"),
        ({"aoi": {"bbox": [14.0, 40.5, 190.0, 41.0]}}, "aoi.bbox: longitudes must be within [-180, 180]"),
        ({"aoi": {"bbox": [14.0, 40.5, 14.5]}}, "aoi.bbox: list should have at least 4 items"),
        ({"time": {"start": "2023-06-30", "end": "2023-06-01"}}, "time: empty time range: end (2023-06-01)"),
        ({"time": {"start": "2023-06-01", "end": "June"}}, "time.end: expected a date (2023-06-01)"),
        ({"grid": {"kind": "h3"}}, "grid.kind: unknown grid 'h3'; allowed: majortom"),
        ({"grid": {"distance_km": -5}}, "grid.distance_km: input should be greater than or equal to 0.1"),
        ({"grid": {"knd": "majortom"}}, "grid: unknown field 'knd'; allowed: kind, distance_km"),
        ({"aoi": {"cells": ["454U_120R", "0D_3R"]}}, "aoi.cells[1]: '0D_3R' is not a cell name"),
        ({"aoi": {"cells": ["454U_99999R"]}}, "aoi.cells[0]: '454U_99999R' is not in the 10 km grid"),
        ({"aoi": {"bbox": [14.0, 40.5, 14.5, 41.0], "cells": ["454U_120R"]}}, "aoi: give exactly one of bbox, file"),
        ({"aoi": {"file": "missing.gpkg"}}, "aoi.file: no such file: missing.gpkg"),
        (
            {"sources": [{"collection": "sentinel-5p", "url": "http://x"}]},
            "sources[0].collection: no profile for collection 'sentinel-5p'; set profile: to one of cop-dem-glo-30",
        ),
        (
            {"sources": [{"collection": "x", "profile": "modis", "url": "http://x"}]},
            "sources[0].profile: unknown profile 'modis'; allowed: cop-dem-glo-30",
        ),
        ({"sources": [{"collection": "sentinel-2-l2a"}]}, "sources[0]: url is required for a stac source"),
        (
            {"sources": [{"collection": "sentinel-2-l2a", "kind": "ftp", "url": "x"}]},
            "sources[0].kind: input should be 'stac', 'gee', 'local' or 'synthetic' (got 'ftp')",
        ),
        (
            {"sources": [{"collection": "sentinel-2-l2a", "url": "http://x", "max_cloud": 120}]},
            "sources[0].max_cloud: input should be less than or equal to 100 (got 120)",
        ),
        ({"captions": {"kind": "llm"}}, "captions: url and model are required when kind is llm"),
        (
            {"outputs": {"formats": ["hdf5"]}},
            "outputs.formats[0]: input should be 'zarr', 'taco', 'video' or 'majortom'",
        ),
        ({"outputs": {"formats": ["taco"]}}, "outputs.formats: zarr is the dataset's pixel store: list it too"),
        ({"outputs": {"video": {"crf": 60}}}, "outputs.video.crf: input should be less than or equal to 51"),
        (
            {"outputs": {"video": {"lossy": True, "target_psnr_db": 95}}},
            "outputs.video.target_psnr_db: input should be less than or equal to 80",
        ),
        ({"outputs": {"video": {"target_psnr_db": 56}}}, "outputs.video: target_psnr_db: set `lossy: true` too"),
        ({"publish": {"repo_id": "no-slash"}}, "publish.repo_id: string should match pattern"),
        ({"runner": {"kind": "local"}}, "runner.kind: input should be 'direct', 'dataflow', 'spark' or 'flink'"),
        ({"name": "My Set"}, "name: 'My Set' is not a name: 1 to 64 of a-z, 0-9, _ and -"),
        ({"extra": 1}, "recipe: unknown field 'extra'; allowed: name, description, aoi"),
    ],
)
def test_invalid_recipes_name_the_field_and_what_is_allowed(change, expected):
    problems = problems_of(recipe_with(**change))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_missing_required_fields_are_each_named():
    data = recipe_with()
    del data["time"], data["aoi"]
    assert sorted(problems_of(data)) == ["aoi: required field is missing", "time: required field is missing"]


def test_two_sources_need_distinct_names():
    twice = {"collection": "sentinel-2-l2a", "url": "http://x"}
    assert problems_of(recipe_with(sources=[twice, twice])) == [
        "sources: duplicate name 'sentinel-2-l2a'; give each source a distinct name"
    ]


def test_yaml_errors_and_non_mappings_are_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\naoi: {bbox: [1, 2\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(broken)
    assert len(caught.value.problems) == 1 and "not valid YAML" in caught.value.problems[0]
    assert "line 3" in caught.value.problems[0]
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping"):
        load_recipe(listing)
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(tmp_path / "absent.yaml")


def test_aoi_file_is_relative_to_the_recipe_and_counts_by_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "area.geojson").write_text(
            '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},'
            ' "geometry": {"type": "Point", "coordinates": [14.2681, 40.8518]}}]}'
        )
        (tmp_path / folder / "r.yaml").write_text(yaml.safe_dump(recipe_with(aoi={"file": "area.geojson"})))
    first, second = load_recipe(tmp_path / "a" / "r.yaml"), load_recipe(tmp_path / "b" / "r.yaml")
    assert first.aoi.file == tmp_path / "a" / "area.geojson"
    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint() != parse_recipe(recipe_with()).fingerprint()


def test_every_recipe_in_pipelines_is_valid(demo_catalog):
    recipes = sorted((ROOT / "pipelines").glob("*.yaml"))
    assert any(path.name == "demo.yaml" for path in recipes)
    for path in recipes:
        assert load_recipe(path).name == path.stem


def test_the_json_schemas_in_schemas_recipe_and_index_are_current():
    stale = stale_schemas(ROOT / "schemas")
    assert not stale, f"regenerate with `eo-etl schema`: {stale}"
