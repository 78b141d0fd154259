"""Duplicates as flags, never deletion: ``<dataset>/dedup.parquet``, one row per stored sample.

Three methods, each a column that holds, for a flagged sample, the ``sample_id`` it duplicates (null: kept):

- ``exact``: the same pixels (the quality table's ``pixel_hash``), whatever the cell or window: a scene
  stored twice is redundant wherever it sits.
- ``near_<t>``: embedding cosine ≥ t (the embed table's pooled unit vectors) among each sample's
  ``neighbours`` nearest, found with faiss (exact inner product; on the GPU, at any size, where faiss-gpu is
  installed); past ``EXACT_LIMIT`` vectors on the CPU, every such pair within k-means inverted lists (matrix
  products per list on a random 64-d projection, then the exact cosine; recall ≈ 0.998 of the exact pairs in
  ``bench/curate.py``). One column per threshold (epsilon), e.g. ``near_0950``.
- ``semdedup_<t>``: SemDeDup: k-means of the vectors into ``clusters``, then cosine ≥ t within a cluster.

Of a group of duplicates one stays unflagged (``keep``: the first in index order, or the least cloudy); the
others name it. ``duplicate`` is true where any column flags the sample.

Policy for the grid (near and SemDeDup): samples of different sources are never duplicates (other sensors add
information). Neighbouring Major TOM cells overlap by design (a cell's margin, about 340 m at 10 km), so a pair
of neighbouring cells is not a duplicate unless ``across_neighbours``; the same cell at another window (a later
version of the dataset) is a new observation, not a duplicate, unless ``across_versions``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eo_etl.recipe.models import Dedup, Recipe
from eo_etl.sample import SampleId
from eo_etl.store.index import INDEX_NAME
from eo_etl.store.location import Location

TABLE_NAME = "dedup.parquet"
EXACT_LIMIT = 50_000  # up to this many vectors the search is exact (flat inner product)
CELL = re.compile(r"^(\d+)([UD])_(\d+)([RL])$")  # a Major TOM cell name: 454U_120R


def column(method: str, threshold: float) -> str:
    return f"{method}_{round(threshold * 1000):04d}"


def similar_pairs(vectors: np.ndarray, threshold: float, neighbours: int = 16) -> np.ndarray:
    """Pairs (i, j), i < j, of unit vectors with cosine ≥ ``threshold``: (n, 2) int64, sorted. Up to
    ``EXACT_LIMIT`` vectors, among each one's ``neighbours`` nearest (faiss, exact); past it, every pair that
    shares an inverted list (:func:`_list_pairs`). With faiss-gpu and a GPU, always the exact search, there."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n < 2:
        return np.zeros((0, 2), np.int64)
    import faiss

    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if n > EXACT_LIMIT and not gpu:
        return _list_pairs(vectors, threshold)
    index = faiss.IndexFlatIP(dim)
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(vectors)
    found = []
    for start in range(0, n, 65_536):  # bounded result memory: 65,536 × (neighbours + 1) at a time
        similarity, nearest = index.search(vectors[start : start + 65_536], min(neighbours + 1, n))
        rows = np.repeat(np.arange(start, start + len(nearest)), nearest.shape[1])
        keep = (similarity.ravel() >= threshold) & (nearest.ravel() >= 0) & (nearest.ravel() != rows)
        found.append(_pair_keys(rows[keep], nearest.ravel()[keep], n))
    return _pairs(np.unique(np.concatenate(found)), n)


def _pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Pairs as one int64 each (min · n + max): sorting and uniqueness on a flat array, not rows."""
    return np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j)


def _pairs(keys: np.ndarray, n: int) -> np.ndarray:
    return np.stack(np.divmod(keys, n), axis=1).astype(np.int64).reshape(-1, 2)


def _list_pairs(vectors: np.ndarray, threshold: float, dims: int = 64, slack: float = 0.05) -> np.ndarray:
    """Near pairs among many unit vectors, on a seeded random projection to ``dims``, normalised (a pair's
    cosine there deviates from its own by about (1 − t²)/√dims: a fourfold margin loses next to none, and the
    exact cosine then checks each candidate). Seeded spherical k-means places √(2.5·n) list centres; each vector
    is kept in the list of its nearest centre (its home) and compared, one matrix product per list, with every
    vector that has that centre within ``slack`` of its own nearest (about two lists a vector: a near copy's home
    is, unless both sit on a border, and then one of the two finds the other). Matrix products, not faiss'
    per-query IVF scans (slower here): BLAS speed, O(n^1.5)."""
    import faiss

    n, dim = vectors.shape
    dims = min(dims, dim)
    rotation = faiss.RandomRotationMatrix(dim, dims)
    rotation.init(0)  # seeded: the same pairs each run
    projected = rotation.apply(vectors)
    faiss.normalize_L2(projected)
    # √(2.5·n) lists balance finding them (n × lists) and comparing in them (n × ~2 probes × n / lists)
    lists = int(np.sqrt(2.5 * n))
    kmeans = faiss.Kmeans(dims, lists, niter=8, seed=0, spherical=True, max_points_per_centroid=16)
    kmeans.train(projected)
    homes, askers, probed = _assign_lists(projected, kmeans.centroids, slack)
    members, member_bounds = _grouped(np.arange(n), homes, lists)
    askers, asker_bounds = _grouped(askers, probed, lists)
    low = threshold - 4 * (1 - threshold**2) / np.sqrt(dims)
    found = []
    for k in range(lists):
        home = members[member_bounds[k] : member_bounds[k + 1]]
        asking = askers[asker_bounds[k] : asker_bounds[k + 1]]
        if len(home) == 0 or len(asking) == 0:
            continue
        q, m = np.divmod(np.flatnonzero(projected[asking] @ projected[home].T >= low), len(home))
        found.append(_pair_keys(asking[q], home[m], n))
    keys = np.unique(np.concatenate(found))
    pairs = _pairs(keys, n)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return pairs[np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]]) >= threshold]


def _assign_lists(projected: np.ndarray, centroids: np.ndarray, slack: float) -> tuple[np.ndarray, ...]:
    """Each vector's home list (its nearest centre), and the (vector, list) pairs with the list's centre within
    ``slack`` of the vector's nearest: the lists it is compared in."""
    homes, askers, probed = [], [], []
    for start in range(0, len(projected), 16_384):  # a block of vectors × every centre at a time: bounded memory
        similarity = projected[start : start + 16_384] @ centroids.T
        home = similarity.argmax(axis=1)
        similarity -= similarity[np.arange(len(home)), home][:, None]
        asker, centre = np.divmod(np.flatnonzero(similarity >= -slack), len(centroids))  # flat: 10x faster than 2-d
        homes.append(home)
        askers.append(asker + start)
        probed.append(centre)
    return np.concatenate(homes), np.concatenate(askers), np.concatenate(probed)


def _grouped(values: np.ndarray, groups: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` ordered by group (stable) and each group's bounds in them: group k is [bounds[k], bounds[k+1])."""
    order = np.argsort(groups, kind="stable")
    return values[order], np.searchsorted(groups[order], np.arange(count + 1))


def semdedup_pairs(vectors: np.ndarray, threshold: float, clusters: int, seed: int) -> np.ndarray:
    """SemDeDup's pairs: k-means clusters, then every pair within a cluster with cosine ≥ ``threshold``."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = max(1, min(clusters, len(vectors)))
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=seed, spherical=True, min_points_per_centroid=1)
    kmeans.train(vectors)
    _, assigned = kmeans.index.search(vectors, 1)
    pairs = []
    for cluster in np.unique(assigned):
        members = np.flatnonzero(assigned[:, 0] == cluster)
        similarity = vectors[members] @ vectors[members].T
        i, j = np.nonzero(np.triu(similarity >= threshold, k=1))
        pairs.append(np.stack([members[i], members[j]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), np.int64)


def _row_col(cell: str) -> tuple[int, int] | None:
    match = CELL.fullmatch(cell)
    if not match:  # another grid's cell names: no neighbours known
        return None
    row, up, col, right = match.groups()
    return int(row) * (1 if up == "U" else -1), int(col) * (1 if right == "R" else -1)


def counted(ids: list[SampleId], settings: Dedup) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Which pairs (arrays i, j) of samples may be near duplicates under the grid policy (module docstring)."""
    source = pd.factorize(np.array([sid.source for sid in ids], dtype=object))[0]
    cell = pd.factorize(np.array([sid.cell for sid in ids], dtype=object))[0]
    start = pd.factorize(np.array([sid.start for sid in ids], dtype=object))[0]
    # another grid's cell names: no neighbours known (NaN is never within 1)
    grid = np.array([_row_col(sid.cell) or (np.nan, np.nan) for sid in ids], dtype=np.float64).reshape(-1, 2)

    def ok(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        same_cell = cell[i] == cell[j]
        neighbours = ~same_cell & (np.abs(grid[i] - grid[j]) <= 1).all(axis=1)
        later = same_cell & (start[i] != start[j])
        allowed = np.where(later, settings.across_versions, settings.across_neighbours | ~neighbours)
        return (source[i] == source[j]) & allowed

    return ok


def flag(pairs: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """For each sample, the index of the kept sample it duplicates (-1: kept): samples are taken in ``order``
    (the keep rule's priority); one not yet flagged is kept and flags its unflagged partners."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    ends = np.concatenate([pairs, pairs[:, ::-1]])  # each pair from both sides, grouped by the first
    partners, bounds = _grouped(ends[:, 1], ends[:, 0], n)
    of = np.full(n, -1, dtype=np.int64)
    order = np.asarray(order)
    for i in order[bounds[order + 1] > bounds[order]].tolist():  # only samples with partners: others are kept
        if of[i] == -1:
            mine = partners[bounds[i] : bounds[i + 1]]
            of[mine[of[mine] == -1]] = i
            of[i] = -2  # kept
    of[of == -2] = -1
    return of


def _keep_order(quality: pd.DataFrame | None, keep: str, n: int) -> np.ndarray:
    """The order in which samples are kept first: index order, or least cloudy first (ties in index order)."""
    if keep != "least_cloudy":
        return np.arange(n)
    cloud = quality["cloud_fraction"].fillna(1.0).to_numpy() if quality is not None else np.zeros(n)
    return np.lexsort((np.arange(n), cloud))


def _exact_pairs(hashes: np.ndarray) -> np.ndarray:
    """(first, other) pairs of samples with the same pixel hash, the first in index order; no hash pairs none."""
    n = len(hashes)
    group, _ = pd.factorize(hashes)  # -1: no hash
    seen = group >= 0
    first = np.full(group.max(initial=0) + 1, n, dtype=np.int64)
    np.minimum.at(first, group[seen], np.flatnonzero(seen))  # each hash's first sample, in index order
    others = np.flatnonzero(seen & (first[np.maximum(group, 0)] != np.arange(n)))
    return np.stack([first[group[others]], others], axis=1)


def find_duplicates(index: pd.DataFrame, quality: pd.DataFrame | None, embed: pd.DataFrame | None,
                    settings: Dedup) -> pd.DataFrame:  # fmt: skip
    """The dedup table of the stored samples of ``index`` (in its order) from the quality and embed tables."""
    stored = index.loc[index["zarr_index"].notna(), "sample_id"].tolist()
    n = len(stored)
    out = pd.DataFrame({"sample_id": stored})
    ids = [SampleId.parse(s) for s in stored]
    quality = quality.set_index("sample_id").reindex(stored) if quality is not None else None
    order = _keep_order(quality, settings.keep, n)
    names = np.array([*stored, None], dtype=object)

    def named(of: np.ndarray) -> list[str | None]:
        return names[of].tolist()  # -1: the None at the end

    if "exact" in settings.methods:
        out["exact"] = named(flag(_exact_pairs(quality["pixel_hash"].to_numpy()), order, n))
    vector_methods = [m for m in settings.methods if m != "exact"]
    if vector_methods:
        rows = embed.set_index("sample_id").reindex(stored)["embedding"]
        have = np.flatnonzero(rows.notna().to_numpy())
        vectors = np.stack(rows.iloc[have].to_numpy()).astype(np.float32) if len(have) else np.zeros((0, 1))
        ok = counted(ids, settings)
        for method in vector_methods:
            for threshold in settings.thresholds:
                if method == "near":
                    local = similar_pairs(vectors, threshold, settings.neighbours)
                else:
                    local = semdedup_pairs(vectors, threshold, settings.clusters, settings.seed)
                i, j = have[local[:, 0]], have[local[:, 1]]
                keep = ok(i, j)
                out[column(method, threshold)] = named(flag(np.stack([i[keep], j[keep]], axis=1), order, n))
    flags = [c for c in out.columns if c != "sample_id"]
    out["duplicate"] = out[flags].notna().any(axis=1)
    return out


def _table(root: Location, name: str, needed_by: str) -> pd.DataFrame:
    target = root / name
    if not target.exists():
        stage = name.removesuffix(".parquet")
        raise FileNotFoundError(f"curation.dedup: {needed_by} needs {name}; run the {stage} stage first")
    return pq.read_table(target.url).to_pandas()


def write_duplicates(recipe: Recipe, root) -> str:
    """``<dataset>/dedup.parquet`` from the index and the quality and embed tables (written atomically)."""
    settings = recipe.curation.dedup
    root = Location.of(root)
    index = pq.read_table((root / INDEX_NAME).url, columns=["sample_id", "zarr_index"]).to_pandas()
    needs_quality = "exact" in settings.methods or settings.keep == "least_cloudy"
    quality = _table(root, "quality.parquet", "exact or keep: least_cloudy") if needs_quality else None
    vectors = [m for m in settings.methods if m != "exact"]
    embed = _table(root, "embed.parquet", " and ".join(vectors)) if vectors else None
    table = pa.Table.from_pandas(find_duplicates(index, quality, embed, settings), preserve_index=False)
    target = root / TABLE_NAME
    with target.staged_file() as path:
        pq.write_table(table, path)
    return target.url
