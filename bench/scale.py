"""The pipeline's own costs at scale, with the synthetic source (pixels from each cell's name, no network):
per build size, the time per cell, the driver's peak memory, the job graph's size and the files written and
read per cell (what an object store would bill as PUT / GET / LIST requests); then planning Europe on the
1 km grid (about 8.4 M cells) in bounded memory.

    python bench/scale.py [--cells 1000 10000 100000] [--workers 2] [--patch 8] [--plan-europe]

Each build runs in a process of its own (so that peak memory is its own), on the local runner: in one process
(``--mode in_memory``, the default: the peak is then the driver's and the workers' together, and the file system
calls under the dataset are counted by an audit hook; files in the multi-process mode are not counted), or with
``--workers`` worker processes (``--mode multi_processing``: the driver's own peak, the largest worker's apart).
Targets (issue 17): time per cell within 1.3× from 1 k to 100 k cells; the graph's size and the driver's memory
flat in the number of cells; planning Europe at 1 km under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CENTRE = (10.0, 48.0)  # lon, lat: central Europe
EUROPE = [-25.0, 34.0, 45.0, 72.0]


def bbox_of(cells: int, distance_km: float = 10.0) -> list[float]:
    """A box around ``CENTRE`` holding about ``cells`` cells of the grid (2:1 in degrees, lon:lat)."""
    from eo_etl.grid import get_grid

    grid = get_grid("majortom", distance_km)
    lo, hi = 0.01, 60.0
    for _ in range(40):  # the half-height whose box holds the cells, by bisection
        half = (lo + hi) / 2
        box = (CENTRE[0] - 2 * half, CENTRE[1] - half, CENTRE[0] + 2 * half, CENTRE[1] + half)
        lo, hi = (half, hi) if grid.count_in_bbox(*box) < cells else (lo, half)
    return [round(v, 6) for v in (CENTRE[0] - 2 * hi, CENTRE[1] - hi, CENTRE[0] + 2 * hi, CENTRE[1] + hi)]


def recipe_for(cells: int, out: Path, patch: int, workers: int):
    from eo_etl.recipe.load import parse_recipe

    return parse_recipe({
        "name": "scale",
        "aoi": {"bbox": bbox_of(cells)},
        "time": {"start": "2024-06-01", "end": "2024-06-30"},
        "sources": [{"kind": "synthetic", "collection": "sentinel-2-l2a", "bands": ["B02", "B03", "B04", "B08"],
                     "patch_size": patch}],
        "outputs": {"path": str(out), "formats": ["zarr"], "shard_size": 256},
        "runner": {"kind": "direct", "workers": workers},
    })  # fmt: skip


def graph_bytes(recipe, out: Path) -> int:
    """The serialized job graph (the pipeline proto a runner is sent)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from eo_etl.pipeline.run import make_pipeline
    from eo_etl.store.location import Location

    pipeline = make_pipeline(recipe, Location.of(out), 1, PipelineOptions(["--runner=FnApiRunner"]))
    return len(pipeline.to_runner_api().SerializeToString())


def count_files(out: Path) -> Counter:
    """File system calls under ``out`` from here on: opens for writing and reading, renames, listings."""
    counts: Counter = Counter()
    prefix = str(out)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str) and args[0].startswith(prefix):
            mode = args[1] or "r"
            counts["written" if any(c in str(mode) for c in "wax+") else "read"] += 1
        elif event in ("os.listdir", "os.scandir") and str(args[0]).startswith(prefix):
            counts["listed"] += 1

    sys.addaudithook(hook)
    return counts


def one_build(cells: int, patch: int, workers: int, resume: bool, mode: str) -> dict:
    """One build in this process: what the parent prints."""
    from eo_etl.build import build

    out = Path(tempfile.mkdtemp(prefix="eo-etl-scale-")) / "dataset"
    recipe = recipe_for(cells, out, patch, workers)
    size = graph_bytes(recipe, out)
    counts = count_files(out)
    start = time.perf_counter()
    report = build(recipe, options={"direct_running_mode": mode})
    seconds = time.perf_counter() - start
    result = {
        "cells": report.planned, "seconds": seconds, "graph_bytes": size, "counts": dict(counts),
        "samples": report.metrics.get("samples written", 0),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }  # fmt: skip
    if resume:  # a second build of the same folder: nothing to acquire, the same dataset
        index = (out / "index.parquet").read_bytes()
        again = build(recipe, options={"direct_running_mode": mode})
        result["resumed_same"] = (out / "index.parquet").read_bytes() == index
        result["resumed_finished"] = again.metrics.get("cells already finished", 0)
    return result


def one_plan(bbox: list[float], distance_km: float) -> dict:
    """Plan a box on a grid, streamed to GeoParquet band by band, in this process."""
    from eo_etl.pipeline.plan_rows import plan_length
    from eo_etl.plan import plan_bands, write_plan
    from eo_etl.recipe.load import parse_recipe
    from eo_etl.store.location import Location

    recipe = parse_recipe({"name": "plan", "aoi": {"bbox": bbox}, "grid": {"distance_km": distance_km},
                           "time": {"start": "2024-06-01", "end": "2024-06-30"}})  # fmt: skip
    target = Location(Path(tempfile.mkdtemp(prefix="eo-etl-plan-")) / "plan.parquet")
    start = time.perf_counter()
    write_plan(plan_bands(recipe), target)
    seconds = time.perf_counter() - start
    return {"cells": plan_length(target), "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bytes": os.path.getsize(target.native)}  # fmt: skip


def child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=8, help="pixels per side of each synthetic sample")
    parser.add_argument("--resume", action="store_true", help="build each twice: the second must change nothing")
    parser.add_argument(
        "--mode",
        choices=["in_memory", "multi_processing"],
        default="in_memory",
        help="in_memory: one process, its file calls counted; multi_processing: worker processes "
        "apart, so the driver's own peak memory shows (files not counted)",
    )
    parser.add_argument("--plan-europe", action="store_true", help="plan Europe on the 1 km grid (about 8.4 M)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *values = args.child.split(",")
        if kind == "build":
            result = one_build(int(values[0]), args.patch, args.workers, args.resume, args.mode)
        else:
            result = one_plan([float(v) for v in values[1:]], float(values[0]))
        print(json.dumps(result))
        return

    print(f"builds: synthetic source, {args.patch}² px × 4 bands, local runner ({args.mode}), a process each")
    header = f"{'cells':>8} {'s/cell':>9} {'total s':>8} {'peak MB':>8} {'graph B':>8} {'W/cell':>7} {'R/cell':>7}"
    print(header + f" {'L/cell':>7} {'workers MB':>10}")
    baseline = None
    for cells in args.cells:
        extra = ["--resume"] if args.resume else []
        extra.append(f"--mode={args.mode}")
        r = child(f"--child=build,{cells}", f"--patch={args.patch}", f"--workers={args.workers}", *extra)
        n, c = r["cells"], r["counts"]
        per = r["seconds"] / n
        baseline = baseline or per
        print(f"{n:>8} {per * 1000:>7.2f}ms {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} {r['graph_bytes']:>8} "
              f"{c.get('written', 0) / n:>7.2f} {c.get('read', 0) / n:>7.2f} {c.get('listed', 0) / n:>7.3f}"
              f" {r['worker_peak_mb']:>10.0f}"
              f"  ({per / baseline:.2f}× the first)"
              + (f"  rerun: {r['resumed_finished']} finished before, index same: {r['resumed_same']}"
                 if args.resume else ""))  # fmt: skip
    if args.plan_europe:
        print("\nplanning, streamed to GeoParquet band by band:")
        for distance, box in ((10.0, EUROPE), (1.0, [5.0, 45.0, 15.0, 55.0]), (1.0, EUROPE)):
            r = child(f"--child=plan,{distance},{','.join(map(str, box))}")
            print(
                f"  {distance:g} km grid, bbox {box}: {r['cells']:>10,} cells in {r['seconds']:6.1f} s "
                f"({r['seconds'] / r['cells'] * 1e6:.2f} µs/cell), peak {r['peak_mb']:.0f} MB, "
                f"{r['bytes'] / 1e6:.0f} MB written"
            )


if __name__ == "__main__":
    main()
