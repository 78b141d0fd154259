"""The curation views (fragments, dedup, balance) run through the stage mechanism as whole-dataset stages, on
real Sentinel-2 patches (tests/imagery.py) with the quality and embed stages' real tables: a rerun with nothing
changed leaves their files untouched and writes nothing, a changed balance setting reruns balance only, and a
changed dedup setting reruns dedup and the balance that reads its table. Run by ``build --stages curate``: the
views need no Beam, and the stages are up to date (run beforehand without Beam)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from eo_etl.build import build
from eo_etl.curate.embed import STAGE as EMBED
from eo_etl.curate.quality import STAGE as QUALITY
from eo_etl.stages.run import run_stage
from eo_etl.stages.views import run_view
from tests.datasets import write_dataset
from tests.imagery import sentinel2_samples
from tests.test_curate_quality import curation_recipe

VIEWS = {"fragments": "embeddings.parquet", "dedup": "dedup.parquet", "balance": "balance.parquet"}


def recipe(dedup=None, **balance):
    return curation_recipe(quality={}, embed={"fragment_size": 64}, dedup=dedup or {"methods": ["exact", "near"]},
                           balance={"target": 3, "levels": [2], **balance})  # fmt: skip


@pytest.fixture
def dataset(tmp_path):
    samples = sentinel2_samples(5)
    copy = dataclasses.replace(samples[0], cell="5400D_5100L")  # the same pixels in another cell
    root = write_dataset(tmp_path / "ds", [*samples, copy])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    run_stage(QUALITY, recipe(), root)
    run_stage(EMBED, recipe(), root)
    torch.set_num_threads(threads)
    return root


def curate(root, recipe) -> dict[str, str]:
    report = build(recipe, root, stages=["curate"], runner="direct", options={"direct_running_mode": "in_memory"})
    return {stage.name: stage.status for stage in report.stages}


def files(root) -> dict[str, tuple[int, bytes]]:
    return {name: ((root / file).stat().st_mtime_ns, (root / file).read_bytes()) for name, file in VIEWS.items()}


def test_an_unchanged_rerun_leaves_the_views_untouched_and_a_balance_setting_reruns_balance_only(dataset):
    first = curate(dataset, recipe())
    assert first == {"quality": "up to date", "embed": "up to date", "fragments": "done", "dedup": "done",
                     "balance": "done"}  # fmt: skip
    dedup = pd.read_parquet(dataset / "dedup.parquet")
    assert dedup["duplicate"].sum() == 1 and pd.notna(dedup["exact"]).sum() == 1
    before = files(dataset)

    assert set(curate(dataset, recipe()).values()) == {"up to date"}
    assert files(dataset) == before  # not rewritten: the same bytes, the same modification times

    assert curate(dataset, recipe(target=2)) == {"quality": "up to date", "embed": "up to date",
                                                 "fragments": "up to date", "dedup": "up to date",
                                                 "balance": "done"}  # fmt: skip
    after = files(dataset)
    assert after["fragments"] == before["fragments"] and after["dedup"] == before["dedup"]
    assert after["balance"][0] != before["balance"][0]
    assert pd.read_parquet(dataset / "balance.parquet")["curated"].sum() == 2
    assert set(curate(dataset, recipe(target=2)).values()) == {"up to date"}


def test_a_changed_dedup_setting_reruns_dedup_and_the_balance_that_reads_its_table(dataset):
    curate(dataset, recipe())
    before = files(dataset)
    report = curate(dataset, recipe(dedup={"methods": ["exact", "near"], "thresholds": [0.9]}))
    assert report["dedup"] == "done" and report["balance"] == "done" and report["fragments"] == "up to date"
    after = files(dataset)
    assert after["fragments"] == before["fragments"] and after["dedup"][0] != before["dedup"][0]
    assert "near_0900" in pd.read_parquet(dataset / "dedup.parquet").columns


def test_a_view_whose_input_table_is_missing_fails_with_its_reason_and_writes_nothing(tmp_path):
    root = write_dataset(tmp_path / "ds", sentinel2_samples(2))
    report = build(recipe(), root, stages=["balance"], runner="direct")
    (line,) = report.stages
    assert line.name == "balance" and line.status == "failed" and "needs embed.parquet" in line.detail
    assert not (root / "balance.parquet").exists()
    assert run_view(next(v for v in _views() if v.name == "dedup"), curation_recipe(), root) is None  # unset


def _views():
    from eo_etl.curate.stages import STAGES

    return STAGES
