"""The eo-etl command as users run it: exit codes, files written, messages, and no tracebacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr
import yaml
import zarr

from eo_etl.demo import write_demo_catalog
from eo_etl.store.index import INDEX_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
EO_ETL = shutil.which("eo-etl", path=str(Path(sys.executable).parent)) or "eo-etl"


def run(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EO_ETL, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=None if env is None else os.environ | env)  # fmt: skip


def test_validate_accepts_the_demo_and_summarises_it(demo_catalog):
    result = run("validate", "pipelines/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert "valid recipe: demo" in result.stdout
    assert "majortom, 1 km" in result.stdout
    assert "landcover (local, 1 bands @ 10 m, on s2l2a's grid, ≤ 0 days)" in result.stdout


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"aoi": {"bbox": [10, 0, 5, 1]}}, "aoi.bbox"),
        ({"time": {"start": "2023-02-01", "end": "2023-01-01"}}, "time"),
        ({"grid": {"kind": "s2-tiles"}}, "grid.kind"),
        ({"sources": [{"collection": "sentinel-2-l2a", "url": "http://x", "bands": ["B99"]}]}, "sources[0].bands"),
    ],
)
def test_a_bad_recipe_gets_one_line_naming_the_field_and_exit_2(tmp_path, demo_catalog, change, field):
    data = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text()) | change
    for source in data["sources"]:
        source["url"] = str(demo_catalog)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    for command in ("validate", "plan", "build"):
        result = run(command, str(bad), cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"bad.yaml: {field}: " in lines[0], result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_plan_writes_geoparquet_with_the_major_tom_columns(tmp_path, demo_catalog):
    target = tmp_path / "cells.parquet"
    result = run("plan", "pipelines/demo.yaml", "--out", str(target))
    assert result.returncode == 0, result.stderr
    cells = gpd.read_parquet(target)
    assert {"grid_cell", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon", "crs"} <= set(cells.columns)
    assert cells.crs.to_epsg() == 4326 and len(cells) > 0
    assert f"{len(cells)} cells of the 1 km majortom grid" in result.stdout
    # readers that know nothing of geopandas see the same table
    assert pd.read_parquet(target).grid_cell.tolist() == cells.grid_cell.tolist()


def demo_recipe(tmp_path: Path, *, aligned: bool = False, **changes) -> Path:
    """The demo recipe reading a fresh demo catalog in ``tmp_path``, with ``changes`` applied; its Sentinel-2
    source alone unless ``aligned`` (then with the land cover aligned to it too)."""
    data = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    catalog = str(write_demo_catalog(tmp_path / "catalog"))
    data["sources"] = [source | {"url": catalog} for source in data["sources"] if aligned or "align" not in source]
    data["outputs"] = {"path": str(tmp_path / "demo")}
    data |= changes
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "demo.yaml"


def test_build_of_the_demo_writes_plan_index_pixels_and_land_cover_labels_and_says_which_stages_did_not_run(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    recipe = demo_recipe(tmp_path)
    result = run("build", str(recipe), cwd=tmp_path, env={"TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no start-up chatter of Beam's worker processes ("apitools not found", …)
    assert not list(temp.iterdir())  # nor temporary folders left behind
    out = tmp_path / "demo"
    plan, index = pd.read_parquet(out / "plan.parquet"), gpd.read_parquet(out / "index.parquet")
    assert (out / "recipe.json").is_file()
    assert not list(out.rglob("*.partial"))
    assert sorted(index.grid_cell) == sorted(plan.grid_cell)  # every cell has its row, made or not
    made = index[index.status == "ok"]
    assert len(made) > 0 and f"{len(made)} ok" in result.stdout
    assert sorted(made.zarr_index) == list(range(len(made)))  # each stored sample has its own place
    pixels = xr.open_zarr(out / "pixels.zarr", group="s2l2a")
    assert list(pixels.band.values) == ["B02", "B03", "B04", "B08", "B11", "B12", "SCL"]
    assert pixels.pixels.shape == (len(made), 7, 64, 64) and set(pixels.epsg.values) == {32719}
    for row in made.itertuples():
        sample = pixels.pixels[row.zarr_index].values
        assert pixels.sample[row.zarr_index] == row.grid_cell
        assert (sample[0] == 0).mean() == pytest.approx(row.nodata)  # nodata counted, not invented
        assert row.geometry.contains(shapely.Point(row.centre_lon, row.centre_lat))
    assert "captions" in result.stdout and "not configured" in result.stdout
    assert "eo_etl.open_dataset(" in result.stdout
    assert_declared_schema(out / "index.parquet")  # no failures here; every cell failed below: the same schema
    # the demo's land-cover labels (MCD12C1: open shrublands in Patagonia), one row per stored sample
    assert re.search(rf"landcover +done +{len(made)} samples run, 0 kept", result.stdout), result.stdout
    labels = pd.read_parquet(out / "landcover.parquet")
    assert sorted(labels.sample_id) == sorted(made.sample_id) and set(labels.majority_code) == {7}
    assert (pixels.pixels.shape[0], 64, 64) == zarr.open_array(out / "pixels.zarr" / "s2l2a" / "landcover.class").shape
    # a stage alone: up to date; with another setting it reruns, and acquisition and the store are left alone
    alone = run("build", str(recipe), "--stages", "labels", cwd=tmp_path)
    assert alone.returncode == 0 and re.search(r"landcover +up to date", alone.stdout), alone.stdout + alone.stderr
    assert "acquire" not in alone.stdout
    pixel_files = [path for path in (out / "pixels.zarr" / "s2l2a" / "pixels").rglob("*") if path.is_file()]
    before = {path: path.read_bytes() for path in [out / "index.parquet", *pixel_files]}
    data = yaml.safe_load(recipe.read_text())
    data["labels"]["landcover"]["mask"] = False
    recipe.write_text(yaml.safe_dump(data))
    rerun = run("build", str(recipe), "--stages", "landcover", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(rf"landcover +done +{len(made)} samples run", rerun.stdout), rerun.stdout
    assert {path: path.read_bytes() for path in before} == before
    assert not (out / "pixels.zarr" / "s2l2a" / "landcover.class").exists()
    # a whole build with another setting: acquisition and the store find their work done, the labels rerun
    data["labels"]["landcover"]["threshold"] = 0.5
    recipe.write_text(yaml.safe_dump(data))
    rebuilt = run("build", str(recipe), cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"({len(made)} finished before)" in rebuilt.stdout and "0 shards written" in rebuilt.stdout
    assert re.search(rf"landcover +done +{len(made)} samples run", rebuilt.stdout), rebuilt.stdout
    assert {path: path.read_bytes() for path in pixel_files} == {path: before[path] for path in pixel_files}
    unknown = run("build", str(recipe), "--stages", "lables", cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: --stages: unknown stage 'lables'")


def assert_declared_schema(index: Path) -> None:
    """The index has the declared Arrow schema, whatever its rows hold (``reason`` all null, no heights)."""
    schema = pq.read_schema(index)
    assert schema.equals(INDEX_SCHEMA, check_metadata=False), schema
    assert schema.field("reason").type == "string" and schema.field("height").type == "int64"


def test_build_with_no_sources_plans_only(tmp_path):
    result = run("build", str(demo_recipe(tmp_path, sources=[])), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "plan.parquet").is_file()
    assert "acquire" in result.stdout and "the recipe has no sources" in result.stdout


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            {"name": "s2", "collection": "sentinel-2-l2a", "url": "http://127.0.0.1:9", "patch_size": 64},
            "transient: search failed: ConnectionError: http://127.0.0.1:9 cannot be reached (",
        ),
        (
            {"name": "s2", "kind": "gee", "collection": "COPERNICUS/S2_SR_HARMONIZED", "patch_size": 64},
            "Earth Engine unavailable: ",
        ),
    ],
    ids=["dead-stac-api", "earth-engine-without-credentials"],
)
def test_build_with_an_unreachable_source_records_every_cell_as_failed(tmp_path, source, reason):
    runner = {"limits": {"127.0.0.1:9": {"attempts": 2, "backoff_s": 0.01}}}  # a dead port: waiting cannot help
    result = run("build", str(demo_recipe(tmp_path, sources=[source], runner=runner)), cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # every cell failed: a scheduler must see it
    index = pd.read_parquet(tmp_path / "demo" / "index.parquet")
    assert len(index) > 0 and set(index.status) == {"failed"}
    assert index.reason.str.startswith(reason).all()
    assert_declared_schema(tmp_path / "demo" / "index.parquet")


def test_grid_locate_a_single_point():
    result = run("grid", "locate", "--lat", "40.8518", "--lon", "14.2681")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "lat,lon,grid_cell,grid_row_u,grid_col_r",
        "40.8518,14.2681,454U_120R,454,120",
    ]


def test_grid_locate_ends_its_csv_row_before_the_warning_on_a_shared_stream():
    result = subprocess.run([EO_ETL, "grid", "locate", "--lat", "89.99", "--lon", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=60)  # fmt: skip
    assert result.stdout.splitlines() == [
        "lat,lon,grid_cell,grid_row_u,grid_col_r",
        "89.99,0.0,,,",
        "warning: 1 of 1 points are outside the grid (empty cell)",
    ]


def test_grid_locate_a_csv_keeps_the_users_columns_and_flags_points_outside(tmp_path):
    (tmp_path / "points.csv").write_text("id,lat,lon\nnaples,40.8518,14.2681\nsydney,-33.8688,151.2093\npole,89.9,0\n")
    result = run("grid", "locate", "points.csv", "--out", "cells.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "cells.csv", dtype={"grid_row_u": "Int64", "grid_col_r": "Int64"})
    assert table.id.tolist() == ["naples", "sydney", "pole"]
    assert table.grid_cell.tolist()[:2] == ["454U_120R", "378D_1396R"] and pd.isna(table.grid_cell[2])
    assert table.grid_row_u.tolist()[:2] == [454, -378] and table.grid_col_r.tolist()[:2] == [120, 1396]
    assert "1 of 3 points are outside the grid" in result.stderr


def test_grid_locate_a_geoparquet_of_points_at_50km(tmp_path):
    points = gpd.GeoDataFrame({"id": [1]}, geometry=gpd.points_from_xy([0.0], [0.0]), crs=4326)
    points.to_parquet(tmp_path / "points.parquet")
    result = run("grid", "locate", "points.parquet", "--dist", "50", "--out", "out.parquet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    located = gpd.read_parquet(tmp_path / "out.parquet")
    assert located.grid_cell.tolist() == ["1D_1L"] and located.crs.to_epsg() == 4326


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grid", "locate", "missing.csv"], "no such file: missing.csv"),
        (["grid", "locate"], "give a POINTS file, or both --lat and --lon"),
        (["grid", "locate", "--lat", "95", "--lon", "0"], "lat must be within [-90, 90]"),
        (["grid", "locate", "--lat", "1", "--lon", "1", "--grid", "h3"], "unknown grid 'h3'; allowed: majortom"),
        (["grid", "locate", "--lat", "1", "--lon", "1", "--dist", "0"], "grid distance must be 0.1 to 1000 km, got 0"),
        (["grid", "cell", "0D_1R"], "'0D_1R' is not a cell name"),
    ],
)
def test_grid_commands_refuse_bad_input_in_one_line(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_grid_cell_describes_bounds_zone_and_footprint():
    result = run("grid", "cell", "454U_120R")
    assert result.returncode == 0, result.stderr
    assert "EPSG:32633" in result.stdout and "10680 m square" in result.stdout


def test_help_and_version_read_well():
    result = run("--help")
    assert result.returncode == 0
    for command in ("validate", "plan", "build", "grid", "schema"):
        assert command in result.stdout
    assert run("--version").stdout.startswith("eo-etl ")


def test_a_catalogue_item_that_cannot_be_read_is_skipped_reported_once_and_the_others_build(tmp_path):
    recipe = demo_recipe(tmp_path)
    collection = tmp_path / "catalog" / "sentinel-2-l2a" / "collection.json"
    data = json.loads(collection.read_text())
    data["links"].append({"rel": "item", "href": "./broken/broken.json", "type": "application/geo+json"})
    collection.write_text(json.dumps(data))
    broken = collection.parent / "broken" / "broken.json"
    broken.parent.mkdir()
    broken.write_text('{"type": "Feature", "stac_version": "1.1.0", "id": "bro')  # cut short
    result = run("build", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    index = pd.read_parquet(tmp_path / "demo" / "index.parquet")
    assert len(index) == 12 and set(index.status) == {"ok"}  # the good item covers every cell
    warnings = [line for line in result.stderr.splitlines() if str(broken) in line]
    assert len(warnings) == 1 and "catalogue item skipped" in warnings[0] and "JSONDecodeError" in warnings[0]
    assert "1 catalogue items skipped" in result.stdout and str(broken) not in result.stdout
    assert "Traceback" not in result.stderr
