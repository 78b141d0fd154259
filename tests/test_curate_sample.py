"""The balanced subset: a dataset that is mostly Sahara (tests/datasets.py places), land cover from the real
MCD12C1 raster (the landcover stage), embeddings from the embed stage; the subset chosen by land-cover strata
and hierarchical k-means is flatter in land cover than the input (entropies printed) and is the same for a
seed. Nothing is deleted: the subset is a column and a named split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from eo_etl.curate.embed import STAGE as EMBED
from eo_etl.curate.sample import balanced_choice, water_fill, write_balance
from eo_etl.labels.landcover import STAGE as LANDCOVER
from eo_etl.recipe import parse_recipe
from eo_etl.stages.run import run_stage
from tests.datasets import place_sample, write_dataset

SAHARA = [(10.0 + k * 0.3, 24.0 + (k % 3) * 0.3) for k in range(12)]
PLACES = SAHARA + [(-98.0, 38.5), (-97.4, 38.1), (-98.1, 38.6), (20.5, 0.5), (21.0, 0.4), (-30.0, 0.0)]


def recipe(**balance):
    return parse_recipe({
        "name": "balance", "aoi": {"bbox": [0, 0, 1, 1]}, "time": {"start": "2019-01-01", "end": "2019-12-31"},
        "labels": {"landcover": {"product": "modis-mcd12c1"}},
        # one stored band, random pixels: a grey composite at a gain that keeps them in 0-1
        "curation": {"embed": {"bands": ["B04", "B04", "B04"], "fragment_size": 64, "gain": 0.0001},
                     "balance": balance},
    })  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("balance") / "ds",
                         [place_sample(k, lon, lat) for k, (lon, lat) in enumerate(PLACES)])  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    run_stage(LANDCOVER, recipe(), root)
    run_stage(EMBED, recipe(), root)
    torch.set_num_threads(threads)
    return root


def entropy(classes: pd.Series) -> float:
    shares = classes.value_counts(normalize=True).to_numpy()
    return float(-(shares * np.log2(shares)).sum())


def test_the_balanced_subset_is_flatter_in_land_cover_and_the_same_for_a_seed(dataset):
    write_balance(recipe(target=6, stratify="landcover", levels=[4, 2], split="balanced"), dataset)
    table = pd.read_parquet(dataset / "balance.parquet")
    landcover = pd.read_parquet(dataset / "landcover.parquet").set_index("sample_id")["majority_name"]
    assert table["sample_id"].tolist() == pd.read_parquet(dataset / "index.parquet")["sample_id"].tolist()
    chosen = table.loc[table["balanced"], "sample_id"]
    assert len(chosen) == 6 and (table.loc[table["balanced"], "split"] == "balanced").all()
    assert table.loc[~table["balanced"], "split"].isna().all()
    before, after = entropy(landcover), entropy(landcover[chosen])
    print(f"land-cover entropy: {before:.3f} bits before ({len(landcover)} samples), {after:.3f} after ({len(chosen)})")
    print(landcover.value_counts().to_dict(), "→", landcover[chosen].value_counts().to_dict())
    assert after > before + 0.5
    assert landcover.value_counts().max() >= 12 and landcover[chosen].value_counts().max() <= 2
    again = pd.read_parquet(dataset / "balance.parquet")
    write_balance(recipe(target=6, stratify="landcover", levels=[4, 2], split="balanced"), dataset)
    assert pd.read_parquet(dataset / "balance.parquet").equals(again)


def test_a_fraction_target_and_failed_or_duplicate_samples_are_left_out(dataset):
    ids = pd.read_parquet(dataset / "index.parquet")["sample_id"].tolist()
    # a quality table that fails one sample and a dedup table that flags another (as those steps write them)
    pd.DataFrame({"sample_id": ids, "passed": [sid != ids[0] for sid in ids]}).to_parquet(dataset / "quality.parquet")
    pd.DataFrame({"sample_id": ids, "duplicate": [sid == ids[1] for sid in ids]}).to_parquet(dataset / "dedup.parquet")
    try:
        write_balance(recipe(target=1.0, levels=[3], exclude=["Water Bodies"]), dataset)
        table = pd.read_parquet(dataset / "balance.parquet").set_index("sample_id")
        water = table.index[table["stratum"] == "Water Bodies"]
        assert len(water) == 1 and not table.loc[water, "candidate"].any()  # the Atlantic sample
        assert not table.loc[ids[0], "candidate"] and not table.loc[ids[1], "candidate"]
        assert table["curated"].sum() == len(ids) - 3 and not table.loc[[ids[0], ids[1]], "curated"].any()
    finally:
        (dataset / "quality.parquet").unlink()
        (dataset / "dedup.parquet").unlink()


def test_water_filling_shares_equally_and_gives_what_small_groups_cannot_use_to_the_others():
    assert water_fill(np.array([1, 10, 10]), 9).tolist() == [1, 4, 4]
    assert water_fill(np.array([1, 10, 10]), 10).tolist() == [1, 5, 4]
    assert water_fill(np.array([2, 3]), 100).tolist() == [2, 3]
    labels = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [2, 1]])  # finest, then top level
    chosen = balanced_choice(labels, 3, np.random.default_rng(0))
    assert 5 in chosen and 4 in chosen and len(chosen) == 3  # each top and each fine cluster is represented
