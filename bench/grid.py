"""Grid benchmark: vectorised Major TOM grid against a straightforward per-point implementation.

Prints, for the 10 km grid:
- the time to map 1,000,000 random points to cells, and the ratio of the per-point baseline to it;
- the time to enumerate the whole grid (row/col, grid-point lat/lon, names, UTM zones), and the ratio of
  a per-row, per-cell loop to it.
The baseline is tests/reference_grid.py, a literal restatement of the reference's algorithm; it runs on
a sample in the same process and is scaled to the full count (it is linear in points and cells).
Targets: 1M points well under a second on one core; the whole grid under 3 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eo_etl.grid import MajorTomGrid, utm_epsg  # noqa: E402
from tests.reference_grid import ReferenceGrid, utm_epsg_of  # noqa: E402

N_POINTS = 1_000_000
BASELINE_POINTS = 20_000
BASELINE_ROW_STRIDE = 20


def best_of(runs: int, fn):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_points(rng: np.random.Generator) -> None:
    lat = rng.uniform(-84.9, 84.9, N_POINTS)
    lon = rng.uniform(-180.0, 180.0, N_POINTS)

    def vectorised():
        grid = MajorTomGrid(10)  # building the grid is part of the job
        rows, cols, _ = grid.locate(lat, lon)
        return grid.names(rows, cols)

    fast, names = best_of(3, vectorised)

    ref = ReferenceGrid(10)
    for r in range(len(ref.lats)):  # the baseline's rows are built up front, not timed per point
        ref.row(r)
    start = time.perf_counter()
    slow_names = [ref.locate(a, o) for a, o in zip(lat[:BASELINE_POINTS], lon[:BASELINE_POINTS])]
    slow = (time.perf_counter() - start) * N_POINTS / BASELINE_POINTS
    assert slow_names == names[:BASELINE_POINTS].tolist(), "vectorised and per-point grids disagree"
    print(
        f"points → cells   {N_POINTS:,} points: {fast:.3f} s vectorised, {slow:.1f} s per-point "
        f"(from {BASELINE_POINTS:,})  ratio {slow / fast:,.0f}×  target < 1 s: {'met' if fast < 1 else 'MISSED'}"
    )


def bench_enumeration() -> None:
    def vectorised():
        grid = MajorTomGrid(10)
        rows, cols = grid.all_cells()
        lat, lon = grid.grid_point(rows, cols)
        return grid.names(rows, cols), utm_epsg(lat, lon)

    fast, (names, epsg) = best_of(3, vectorised)

    def per_cell(row_indices):
        ref = ReferenceGrid(10)
        out_names, out_epsg = [], []
        for r in row_indices:
            lons, cols = ref.row(r)
            for col, lon in zip(cols, lons):
                name = f"{ref.rows[r]}_{col}"
                out_names.append(name)
                out_epsg.append(utm_epsg_of(float(ref.lats[r]), float(lon)))
        return out_names, out_epsg

    ref_rows = len(ReferenceGrid(10).lats)
    sample = range(0, ref_rows, BASELINE_ROW_STRIDE)
    start = time.perf_counter()
    slow_names, _ = per_cell(sample)
    elapsed = time.perf_counter() - start
    slow = elapsed * len(names) / len(slow_names)
    assert set(slow_names) <= set(names.tolist()), "enumerations disagree"
    print(
        f"whole 10 km grid {len(names):,} cells: {fast:.3f} s vectorised, {slow:.1f} s per-cell "
        f"(from {len(slow_names):,})  ratio {slow / fast:,.0f}×  target < 3 s: {'met' if fast < 3 else 'MISSED'}"
    )


if __name__ == "__main__":
    bench_points(np.random.default_rng(42))
    bench_enumeration()
