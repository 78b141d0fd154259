"""The stage mechanism, run without Beam on small datasets (tests/datasets.py) with the land-cover stage and a
stage of the test's own that reads its table: work is skipped when settings and inputs are unchanged, a changed
setting reruns that stage only, a new version labels its new samples only, and a killed run resumes to the same
table. One test runs a stage's batches through Beam (DirectRunner in memory: the FnApiRunner)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyrosm
import pytest
import zarr

from eo_etl.labels.landcover import STAGE as LANDCOVER
from eo_etl.labels.landcover import LandcoverRaster, mcd12c1_path
from eo_etl.recipe import parse_recipe
from eo_etl.recipe.models import Runner
from eo_etl.stages.core import Output, Stage
from eo_etl.stages.registry import STAGES, find_stages
from eo_etl.stages.run import plan_stage, run_stage
from tests.datasets import place_sample, write_dataset

ROOT = Path(__file__).resolve().parents[1]
# Kansas (grassland and cropland), the Congo basin, the Sahara, the Atlantic: classes that differ
PLACES = [(-98.0, 38.5), (20.5, 0.5), (10.0, 24.0), (-97.4, 38.1), (-30.0, 0.0), (-98.1, 38.6), (21.0, 0.4)]


def recipe(threshold: float = 0.05, mask: bool = True, **labels):
    landcover = {"product": "modis-mcd12c1", "threshold": threshold, "mask": mask}
    return parse_recipe({
        "name": "stages", "aoi": {"bbox": [0, 0, 1, 1]}, "time": {"start": "2019-01-01", "end": "2019-12-31"},
        "labels": {"landcover": landcover, **labels},
    })  # fmt: skip


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "ds", [place_sample(k, lon, lat) for k, (lon, lat) in enumerate(PLACES)])


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stage_writes_one_row_per_stored_sample_and_masks_aligned_with_the_pixels(dataset):
    plan = run_stage(LANDCOVER, recipe(), dataset)
    table = pd.read_parquet(dataset / "landcover.parquet")
    index = pd.read_parquet(dataset / "index.parquet")
    assert table["sample_id"].tolist() == index["sample_id"].tolist()  # keyed by sample_id, in index order
    assert plan.todo == len(PLACES)
    masks = zarr.open_array(dataset / "pixels.zarr" / "s2" / "landcover.class", mode="r")
    raster = LandcoverRaster(mcd12c1_path(), "modis-mcd12c1")
    for row in index.itertuples():
        expected = raster.classes_on(row.crs, list(row.transform), row.height, row.width)
        np.testing.assert_array_equal(masks[row.zarr_index], expected)
        labelled = table.set_index("sample_id").loc[row.sample_id]
        assert labelled.majority_code == np.bincount(expected.ravel()).argmax()


def test_a_rerun_with_nothing_changed_does_no_stage_work_and_rewrites_nothing(dataset):
    run_stage(LANDCOVER, recipe(), dataset)
    before = files_of(dataset)
    plan = run_stage(LANDCOVER, recipe(), dataset)
    assert plan.up_to_date and plan.todo == 0
    assert files_of(dataset) == before


def test_a_changed_setting_reruns_that_stage_only_and_leaves_the_pixels_and_index(dataset, tmp_path):
    run_stage(LANDCOVER, recipe(threshold=0.05), dataset)
    first = pd.read_parquet(dataset / "landcover.parquet")
    pixels_before = files_of(dataset / "pixels.zarr" / "s2" / "pixels")
    index_before = (dataset / "index.parquet").read_bytes()
    assert recipe(threshold=0.05).fingerprint() == recipe(threshold=0.6).fingerprint()  # acquisition: the same
    assert recipe(threshold=0.05).series_fingerprint() == recipe(threshold=0.6).series_fingerprint()
    plan = run_stage(LANDCOVER, recipe(threshold=0.6), dataset)
    assert plan.todo == len(PLACES)  # every sample again: other settings
    second = pd.read_parquet(dataset / "landcover.parquet")
    kansas = first["sample_id"][0]
    assert sorted(first.set_index("sample_id").loc[kansas, "label_codes"]) == [10, 12]  # 0.05: both classes
    assert list(second.set_index("sample_id").loc[kansas, "label_codes"]) == [10]  # 0.6: the larger only
    assert files_of(dataset / "pixels.zarr" / "s2" / "pixels") == pixels_before
    assert (dataset / "index.parquet").read_bytes() == index_before
    fresh = write_dataset(tmp_path / "fresh", [place_sample(k, lon, lat) for k, (lon, lat) in enumerate(PLACES)])
    run_stage(LANDCOVER, recipe(threshold=0.6), fresh)  # the same table as a first run with those settings
    assert pq.read_table(fresh / "landcover.parquet").equals(pq.read_table(dataset / "landcover.parquet"))


def test_turning_the_mask_off_removes_the_stages_mask_arrays(dataset):
    run_stage(LANDCOVER, recipe(mask=True), dataset)
    assert (dataset / "pixels.zarr" / "s2" / "landcover.class").is_dir()
    run_stage(LANDCOVER, recipe(mask=False), dataset)
    assert not (dataset / "pixels.zarr" / "s2" / "landcover.class").exists()


def test_a_new_version_runs_the_stage_on_its_new_samples_only_and_appends_them(dataset):
    run_stage(LANDCOVER, recipe(), dataset)
    first = pd.read_parquet(dataset / "landcover.parquet")
    later = datetime(2020, 1, 1, tzinfo=UTC)
    write_dataset(dataset, [place_sample(k, 10.0 + k / 10, 24.0, window=later) for k in range(10, 13)], version=2)
    plan = run_stage(LANDCOVER, recipe(), dataset)
    assert plan.todo == 3
    table = pd.read_parquet(dataset / "landcover.parquet")
    assert len(table) == len(PLACES) + 3
    assert table[table["sample_id"].isin(first["sample_id"])].reset_index(drop=True).equals(first)
    assert (table[table["sample_id"].str.endswith("20200101")]["majority_code"] == 16).all()  # Sahara
    masks = zarr.open_array(dataset / "pixels.zarr" / "s2" / "landcover.class", mode="r")
    assert masks.shape[0] == len(PLACES) + 3 and (masks[len(PLACES) :] == 16).all()


KILLER = """
import os, signal, sys, dataclasses
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_stages import recipe
from eo_etl.labels.landcover import STAGE
from eo_etl.stages.run import run_stage

calls = []
def open_then_die(settings, recipe):
    label = STAGE.open(settings, recipe)
    def once(items):
        calls.append(1)
        if len(calls) == 3:  # killed in the middle of the third batch: two are recorded
            os.kill(os.getpid(), signal.SIGKILL)
        return label(items)
    return once

run_stage(dataclasses.replace(STAGE, open=open_then_die, batch_size=2), recipe(), Path(sys.argv[1]))
"""


def test_a_killed_stage_run_resumes_from_its_recorded_batches_to_the_same_table(dataset, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, str(script), str(dataset)], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (dataset / "landcover.parquet").exists()
    assert len(list((dataset / "_build" / "stages" / "landcover" / "batches").glob("*.parquet"))) == 2
    resumed = run_stage(dataclasses.replace(LANDCOVER, batch_size=2), recipe(), dataset)
    assert resumed.todo == len(PLACES) - 4  # the two recorded batches are kept
    whole = write_dataset(tmp_path / "whole", [place_sample(k, lon, lat) for k, (lon, lat) in enumerate(PLACES)])
    run_stage(LANDCOVER, recipe(), whole)
    assert pq.read_table(dataset / "landcover.parquet").equals(pq.read_table(whole / "landcover.parquet"))
    masks = [zarr.open_array(d / "pixels.zarr" / "s2" / "landcover.class", mode="r")[:] for d in (dataset, whole)]
    np.testing.assert_array_equal(*masks)


def _reader_open(settings, recipe):
    def label(items):
        outputs = []
        for item in items:
            landcover = item.tables["landcover"]
            outputs.append(Output({"text": None if landcover is None else ", ".join(landcover["labels"])}))
        return outputs

    return label


# A later stage of the test's own: it reads the land-cover table, not the module.
READER = Stage(name="reader", group="captions", section="labels.landcover", open=_reader_open,
               columns=pa.schema([pa.field("text", pa.string())]), reads=("landcover",))  # fmt: skip


def test_a_later_stage_reads_the_earlier_table_and_reruns_only_where_its_rows_changed(dataset):
    run_stage(LANDCOVER, recipe(threshold=0.05), dataset)
    assert run_stage(READER, recipe(threshold=0.05), dataset).todo == len(PLACES)
    text = pd.read_parquet(dataset / "reader.parquet").set_index("sample_id")["text"]
    landcover = pd.read_parquet(dataset / "landcover.parquet").set_index("sample_id")
    assert text.tolist() == [", ".join(labels) for labels in landcover["labels"]]
    run_stage(LANDCOVER, recipe(threshold=0.6), dataset)  # only mixed samples' labels change (Kansas)
    changed = (pd.read_parquet(dataset / "landcover.parquet").set_index("sample_id")["labels"].map(list)
               != landcover["labels"].map(list)).sum()  # fmt: skip
    assert 0 < changed < len(PLACES)
    plan = plan_stage(READER, recipe(threshold=0.05), dataset)  # its own settings unchanged: its inputs did
    assert plan.todo == changed


def test_the_registry_is_one_list_and_stages_are_picked_by_name_or_group():
    assert LANDCOVER in STAGES
    assert find_stages(["labels"]) == [stage for stage in STAGES if stage.group == "labels"]
    assert find_stages(["landcover"]) == [LANDCOVER]
    with pytest.raises(ValueError, match="unknown stage 'lables'; known: .*labels"):
        find_stages(["lables"])


def test_a_stages_batches_run_through_beam_as_in_a_plain_loop(dataset, tmp_path):
    from eo_etl.pipeline.options import pipeline_options
    from eo_etl.pipeline.stages import run_stage_pipeline
    from eo_etl.stages.run import assemble

    plan = plan_stage(LANDCOVER, recipe(), dataset)
    options = pipeline_options(Runner(kind="direct", workers=1), {"direct_running_mode": "in_memory"})  # FnApiRunner
    counters = run_stage_pipeline(LANDCOVER, plan, recipe(), dataset, options)
    assert counters["landcover samples"] == len(PLACES)
    assemble(plan, dataset)
    loop = write_dataset(tmp_path / "loop", [place_sample(k, lon, lat) for k, (lon, lat) in enumerate(PLACES)])
    run_stage(LANDCOVER, recipe(), loop)
    assert pq.read_table(dataset / "landcover.parquet").equals(pq.read_table(loop / "landcover.parquet"))


def test_open_dataset_and_the_torch_dataset_give_a_stages_columns_and_masks_with_the_pixels(dataset):
    import eo_etl
    from eo_etl.store.torch_dataset import SampleDataset

    run_stage(LANDCOVER, recipe(), dataset)
    table = pd.read_parquet(dataset / "landcover.parquet").set_index("sample_id")
    index = pd.read_parquet(dataset / "index.parquet").sort_values("zarr_index")
    opened = eo_etl.open_dataset(str(dataset), stages=["landcover"])
    assert opened["landcover.class"].dims == ("sample", "y", "x")
    assert opened["landcover.majority_code"].values.tolist() == table.loc[index.sample_id, "majority_code"].tolist()
    torch_data = SampleDataset(str(dataset), stages=["landcover"], masks=["landcover.class"])
    item = torch_data[3]
    assert item["landcover"]["majority_name"] == table.loc[item["sample_id"], "majority_name"]
    np.testing.assert_array_equal(item["masks"]["landcover.class"].numpy(), opened["landcover.class"][3].values)
    with pytest.raises(ValueError, match="no osm table"):
        eo_etl.open_dataset(str(dataset), stages=["osm"])
    with pytest.raises(ValueError, match="not a stage name"):
        eo_etl.open_dataset(str(dataset), stages=["../index"])


def test_a_few_batches_run_in_the_direct_runners_own_process_and_many_in_its_workers():
    from apache_beam.options.pipeline_options import DirectOptions

    from eo_etl.pipeline.options import pipeline_options
    from eo_etl.pipeline.stages import _fitted

    options = pipeline_options(Runner(kind="direct", workers=2))
    few, many = _fitted(options, 3).view_as(DirectOptions), _fitted(options, 4).view_as(DirectOptions)
    assert (few.direct_running_mode, few.direct_num_workers) == ("in_memory", 1)
    assert (many.direct_running_mode, many.direct_num_workers) == ("multi_processing", 2)


def test_a_part_of_a_section_that_no_registered_stage_runs_is_reported_not_available():
    from eo_etl.build import _unavailable_parts

    with_osm = recipe(osm={"source": "pbf", "path": pyrosm.get_data("test_pbf")})  # an extract that exists
    [report] = _unavailable_parts(with_osm, "labels", [LANDCOVER])
    assert (report.name, report.status) == ("osm", "not available")
    assert report.detail == "labels.osm is set, but this eo-etl cannot run it yet"
    osm = dataclasses.replace(READER, name="osm", group="labels", section="labels.osm")
    assert _unavailable_parts(with_osm, "labels", [LANDCOVER, osm]) == []
    assert _unavailable_parts(recipe(), "labels", [LANDCOVER]) == []
