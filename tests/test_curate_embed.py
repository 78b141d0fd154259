"""The embeddings stage on real Sentinel-2 pixels (tests/imagery.py), EfficientNet-Lite0 on the CPU: Major TOM's
fragment rule, deterministic vectors, Major TOM's GeoParquet layout, and a killed run that resumes from its
finished batches. Samples are tiny (32-64 px) to keep the CPU model fast; torch runs one thread here because
the test machine's cores are shared (more threads only contend)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import torch

from eo_etl.curate.embed import MAJORTOM_COLUMNS, STAGE, fragment_boxes, fragment_starts, write_fragments
from eo_etl.stages.core import Item
from eo_etl.stages.run import run_stage
from tests.datasets import write_dataset
from tests.imagery import sentinel2_samples
from tests.test_curate_quality import curation_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def majortom_starts(n: int, f: int, overlap: float) -> list[int]:
    """Major TOM's fragment_fn, transcribed: torch's unfold at the feasible stride, last row shifted."""
    if n == f:  # their "scenario 2": the sample is one fragment
        return [0]
    steps = max(1, int(np.round((n - f) / (f - overlap * f))))
    feasible = int(np.ceil(f - (n - f) / steps))
    unfolded = torch.nn.functional.unfold(torch.arange(n, dtype=torch.float32).view(1, 1, n, 1), (f, 1),
                                          stride=(f - feasible, 1))  # fmt: skip
    starts = unfolded[0, 0, :].long().tolist()[: steps + 1]  # their view(1 + steps, …)
    if n > f + steps * (f - feasible):
        starts[-1] = n - f
    return starts


def test_the_fragment_grid_is_major_toms_rule_for_1068_px_samples():
    assert fragment_starts(1068, 224, 0.1) == [0, 211, 422, 633, 844] == majortom_starts(1068, 224, 0.1)
    boxes = fragment_boxes(1068, 1068, 224, 0.1)
    assert len(boxes) == 25 and boxes[1] == (211, 0, 435, 224) and boxes[-1] == (844, 844, 1068, 1068)
    for n in (1001, 1068, 500, 300, 224):  # 1001: the last fragment is shifted to the border
        assert fragment_starts(n, 224, 0.1) == majortom_starts(n, 224, 0.1), n
    assert fragment_starts(1001, 224, 0.1)[-2:] == [582, 777]
    assert fragment_boxes(100, 100, 224, 0.1) == [(0, 0, 100, 100)]  # smaller than a fragment: one, whole


def test_embeddings_are_deterministic_on_the_cpu_and_tell_places_apart():
    recipe = curation_recipe(embed={"fragment_size": 32})  # 4 fragments a sample
    samples = sentinel2_samples(3)
    items = [Item(s.cell, s.record() | {"nodata_value": 0.0}, pixels=s.pixels) for s in samples]
    first = STAGE.open(recipe.curation.embed, recipe)(items)
    again = STAGE.open(recipe.curation.embed, recipe)(items)
    vectors = np.array([o.row["embeddings"] for o in first], dtype=np.float32)  # (sample, fragment, 1280)
    assert vectors.shape == (3, 4, 1280)
    np.testing.assert_array_equal(vectors, np.array([o.row["embeddings"] for o in again], dtype=np.float32))
    pooled = np.array([o.row["embedding"] for o in first])
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1, rtol=1e-5)
    assert (vectors > 0).any(axis=2).all()  # every fragment has features (ReLU6: sparse, never all zero)
    assert not np.allclose(pooled[0], pooled[1]) and not np.allclose(pooled[1], pooled[2])


def test_the_fragments_geoparquet_reads_back_with_major_toms_columns_and_types(tmp_path):
    root = write_dataset(tmp_path / "ds", sentinel2_samples(2))
    run_stage(STAGE, curation_recipe(embed={"fragment_size": 32}), root)
    frame = gpd.read_parquet(write_fragments(root))
    assert list(frame.columns) == MAJORTOM_COLUMNS and len(frame) == 2 * 4
    assert frame.crs.to_epsg() == 4326
    types = {name: str(t) for name, t in frame.dtypes.items()}
    assert {types[c] for c in ("grid_row_u", "grid_col_r")} == {"int16"}
    assert {types[c] for c in ("centre_lat", "centre_lon")} == {"float32"}
    assert frame["unique_id"].is_unique and frame["utm_crs"].eq("EPSG:32719").all()
    assert len(frame["embedding"].iloc[0]) == 1280 and list(frame["pixel_bbox"].iloc[1]) == [32, 0, 64, 32]
    index = gpd.read_parquet(root / "index.parquet")
    for row in frame.itertuples():  # each fragment lies in its sample's footprint, a quarter of it
        footprint = index.loc[index["grid_cell"] == row.grid_cell, "geometry"].iloc[0]
        assert footprint.buffer(1e-6).contains(row.geometry)
        assert row.geometry.area == pytest.approx(footprint.area / 4, rel=0.01)
        utm = shapely.from_wkt(row.utm_footprint)
        assert utm.area == pytest.approx(320 * 320)  # 32 px of 10 m


KILLER = """
import os, signal, sys, dataclasses
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from tests.test_curate_quality import curation_recipe
from eo_etl.curate.embed import STAGE
from eo_etl.stages.run import run_stage

calls = []
def open_then_die(settings, recipe):
    embed = STAGE.open(settings, recipe)
    def once(items):
        calls.append(1)
        if len(calls) == 3:  # killed in the middle of the third batch: two are recorded
            os.kill(os.getpid(), signal.SIGKILL)
        return embed(items)
    return once

run_stage(dataclasses.replace(STAGE, open=open_then_die, batch_size=2), curation_recipe(embed={{}}), Path(sys.argv[1]))
"""


def test_a_killed_embedding_run_resumes_without_recomputing_finished_batches(tmp_path):
    samples = sentinel2_samples(7)
    root = write_dataset(tmp_path / "ds", samples)
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, str(script), str(root)], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((root / "_build" / "stages" / "embed" / "batches").glob("*.parquet"))) == 2
    embedded = []

    def counting(settings, recipe):
        embed = STAGE.open(settings, recipe)
        return lambda items: (embedded.extend(item.sample_id for item in items), embed(items))[1]

    resumed = run_stage(dataclasses.replace(STAGE, open=counting, batch_size=2), curation_recipe(embed={}), root)
    assert resumed.todo == 3 and len(embedded) == 3  # the four finished samples are not embedded again
    index = pd.read_parquet(root / "index.parquet")
    assert sorted(embedded) == sorted(index["sample_id"].iloc[4:])
    whole = write_dataset(tmp_path / "whole", samples)  # the same batches (batching changes the last bits)
    run_stage(dataclasses.replace(STAGE, batch_size=2), curation_recipe(embed={}), whole)
    assert pq.read_table(root / "embed.parquet").equals(pq.read_table(whole / "embed.parquet"))


def test_a_local_torchscript_encoder_plugs_in_behind_the_same_interface(tmp_path):
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "tiny.pt"
    torch.jit.script(encoder).save(str(path))
    recipe = curation_recipe(embed={"model": str(path), "fragment_size": 32})
    samples = sentinel2_samples(2)
    items = [Item(s.cell, s.record() | {"nodata_value": 0.0}, pixels=s.pixels) for s in samples]
    outputs = STAGE.open(recipe.curation.embed, recipe)(items)
    assert outputs[0].row["model"] == "tiny.pt" and np.array(outputs[0].row["embeddings"]).shape == (4, 8)
    with pytest.raises(ValueError, match="curation.embed.model: 'nowhere.pt' is neither efficientnet-lite0 nor"):
        STAGE.open(curation_recipe(embed={"model": "nowhere.pt"}).curation.embed, recipe)


def test_in_beam_the_model_is_a_runinference_step_that_resumes_and_gives_the_plain_paths_table(tmp_path):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from eo_etl.pipeline.stages import RunStage
    from eo_etl.stages.run import BatchRunner, assemble, plan_stage

    samples = sentinel2_samples(5)
    recipe = curation_recipe(embed={"fragment_size": 32})
    stage = dataclasses.replace(STAGE, batch_size=2)  # plans batches of 2; workers find the stage by name
    plain, in_beam = write_dataset(tmp_path / "plain", samples), write_dataset(tmp_path / "beam", samples)
    run_stage(stage, recipe, plain)
    first = plan_stage(stage, recipe, in_beam)
    BatchRunner(stage, recipe, in_beam).run(first.batches[0])  # a run that stopped after its first batch
    plan = plan_stage(stage, recipe, in_beam)
    assert plan.todo == 3 and len(plan.batches) == 2
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = pipeline | RunStage(plan, recipe, in_beam)
    result = pipeline.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_name("num_inferences"))["counters"]
    assert [m.key.metric.namespace for m in metrics] == ["RunInference.embed"]
    assert metrics[0].committed == 2  # the two batches left went through RunInference; the first was not redone
    assemble(plan, in_beam)
    assert pq.read_table(in_beam / "embed.parquet").equals(pq.read_table(plain / "embed.parquet"))
