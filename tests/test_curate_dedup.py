"""Duplicates as flags on real Sentinel-2 patches (the xarray-spatial scene, tests/imagery.py): the quality and
embed stages run, then the dedup table is written. An exact copy and a crop of the same place shifted by 3 px
(95 % overlap) are flagged, different places are not; neighbouring cells and the same cell at another window
follow the documented policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from eo_etl.curate.dedup import flag, write_duplicates
from eo_etl.curate.embed import STAGE as EMBED
from eo_etl.curate.quality import STAGE as QUALITY
from eo_etl.stages.run import run_stage
from tests.datasets import write_dataset
from tests.imagery import sentinel2_samples
from tests.test_curate_quality import curation_recipe

PLACES = [(0, 0), (60, 120), (130, 40), (100, 200), (0, 230)]  # (row, col) in the scene: five places
COPY, CROP, NEIGHBOUR_CROP, LATER_CROP = 5, 6, 7, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    at = [*PLACES, PLACES[0], (63, 123), (133, 43), (103, 203)]
    samples = sentinel2_samples(len(at), at=at)
    two, three = samples[2], samples[3]
    samples[NEIGHBOUR_CROP] = dataclasses.replace(samples[NEIGHBOUR_CROP], cell="5328D_5052L", row_u=-5328,
                                                  col_r=two.col_r)  # fmt: skip  # the cell south of place 2's
    later = three.window_start.replace(month=three.window_start.month + 1)
    samples[LATER_CROP] = dataclasses.replace(samples[LATER_CROP], cell=three.cell, row_u=three.row_u,
                                              col_r=three.col_r, window_start=later)  # fmt: skip
    root = write_dataset(tmp_path_factory.mktemp("dedup") / "ds", samples)
    recipe = curation_recipe(embed={"fragment_size": 64})
    run_stage(QUALITY, recipe, root)
    run_stage(EMBED, recipe, root)
    torch.set_num_threads(threads)
    return root, [str(sample.sample_id) for sample in samples]  # the index sorts them: ids by position here


def flags_of(table: pd.DataFrame, name: str) -> dict[str, str]:
    """flagged sample → the sample it duplicates"""
    return {sid: of for sid, of in zip(table["sample_id"], table[name], strict=True) if pd.notna(of)}


def dedup(root, **settings) -> pd.DataFrame:
    write_duplicates(curation_recipe(embed={"fragment_size": 64}, dedup=settings), root)
    return pd.read_parquet(root / "dedup.parquet")


def test_an_exact_copy_and_an_overlapping_crop_are_flagged_and_different_places_are_not(dataset):
    dataset, ids = dataset
    embed = pd.read_parquet(dataset / "embed.parquet").set_index("sample_id").loc[ids]
    vectors = np.stack(embed["embedding"].to_numpy())
    similarity = vectors @ vectors.T
    places = similarity[: len(PLACES), : len(PLACES)][np.triu_indices(len(PLACES), 1)]
    print(
        f"cosine: different places ≤ {places.max():.3f}, crop {similarity[1, CROP]:.3f}, copy {similarity[0, COPY]:.3f}"
    )
    table = dedup(dataset, methods=["exact", "near", "semdedup"], thresholds=[0.88, 0.99], clusters=3)
    index = pd.read_parquet(dataset / "index.parquet")["sample_id"].tolist()
    assert table["sample_id"].tolist() == index and sorted(index) == sorted(ids)  # one row each: none deleted
    flagged = {name: flags_of(table, name) for name in table.columns[1:-1]}
    assert flagged["exact"] == {ids[COPY]: ids[0]}
    assert flagged["near_0880"] == {ids[COPY]: ids[0], ids[CROP]: ids[1]}
    assert flagged["near_0990"] == {ids[COPY]: ids[0]}  # a stricter epsilon
    # SemDeDup compares within a k-means cluster only: the copy (the same vector) always, nothing new
    assert (
        flagged["semdedup_0880"][ids[COPY]] == ids[0]
        and flagged["semdedup_0880"].items() <= flagged["near_0880"].items()
    )
    assert set(table.loc[table["duplicate"], "sample_id"]) == {ids[COPY], ids[CROP]}


def test_neighbouring_cells_and_later_windows_are_duplicates_only_when_the_recipe_says_so(dataset):
    dataset, ids = dataset
    default = flags_of(dedup(dataset, methods=["near"], thresholds=[0.88]), "near_0880")
    assert ids[NEIGHBOUR_CROP] not in default and ids[LATER_CROP] not in default
    across = dedup(dataset, methods=["near"], thresholds=[0.88], across_neighbours=True, across_versions=True)
    across = flags_of(across, "near_0880")
    assert across[ids[NEIGHBOUR_CROP]] == ids[2] and across[ids[LATER_CROP]] == ids[3]


def test_the_keep_rule_picks_which_duplicate_stays(dataset):
    dataset, ids = dataset
    assert flags_of(dedup(dataset, methods=["near"], thresholds=[0.88]), "near_0880")[ids[CROP]] == ids[1]
    # the crop (3 px lower) has fewer cloudy rows than place 1? either way the least cloudy of the two stays
    cloud = pd.read_parquet(dataset / "quality.parquet").set_index("sample_id")["cloud_fraction"]
    kept = flags_of(dedup(dataset, methods=["near"], thresholds=[0.88], keep="least_cloudy"), "near_0880")
    pair = sorted([ids[1], ids[CROP]], key=lambda sid: (cloud[sid], ids.index(sid)))
    assert kept[pair[1]] == pair[0]


def test_flagging_keeps_one_of_each_group_in_priority_order():
    pairs = np.array([[0, 1], [1, 2], [3, 4]])
    np.testing.assert_array_equal(flag(pairs, np.arange(5), 5), [-1, 0, -1, -1, 3])
    np.testing.assert_array_equal(flag(pairs, np.array([1, 0, 2, 4, 3]), 5), [1, -1, 1, 4, -1])


def test_a_missing_table_is_one_line_naming_the_stage_to_run(tmp_path):
    root = write_dataset(tmp_path / "ds", sentinel2_samples(2))
    with pytest.raises(FileNotFoundError, match="curation.dedup: exact .* needs quality.parquet; run the quality"):
        write_duplicates(curation_recipe(dedup={"methods": ["exact"]}), root)


def test_past_the_exact_limit_the_list_search_finds_the_near_pairs_brute_force_finds():
    from eo_etl.curate.dedup import EXACT_LIMIT, similar_pairs

    rng = np.random.default_rng(1)
    n, copies = EXACT_LIMIT + 10_000, 600
    vectors = rng.standard_normal((n, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    originals = rng.choice(n - copies, copies, replace=False)
    vectors[n - copies :] = vectors[originals] + 0.02 * rng.standard_normal((copies, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = similar_pairs(vectors, 0.95)
    np.testing.assert_array_equal(similar_pairs(vectors, 0.95), pairs)  # seeded: the same pairs each run
    found = {tuple(p) for p in pairs.tolist()}
    queries = np.arange(n - copies, n)  # brute force for the copies: every pair they are in
    q, j = np.nonzero(vectors[queries] @ vectors.T >= 0.95)
    exact = {(min(a, b), max(a, b)) for a, b in zip(queries[q].tolist(), j.tolist(), strict=True) if a != b}
    recall = len(exact & found) / len(exact)
    print(f"list search recall {recall:.4f} of {len(exact)} pairs")
    assert len(exact) >= copies and recall >= 0.99


def test_flagging_many_random_pairs_keeps_an_independent_set_and_names_an_earlier_kept_partner():
    rng = np.random.default_rng(2)
    n = 2_000
    pairs = rng.integers(0, n, (3_000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    order = rng.permutation(n)
    of = flag(pairs, order, n)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    kept = of == -1
    assert not (kept[pairs[:, 0]] & kept[pairs[:, 1]]).any()  # no two kept samples are duplicates
    flagged = np.flatnonzero(~kept)
    assert kept[of[flagged]].all() and (rank[of[flagged]] < rank[flagged]).all()
    partner = {(min(a, b), max(a, b)) for a, b in pairs.tolist()}
    assert all((min(i, of[i]), max(i, of[i])) in partner for i in flagged.tolist())  # it names a real partner
    print(f"{len(flagged)} of {n} flagged by {len(pairs)} random pairs")
