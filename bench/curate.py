"""Curation benchmark.

Prints:
- embeddings per second of the embed stage's function (RGB composite, Major TOM fragments, batched
  EfficientNet-Lite0) over real Sentinel-2 samples (xarray-spatial's scene), on the CPU against a bare torch
  loop over the same fragment tensors, in the same run, and the ratio (target: ≤ 1.15× its time); where CUDA is
  present, the same on the GPU against the model alone there (bf16 autocast, pinned memory, non_blocking
  copies; target ≥ 0.8× its rate) and the GPU/CPU ratio of the stage's rate (without CUDA it says so and skips
  only that part);
- near-duplicate search (eo_etl.curate.dedup.similar_pairs: past 50k vectors, inverted lists
  by k-means on a 64-d random projection, matrix products per list) over N synthetic 256-d unit vectors in
  clusters of uneven size and tightness with planted near copies (cosine 0.94-0.995), against brute-force numpy
  over a sample of queries, extrapolated to N; recall of the exact pairs at the threshold; wall and CPU time, since
  the machine may be shared (targets: 1,000,000 vectors in under 30 s on two cores, recall ≥ 0.99; the work
  on one core: OPENBLAS_NUM_THREADS=1 python bench/curate.py --skip-embed --threads 1).

    python bench/curate.py [--n 1000000] [--samples 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLD = 0.95


def bench_embeddings(samples: int, size: int, fragment: int, device: str) -> dict[str, float]:
    """Fragments per second of the stage's function and of the model alone on ``device``, best of two each."""
    import torch

    from eo_etl.curate.embed import STAGE, embed_images, fragment_boxes, load_encoder, rgb_composite
    from eo_etl.recipe import parse_recipe
    from eo_etl.stages.core import Item
    from tests.imagery import sentinel2_samples

    recipe = parse_recipe({
        "name": "bench", "aoi": {"bbox": [0, 0, 1, 1]}, "time": {"start": "2019-01-01", "end": "2019-12-31"},
        "curation": {"embed": {"fragment_size": fragment, "device": device}},
    })  # fmt: skip
    settings = recipe.curation.embed
    cut = sentinel2_samples(samples, size=size)
    items = [Item(s.cell, s.record() | {"nodata_value": 0.0}, pixels=s.pixels) for s in cut]
    embed = STAGE.open(settings, recipe)
    # the same fragments as tensors, for the bare loop
    fragments = []
    for item in items:
        composite = rgb_composite(item.pixels, item.row, settings.bands, settings.gain)
        fragments += [composite[:, r0:r1, c0:c1] for c0, r0, c1, r1 in fragment_boxes(size, size, fragment, 0.1)]
    stacked = np.stack(fragments)
    encoder = load_encoder("efficientnet-lite0", device)
    cuda = device == "cuda"
    tensors = torch.from_numpy(stacked)
    tensors = tensors.pin_memory() if cuda else tensors  # the model alone: its input ready in pinned memory
    embed(items[: settings.batch_size])  # warm up both (and cuDNN's choice of kernels)
    embed_images(encoder, stacked[:64], device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def pipeline() -> float:
        sync()
        start = time.perf_counter()
        for k in range(0, len(items), settings.batch_size):
            embed(items[k : k + settings.batch_size])
        sync()
        return time.perf_counter() - start

    def bare() -> float:
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            out = []
            for k in range(0, len(tensors), 64):
                batch = tensors[k : k + 64].to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    out.append(encoder(batch).float())
            torch.cat(out).cpu()
        sync()
        return time.perf_counter() - start

    times = {"pipeline": [], "bare torch": []}
    for _ in range(2):  # interleaved, best of two: the machine is shared
        times["pipeline"].append(pipeline())
        times["bare torch"].append(bare())
    best = {name: min(t) for name, t in times.items()}
    n = len(stacked)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"embeddings on {device} ({name}): {samples} samples of {size} px, {n} fragments of {fragment} px")
    for label, seconds in best.items():
        print(f"  {label:11s} {n / seconds:8.1f} fragments/s ({seconds:.2f} s)")
    return {label: n / seconds for label, seconds in best.items()}


def bench_all_embeddings(samples: int, size: int, fragment: int) -> None:
    import torch

    cpu = bench_embeddings(samples, size, fragment, "cpu")
    print(f"  pipeline / bare torch time: {cpu['bare torch'] / cpu['pipeline']:.3f}× (target ≤ 1.15×)")
    if not torch.cuda.is_available():
        print("  no GPU here (torch sees no CUDA device): the GPU run and the GPU/CPU ratio are skipped")
        return
    torch.use_deterministic_algorithms(False)  # the CPU stage set it for this process; a GPU stage does not
    gpu = bench_embeddings(samples, size, fragment, "cuda")
    print(f"  pipeline / model alone on the GPU, rate: {gpu['pipeline'] / gpu['bare torch']:.3f}× (target ≥ 0.8×)")
    print(f"  GPU / CPU, the pipeline's rate: {gpu['pipeline'] / cpu['pipeline']:.1f}×")


def planted(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """n unit vectors like embeddings of a corpus: clusters (one per 500 vectors on average, lognormal sizes)
    whose members have a mean cosine of 0.2-0.8 with each other (a few pairs of the tightest pass the threshold
    on their own), and the last 1 % near copies of others (noise 0.1-0.35: cosine ≈ 0.94-0.995)."""
    clusters = max(1, n // 500)
    sizes = rng.lognormal(0, 1, clusters)
    cluster = rng.choice(clusters, n, p=sizes / sizes.sum())
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    tightness = rng.uniform(0.2, 0.8, clusters)  # a unit noise plus √(c / (1 − c)) × centre: cosine ≈ c
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors += np.sqrt(tightness / (1 - tightness)).astype(np.float32)[cluster, None] * centres[cluster]
    copies = n // 100
    originals = rng.choice(n - copies, copies, replace=False)
    noise = rng.standard_normal((copies, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noise *= (rng.uniform(0.1, 0.35, copies) / np.linalg.norm(noise, axis=1))[:, None].astype(np.float32)
    vectors[n - copies :] = vectors[originals] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, copies


def bench_search(n: int, queries: int, dim: int = 256) -> None:
    from eo_etl.curate.dedup import similar_pairs

    rng = np.random.default_rng(0)
    vectors, copies = planted(n, dim, rng)
    start, cpu = time.perf_counter(), time.process_time()
    pairs = similar_pairs(vectors, THRESHOLD)
    search_s, search_cpu = time.perf_counter() - start, time.process_time() - cpu
    # brute force over a sample of queries: the copies (which have partners) and as many others
    sample = np.concatenate([rng.choice(np.arange(n - copies, n), queries // 2, replace=False),
                             rng.choice(n - copies, queries - queries // 2, replace=False)])  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()
    exact = []
    for k in range(0, len(sample), 128):  # 128 × n similarities at a time: 512 MB at 1,000,000
        block = sample[k : k + 128]
        q, j = np.nonzero(vectors[block] @ vectors.T >= THRESHOLD)
        exact.append(np.stack([block[q], j], axis=1)[block[q] != j])
    brute_s = (time.perf_counter() - start) * n / len(sample)
    brute_cpu = (time.process_time() - cpu) * n / len(sample)
    exact = {(min(a, b), max(a, b)) for a, b in np.concatenate(exact).tolist()}
    chosen = np.isin(pairs, sample).any(axis=1)
    found = set(map(tuple, pairs[chosen].tolist()))
    recall = len(exact & found) / len(exact) if exact else 1.0
    import faiss

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # the machine is shared: say how busy it was
    print(f"near duplicates over {n:,} vectors of {dim}-d at cosine ≥ {THRESHOLD} ({copies:,} planted copies)")
    print(f"  {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores, load average {load}")
    print(f"  similar_pairs      {search_s:8.1f} s ({search_cpu:.1f} s of CPU), {len(pairs):,} pairs")
    print(f"  numpy brute force  {brute_s:8.1f} s ({brute_cpu:.1f} s of CPU) extrapolated from {len(sample):,} queries")
    print(f"  brute force / similar_pairs: {brute_s / search_s:.0f}× wall, {brute_cpu / search_cpu:.0f}× CPU")
    print(f"  recall of the exact pairs of those queries: {recall:.4f} ({len(exact & found)}/{len(exact)})")
    scale = (1_000_000 / n) ** 1.5  # the list search grows as n^1.5 (√n lists of √n vectors)
    print(f"  1,000,000 vectors: ~{search_s * scale:.0f} s, ~{search_cpu * scale:.0f} s of CPU (n^1.5; target < 30 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors of the near-duplicate search")
    parser.add_argument("--queries", type=int, default=2000, help="brute-force queries (sample)")
    parser.add_argument("--samples", type=int, default=32, help="samples to embed")
    parser.add_argument("--size", type=int, default=128, help="sample side, px")
    parser.add_argument("--fragment", type=int, default=64, help="fragment side, px")
    parser.add_argument("--threads", type=int, default=2, help="torch and faiss threads")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if not args.skip_embed:
        bench_all_embeddings(args.samples, args.size, args.fragment)
    if not args.skip_search:
        bench_search(args.n, args.queries)


if __name__ == "__main__":
    main()
