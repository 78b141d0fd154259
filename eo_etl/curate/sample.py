"""A balanced subset as a view: ``<dataset>/balance.parquet`` marks the samples of a named split; none is deleted.

Candidates are the stored samples with a vector (the embed table) that passed quality (the quality table, when
written), are not flagged duplicates (the dedup table, when written) and whose land-cover majority class is not
in ``exclude``. Balancing follows hierarchical k-means
curation (Vo et al., 2024): k-means of the vectors into ``levels[0]`` clusters, k-means of those centroids into
``levels[1]``, and so on; the target is then shared top-down by water-filling (each cluster gets an equal share,
what a small cluster cannot use goes to the others) and drawn at random within the finest clusters. With
``stratify: landcover`` the target is first water-filled across land-cover majority classes (the landcover
table; no class: "unknown"), then balanced by clusters within each class. The same seed gives the same subset.

Columns: ``sample_id``, ``candidate``, ``stratum``, ``clusters`` (finest level first), ``split`` (the split's
name where chosen, else null) and a boolean column named after the split, for exports to select.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eo_etl.recipe.models import Balance, Recipe
from eo_etl.store.index import INDEX_NAME
from eo_etl.store.location import Location

TABLE_NAME = "balance.parquet"
UNKNOWN = "unknown"


def water_fill(sizes: np.ndarray, total: int) -> np.ndarray:
    """Quotas ≤ sizes summing to min(total, sum(sizes)), as equal as the sizes allow (ties: lower index first)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quotas = np.zeros_like(sizes)
    left = min(int(total), int(sizes.sum()))
    while left > 0:
        open_ = np.flatnonzero(quotas < sizes)
        share = left // len(open_)
        if share == 0:  # fewer left than open groups: one more each for the emptiest, lower index first
            for k in sorted(open_, key=lambda k: (quotas[k], k))[:left]:
                quotas[k] += 1
            break
        grant = np.minimum(share, sizes[open_] - quotas[open_])
        quotas[open_] += grant
        left -= int(grant.sum())
    return quotas


def hierarchical_kmeans(vectors: np.ndarray, levels: list[int], seed: int) -> np.ndarray:
    """Cluster of each vector at each level (n, len(levels)), finest first; a level clusters the previous
    level's centroids."""
    import faiss

    points = np.ascontiguousarray(vectors, dtype=np.float32)
    member = np.arange(len(points))  # each vector's point at the current level
    labels = np.zeros((len(points), len(levels)), dtype=np.int64)
    for level, k in enumerate(levels):
        k = max(1, min(k, len(points)))
        kmeans = faiss.Kmeans(points.shape[1], k, niter=20, seed=seed + level, spherical=True,
                              min_points_per_centroid=1, max_points_per_centroid=1_000_000)  # fmt: skip
        kmeans.train(points)
        _, assigned = kmeans.index.search(points, 1)
        member = assigned[member, 0]
        labels[:, level] = member
        points = kmeans.centroids
    return labels


def balanced_choice(labels: np.ndarray, quota: int, rng: np.random.Generator) -> list[int]:
    """``quota`` rows drawn top-down through the cluster levels of ``labels``, water-filled at each level."""

    def choose(members: np.ndarray, level: int, quota: int) -> list[int]:
        if level < 0:
            return sorted(rng.choice(members, size=quota, replace=False).tolist())
        clusters, inverse = np.unique(labels[members, level], return_inverse=True)
        groups = [members[inverse == k] for k in range(len(clusters))]
        quotas = water_fill(np.array([len(g) for g in groups]), quota)
        return [i for group, q in zip(groups, quotas, strict=True) if q for i in choose(group, level - 1, int(q))]

    return choose(np.arange(len(labels)), labels.shape[1] - 1, quota)


def balance(candidates: pd.DataFrame, settings: Balance) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Rows of ``candidates`` (columns ``embedding``, ``stratum``) chosen, with each row's cluster labels."""
    n = len(candidates)
    target = round(settings.target * n) if settings.target <= 1 else int(settings.target)
    rng = np.random.default_rng(settings.seed)
    strata = candidates["stratum"].to_numpy() if settings.stratify != "none" else np.full(n, UNKNOWN, object)
    names = sorted(set(strata))
    quotas = water_fill(np.array([(strata == s).sum() for s in names]), target)
    labels = np.full((n, len(settings.levels)), -1, dtype=np.int64)
    chosen = []
    for name, quota in zip(names, quotas, strict=True):
        rows = np.flatnonzero(strata == name)
        vectors = np.stack(candidates["embedding"].to_numpy()[rows])
        labels[rows] = hierarchical_kmeans(vectors, settings.levels, settings.seed)
        chosen += [int(rows[i]) for i in balanced_choice(labels[rows], int(quota), rng)]
    return sorted(chosen), labels, strata


def _read(root: Location, name: str) -> pd.DataFrame | None:
    target = root / name
    return pq.read_table(target.url).to_pandas().set_index("sample_id") if target.exists() else None


def write_balance(recipe: Recipe, root) -> str:
    """``<dataset>/balance.parquet`` from the index and the embed (needed), quality, dedup and landcover tables."""
    settings = recipe.curation.balance
    root = Location.of(root)
    frame = _candidates(root, settings)
    _pick(frame, settings)
    table = pa.Table.from_pandas(frame.drop(columns="embedding").reset_index(), preserve_index=False,
                                 schema=pa.schema([("sample_id", pa.string()), ("candidate", pa.bool_()),
                                                   ("stratum", pa.string()), ("clusters", pa.list_(pa.int64())),
                                                   ("split", pa.string()), (settings.split, pa.bool_())]))  # fmt: skip
    target = root / TABLE_NAME
    with target.staged_file() as path:
        pq.write_table(table, path)
    return target.url


def _candidates(root: Location, settings) -> pd.DataFrame:
    """The stored samples by ``sample_id``: embedding, stratum (landcover's majority class) and whether each is a
    candidate (embedded, passed quality, not a duplicate, not in an excluded stratum)."""
    index = pq.read_table((root / INDEX_NAME).url, columns=["sample_id", "zarr_index"]).to_pandas()
    stored = index.loc[index["zarr_index"].notna(), "sample_id"].tolist()
    embed = _read(root, "embed.parquet")
    if embed is None:
        raise FileNotFoundError("curation.balance: needs embed.parquet; run the embed stage first")
    frame = pd.DataFrame({"sample_id": stored}).set_index("sample_id")
    frame["embedding"] = embed["embedding"].reindex(stored)
    candidate = frame["embedding"].notna()
    for name, keep in (("quality.parquet", "passed"), ("dedup.parquet", "duplicate")):
        table = _read(root, name)
        if table is not None:
            column = table[keep].reindex(stored).astype("boolean").fillna(keep == "duplicate")
            candidate &= column if keep == "passed" else ~column
    landcover = _read(root, "landcover.parquet")
    if (settings.stratify == "landcover" or settings.exclude) and landcover is None:
        raise FileNotFoundError(
            "curation.balance: stratify and exclude need landcover.parquet; run the landcover stage"
        )
    frame["stratum"] = (landcover["majority_name"].reindex(stored) if landcover is not None else pd.Series(
        None, index=frame.index, dtype=object)).fillna(UNKNOWN)  # fmt: skip
    candidate &= ~frame["stratum"].isin(settings.exclude)
    frame["candidate"] = candidate
    return frame


def _pick(frame: pd.DataFrame, settings) -> None:
    """The balanced subset of the candidates, into ``frame``: each candidate's clusters, the split of those chosen
    and a column named after the split saying whether each sample is in it."""
    candidate = frame["candidate"]
    chosen, labels, strata = balance(frame[candidate], settings) if candidate.any() else ([], None, None)
    frame["clusters"] = None
    frame["split"] = None
    picked = frame.index[candidate][chosen] if chosen else []
    if labels is not None:
        frame.loc[candidate, "clusters"] = pd.Series(
            [list(map(int, row)) for row in labels], index=frame.index[candidate]
        )
    frame.loc[picked, "split"] = settings.split
    frame[settings.split] = frame["split"].notna()
