"""eo_etl.beam: the README's composition runs on the demo catalogue and writes a dataset ``open_dataset`` reads
with the custom step's columns; the plain functions behind the transforms, without Beam."""

from __future__ import annotations

import re
from pathlib import Path

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zarr
from apache_beam.testing.util import assert_that, equal_to

import eo_etl
from eo_etl import beam as eo_beam
from eo_etl.pipeline.state import BuildState
from eo_etl.recipe import parse_recipe
from eo_etl.sample import OK, Sample, SampleId
from eo_etl.sources.acquire import SourceAcquisition
from eo_etl.stages.core import Output, Stage
from eo_etl.store.index_row import IndexRow
from tests.datasets import place_sample, write_dataset
from tests.test_scale import synthetic_recipe

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Composing the build's steps in Beam\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_composition_writes_a_dataset_with_the_custom_columns(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert 'root = "out/composed"\n' in code
    root = tmp_path / "composed"
    monkeypatch.chdir(ROOT)  # the example's recipe path is the repository's
    exec(compile(code.replace('"out/composed"', repr(str(root))), "README.md", "exec"), {"__name__": "readme"})
    dataset = eo_etl.open_dataset(root, stages=["brightness"])
    index = eo_etl.read_index(root)
    stored = index[index.zarr_index.notna()].sort_values("zarr_index")
    assert len(stored) == dataset.sizes["sample"] > 0
    pixels = zarr.open_array(root / "pixels.zarr", path="s2l2a/pixels", mode="r")[:]
    red = pixels[:, list(dataset.band.values).index("B04")].astype(float)
    want = [r[r != 0].mean() for r in red]  # the custom column, recomputed from what was stored
    np.testing.assert_allclose(dataset["brightness.red_mean"].values.astype(float), want, rtol=1e-6)
    table = pd.read_parquet(root / "brightness.parquet")
    assert list(table.columns) == ["sample_id", "red_mean", "bright"]
    assert sorted(table.sample_id) == sorted(stored.sample_id)  # keyed by the one sample identity
    assert all(SampleId.parse(sid).source == "s2l2a" for sid in table.sample_id)
    assert capsys.readouterr().out.startswith("[")  # the example prints the column


def test_the_plain_functions_plan_acquire_stage_record_write_and_finish_without_beam(tmp_path):
    recipe = eo_etl.load_recipe(ROOT / "pipelines" / "demo.yaml")
    root = tmp_path / "plain"
    ranges = eo_beam.plan_cells(recipe, root)
    cells = [cell for rows in ranges for cell in eo_beam.cells_in_rows(rows, recipe, root)]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(cells) > 0
    version = BuildState(root).open_version(recipe)  # the one plan_cells opened
    assert version == 1 and BuildState(root).open_version(recipe) == 1
    acquisition = SourceAcquisition(recipe, recipe.sources[0])
    try:
        samples = list(eo_beam.acquire_cells(acquisition, cells))
    finally:
        acquisition.close()
    assert [sample.cell for sample in samples] == [cell.name for cell in cells]
    assert eo_beam.stage_samples(samples[::-1], recipe, root, version) == len(cells)  # any order in
    assert [r.grid_cell for r in BuildState(root).records()] == [cell.name for cell in cells]  # plan order out
    positions = eo_beam.write_shards(recipe, root)
    ok = [sample for sample in samples if sample.status == OK]
    assert positions.counts == {"s2l2a": len(ok)} and positions.added == {1: len(ok)}
    assert eo_beam.finish_dataset(recipe, root, positions) == str(root)
    ds = eo_etl.open_dataset(root)
    np.testing.assert_array_equal(ds.pixels.values, np.stack([sample.pixels for sample in ok]))
    rows = [eo_beam.column_row(sample, lambda s: {"cell": s.cell}) for sample in samples]
    assert [row is None for row in rows] == [sample.status != OK for sample in samples]
    eo_beam.write_table(root, "cells", [row for row in rows if row])
    joined = eo_etl.open_dataset(root, stages=["cells"])
    assert list(joined["cells.cell"].values) == [sample.cell for sample in ok]


def test_the_builds_own_transforms_compose_into_the_dataset_eo_etl_build_then_finds_done(tmp_path):
    """build_graph's steps, composed by hand as eo_etl.beam offers them: the same state the build keeps, so a build
    over the result acquires and writes nothing and leaves the same index."""
    recipe = eo_etl.load_recipe(ROOT / "pipelines" / "demo.yaml")
    recipe = recipe.model_copy(update={"labels": None, "captions": None, "curation": None})  # the store only
    root = tmp_path / "own"
    eo_beam.plan_cells(recipe, root)
    version = BuildState(root).open_version(recipe)  # the one plan_cells opened
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        positions = pipeline | eo_beam.AcquirePlan(recipe, root, version)
        written = positions | eo_beam.WriteShardsAt(recipe, root)
        assert_that((positions, written) | eo_beam.FinishAt(recipe, root), equal_to([str(root)]))
    index = eo_etl.read_index(root)
    assert sorted(index.source.unique()) == ["landcover", "s2l2a"] and index.zarr_index.notna().sum() == 24
    report = eo_etl.build(recipe, root)
    m = report.metrics
    assert m["cells already finished"] == m["cells planned"] > 0 and m.get("shards written", 0) == 0
    assert m["shards already written"] > 0 and report.version == version
    pd.testing.assert_frame_equal(eo_etl.read_index(root), index)


def test_stage_samples_refuses_cells_outside_the_plan_and_tables_refuse_bad_names(tmp_path):
    recipe = eo_etl.load_recipe(ROOT / "pipelines" / "demo.yaml")
    eo_beam.plan_cells(recipe, tmp_path)
    with pytest.raises(ValueError, match=r"cell '999U_999R' of s2l2a is not in"):
        outside = IndexRow(sample_id="999U_999R.s2l2a.20190101", grid_cell="999U_999R", grid_row_u=999,
                           grid_col_r=999, source="s2l2a", crs="EPSG:32632", status="ok")  # fmt: skip
        eo_beam.stage_samples([Sample.from_row(outside, np.zeros((1, 2, 2)))], recipe, tmp_path, 1)
    assert not (tmp_path / "_build" / "versions" / "0001" / "samples").exists()  # nothing staged
    with pytest.raises(ValueError, match=r"table name '\.\./up'"):
        eo_beam.write_table(tmp_path, "../up", [])
    with pytest.raises(ValueError, match=r"table name 'Bad'"):
        eo_beam.SampleColumns("Bad", str, tmp_path)
    with pytest.raises(ValueError, match=r"source 'landsat': the recipe has \['s2l2a', 'landcover'\]"):
        eo_beam.AcquireCells(recipe, "landsat")
    with pytest.raises(ValueError, match=r"source 'landcover' is aligned to 's2l2a': acquire it with "):
        eo_beam.AcquireCells(recipe, "landcover")


def test_acquire_cells_with_aligned_sources_cuts_them_on_the_primary_samples(tmp_path):
    """The demo's land cover, aligned to Sentinel-2: acquired after it, in the same call, on each sample's grid."""
    recipe = eo_etl.load_recipe(ROOT / "pipelines" / "demo.yaml")
    ranges = eo_beam.plan_cells(recipe, tmp_path)
    cells = [cell for rows in ranges for cell in eo_beam.cells_in_rows(rows, recipe, tmp_path)]
    s2, landcover = (SourceAcquisition(recipe, source) for source in recipe.sources)
    try:
        samples = list(eo_beam.acquire_cells(s2, cells, [landcover]))
    finally:
        s2.close(), landcover.close()
    assert [(s.source, s.cell) for s in samples] == [(n, c.name) for n in ("s2l2a", "landcover") for c in cells]
    primary = {s.cell: s for s in samples if s.source == "s2l2a"}
    for sample in samples[len(cells) :]:
        assert sample.status == primary[sample.cell].status == OK
        assert (sample.crs, sample.transform) == (primary[sample.cell].crs, primary[sample.cell].transform)
        assert sample.sample_id.start == primary[sample.cell].sample_id.start
    expected = [(str(s.sample_id), s.status, s.transform) for s in samples]
    with beam.Pipeline(runner="DirectRunner") as pipeline:  # the transform, in a pipeline: the same samples
        seen = (
            pipeline
            | beam.Create(cells)
            | eo_beam.AcquireCells(recipe, "s2l2a", aligned=True)
            | beam.Map(lambda s: (str(s.sample_id), s.status, s.transform))
        )
        assert_that(seen, equal_to(expected))


def _brightest_open(settings, recipe):
    def label(items):
        return [Output({"brightest": int(item.pixels.max())}) for item in items]

    return label


# A stage after the store of the test's own (the stage contract of eo_etl.stages), run by StageAfterStore.
BRIGHTEST = Stage(name="brightest", group="labels", section="labels.landcover", open=_brightest_open,
                  columns=pa.schema([pa.field("brightest", pa.int64())]), needs_pixels=True)  # fmt: skip


def test_a_stage_after_the_store_runs_on_a_finished_dataset_in_a_pipeline(tmp_path):
    places = [(-98.0, 38.5), (20.5, 0.5), (10.0, 24.0)]
    root = write_dataset(tmp_path / "ds", [place_sample(k, lon, lat) for k, (lon, lat) in enumerate(places)])
    recipe = parse_recipe({
        "name": "stages", "aoi": {"bbox": [0, 0, 1, 1]}, "time": {"start": "2019-01-01", "end": "2019-12-31"},
        "labels": {"landcover": {"product": "modis-mcd12c1"}},
    })  # fmt: skip
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        _ = pipeline | beam.Create([str(root)]) | eo_beam.StageAfterStore(BRIGHTEST, recipe)
    dataset = eo_etl.open_dataset(root, stages=["brightest"])
    want = [int(place_sample(k, lon, lat).pixels.max()) for k, (lon, lat) in enumerate(places)]
    assert list(dataset["brightest.brightest"].values) == want


def test_samples_staged_by_range_as_the_build_does_are_let_go_once_full_shards_hold_them(tmp_path):
    recipe = synthetic_recipe(tmp_path, [10.0, 45.0, 10.2, 45.2], shard_size=4)  # 9 cells: shards of 4, 4 and 1
    root = tmp_path / "out"
    cells = [cell for rows in eo_beam.plan_cells(recipe, root) for cell in eo_beam.cells_in_rows(rows, recipe, root)]
    version = BuildState(root).open_version(recipe)
    acquisition = SourceAcquisition(recipe, recipe.sources[0])
    try:
        samples = list(eo_beam.acquire_cells(acquisition, cells))
    finally:
        acquisition.close()
    assert eo_beam.stage_samples(samples, recipe, root, version) == len(samples) == 9
    staged = root / "_build" / "versions" / "0001" / "samples" / "sentinel-2-l2a"
    # the build's one format: a file per range of plan rows (one cell each in a plan this small), then its records
    files = {path.stem: np.load(path).files for path in staged.glob("*.npz")}
    ranges = [f"rows-{i:09d}-{i + 1:09d}" for i in range(9)]
    assert sorted(files) == sorted(path.stem for path in staged.glob("*.json")) == ranges
    assert sorted(cell for names in files.values() for cell in names) == sorted(cell.name for cell in cells)
    assert not list(staged.glob("*.npy"))
    positions = eo_beam.write_shards(recipe, root)
    assert len(list(staged.glob("*.npz"))) == 9  # kept until the dataset is finished
    eo_beam.finish_dataset(recipe, root, positions)
    index = eo_etl.read_index(root).sort_values("zarr_index")
    left = [cell for path in staged.glob("*.npz") for cell in np.load(path).files]
    assert left == [index.grid_cell.iloc[-1]]  # the partial shard's alone
    by_cell = {sample.cell: sample.pixels for sample in samples}
    stored = eo_etl.open_dataset(root).pixels.values
    np.testing.assert_array_equal(stored, np.stack([by_cell[cell] for cell in index.grid_cell]))
