"""The pipeline's own costs at scale, with the synthetic source (pixels from each cell's name, no network):
per build size, the time per cell, the driver's peak memory, the job graph's size and the files written and
read per cell (what an object store would bill as PUT / GET / LIST requests); then planning Europe on the
1 km grid in bounded memory (its bbox, land and sea: 19.5 M cells; its land alone is about 8.4 M).

    python bench/scale.py [--cells 1000 10000 100000] [--workers 2] [--patch 8] [--resume]
                          [--plan-europe [FRACTION ...]]

``--cells`` with no sizes builds nothing (``--cells --plan-europe`` plans only). ``--plan-europe`` plans the west
part of Europe's bbox holding each fraction of its cells (1/8, 1/2 and all of it by default), each in a process of
its own, and prints the cells, the seconds, the seconds (wall and CPU) per million cells and the process's peak
memory (and how much of it planning added to the interpreter's, imports done). On a shared machine the CPU time
says more about linearity than the wall time.

Each build runs in a process of its own (the driver, so that its peak memory is its own) on the local runner, by
default with ``--workers`` worker processes (``--mode multi_processing``; ``in_memory`` runs them in the driver).
Every process counts its file system calls under the dataset (an audit hook): files written and read, folders
listed, what an object store would bill as PUT / GET / LIST requests. ``--resume`` builds each size again, killed
(SIGKILL) once half its ranges are recorded, then resumed, and compares every file with the clean build's.
The driver's peak is printed as it stands at the end of each phase (imports / plan / run / end): the run's share
is the local runner's, which works in the driver (it moves every element between the workers' stages); on
Dataflow the driver only plans, submits and reads back. Targets (issue 17): time per cell within 1.3× from 1 k to
100 k cells; the graph's size and the driver's memory flat in the number of cells; planning Europe at 1 km under
1 GB, in time linear in its cells.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CENTRE = (10.0, 48.0)  # lon, lat: central Europe
EUROPE = [-25.0, 34.0, 45.0, 72.0]
FIXED_CELLS = 16  # a build this small is all fixed cost


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


# Every process of a build (the driver and Beam's workers) counts its file system calls under the dataset with an
# audit hook, installed by this sitecustomize on the PYTHONPATH they inherit, and leaves its counts in a file of
# its own (rewritten as it goes: workers are stopped, not shut down).
COUNTING_SITE = """\
import atexit, json, os, sys
_prefix, _folder = os.environ.get("SCALE_BENCH_DATASET"), os.environ.get("SCALE_BENCH_COUNTS")
if _prefix and _folder:
    _counts, _seen = {}, [0]
    def _dump():
        with open(os.path.join(_folder, f"{os.getpid()}.json"), "w") as file:
            json.dump(_counts, file)
    def _hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(_prefix):
            kind = "written" if any(c in str(args[1] or "r") for c in "wax+") else "read"
        elif event in ("os.listdir", "os.scandir") and str(args[0]).startswith(_prefix):
            kind = "listed"
        else:
            return
        _counts[kind] = _counts.get(kind, 0) + 1
        _seen[0] += 1
        if _seen[0] % 50 == 0:
            _dump()
    sys.addaudithook(_hook)
    atexit.register(_dump)
"""


def counting_env(out: Path, counts: Path) -> dict:
    """The environment of a build whose processes count their files under ``out`` into ``counts``."""
    site = counts / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(COUNTING_SITE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path, "SCALE_BENCH_DATASET": str(out), "SCALE_BENCH_COUNTS": str(counts)}


def counted(counts: Path) -> Counter:
    total: Counter = Counter()
    for path in counts.glob("*.json"):
        total.update(json.loads(path.read_text()))
    return total


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_build(cells: int, patch: int, workers: int, mode: str, out: Path) -> dict:
    """One build in this process (the driver): what the parent prints, with the driver's peak as each phase ends:
    planning (and making the graph), the run (the local runner's in the driver: on Dataflow it is not), then the
    read-back and the report."""
    from eo_etl.build import build

    building = sys.modules["eo_etl.build"]  # the module: ``eo_etl.build`` is also the function
    run, phases = building.run_pipeline, {}

    def phased(*args, **kwargs):
        phases["plan_mb"] = peak_mb()
        try:
            return run(*args, **kwargs)
        finally:
            phases["run_mb"] = peak_mb()

    building.run_pipeline = phased
    recipe = recipe_for(cells, out, patch, workers)
    imports = peak_mb()
    size = graph_bytes(recipe, out)
    start = time.perf_counter()
    report = build(recipe, options={"direct_running_mode": mode})
    seconds = time.perf_counter() - start
    return {
        "cells": report.planned, "seconds": seconds, "graph_bytes": size,
        "samples": report.metrics.get("samples written", 0),
        "finished_before": report.metrics.get("cells already finished", 0),
        "imports_mb": imports, **phases, "peak_mb": peak_mb(),
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }  # fmt: skip


def digests(out: Path) -> dict[str, str]:
    """Every file of a dataset but the build's own state and lock, by path: what a user gets."""
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.relative_to(out).parts[0] not in ("_build", "_build.lock")
    }


def killed_and_resumed(cells: int, args, out: Path, clean: dict[str, str]) -> str:
    """The same build again into ``out``, killed (SIGKILL, workers and all) once half its ranges are recorded,
    then resumed: whether every file comes out as the clean build's."""
    from eo_etl.pipeline.plan_rows import plan_ranges

    shutil.rmtree(out)
    command = [sys.executable, __file__, f"--child=build,{cells},{out}", *child_flags(args)]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    samples = out / "_build" / "versions" / "0001" / "samples"
    while process.poll() is None and len(list(samples.glob("*/*.json"))) < cells / 128:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    recorded = len(list(samples.glob("*/*.json")))
    resumed = child(f"--child=build,{cells},{out}", *child_flags(args))
    planned = len(plan_ranges(resumed["cells"]))
    same = digests(out) == clean
    return (f"killed with {recorded} of {planned} ranges recorded, resumed in {resumed['seconds']:.1f} s "
            f"({resumed['finished_before']} cells finished before): every file as the clean build's: "
            f"{same}")  # fmt: skip


def one_plan(bbox: list[float], distance_km: float) -> dict:
    """Plan a box on a grid, streamed to GeoParquet table by table, in this process (the driver's planning)."""
    from eo_etl.pipeline.plan_rows import plan_length
    from eo_etl.plan import plan_bands, write_plan
    from eo_etl.recipe.load import parse_recipe
    from eo_etl.store.location import Location

    recipe = parse_recipe({"name": "plan", "aoi": {"bbox": bbox}, "grid": {"distance_km": distance_km},
                           "time": {"start": "2024-06-01", "end": "2024-06-30"}})  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="eo-etl-plan-"))
    target = Location(folder / "plan.parquet")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, cpu = time.perf_counter(), time.process_time()
    write_plan(plan_bands(recipe), target)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {"cells": plan_length(target), "seconds": seconds, "cpu_seconds": cpu, "imports_mb": before,
              "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "bytes": os.path.getsize(target.native)}  # fmt: skip
    shutil.rmtree(folder)
    return result


def west_part(box: list[float], fraction: float) -> list[float]:
    """The west part of a box spanning ``fraction`` of its longitudes: as large a part of every grid row's cells."""
    west, south, east, north = box
    return [west, south, round(west + fraction * (east - west), 6), north]


def child(*args: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_flags(args) -> list[str]:
    return [f"--patch={args.patch}", f"--workers={args.workers}", f"--mode={args.mode}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="*", default=[1_000, 10_000, 100_000], help="none: no builds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=8, help="pixels per side of each synthetic sample")
    parser.add_argument("--resume", action="store_true",
                        help="build each again, killed halfway and resumed: every file must be the same")  # fmt: skip
    parser.add_argument(
        "--mode",
        choices=["in_memory", "multi_processing"],
        default="multi_processing",
        help="multi_processing: worker processes apart, so the driver's own peak memory shows; in_memory: one "
        "process (its peak is the driver's and the workers' together)",
    )
    parser.add_argument("--plan-europe", type=float, nargs="*", metavar="FRACTION",
                        help="plan these fractions of Europe's bbox at 1 km (default 1/8, 1/2, 1)")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *values = args.child.split(",")
        if kind == "build":
            result = one_build(int(values[0]), args.patch, args.workers, args.mode, Path(values[1]))
        else:
            result = one_plan([float(v) for v in values[1:]], float(values[0]))
        print(json.dumps(result))
        return

    if args.cells:
        builds(args)
    if args.plan_europe is not None:
        plans(args.plan_europe or [1 / 8, 1 / 2, 1.0])


def builds(args) -> None:
    print(f"builds: synthetic source, {args.patch}² px × 4 bands, local runner ({args.mode}), a process each")
    scratch = Path(tempfile.mkdtemp(prefix="eo-etl-scale-"))
    fixed = child(f"--child=build,{FIXED_CELLS},{scratch / 'dataset'}", *child_flags(args))
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"fixed cost (starting the pipeline and its workers, closing the dataset): {fixed['seconds']:.1f} s, "
          f"from a build of {fixed['cells']} cells; 'past fixed' is per cell after it")  # fmt: skip
    print("driver MB: its peak by the end of each phase: imports, plan (and the graph), run (the local runner, in the "
          "driver here, not on Dataflow), end (read-back and report)")  # fmt: skip
    header = f"{'cells':>8} {'s/cell':>9} {'past fixed':>10} {'total s':>8} {'driver MB':>19} {'graph B':>8}"
    print(header + f" {'W/cell':>7} {'R/cell':>7} {'L/cell':>7} {'workers MB':>10}", flush=True)
    baseline = None
    for cells in args.cells:
        scratch = Path(tempfile.mkdtemp(prefix="eo-etl-scale-"))
        out, counts = scratch / "dataset", scratch / "counts"
        r = child(f"--child=build,{cells},{out}", *child_flags(args), env=counting_env(out, counts))
        n, c = r["cells"], counted(counts)
        per, past = r["seconds"] / n, (r["seconds"] - fixed["seconds"]) / n
        baseline = baseline or past
        driver = "/".join(f"{r[k]:.0f}" for k in ("imports_mb", "plan_mb", "run_mb", "peak_mb"))
        print(f"{n:>8} {per * 1000:>7.2f}ms {past * 1000:>8.2f}ms {r['seconds']:>8.1f} {driver:>19} "
              f"{r['graph_bytes']:>8} {c.get('written', 0) / n:>7.3f} {c.get('read', 0) / n:>7.3f} "
              f"{c.get('listed', 0) / n:>7.3f} {r['worker_peak_mb']:>10.0f}  ({past / baseline:.2f}× the first past "
              "fixed)", flush=True)  # fmt: skip
        if args.resume:
            print(f"{'':>8} {killed_and_resumed(cells, args, out, digests(out))}", flush=True)
        shutil.rmtree(scratch, ignore_errors=True)


def plans(fractions: list[float]) -> None:
    """Europe's bbox (or parts of it) planned on the 1 km grid: time linear in cells, memory flat and under 1 GB."""
    print(f"\nplanning Europe's bbox {EUROPE} (west parts) on the 1 km grid, streamed to GeoParquet, a process each:")
    print(f"{'fraction':>8} {'cells':>11} {'seconds':>8} {'s/M cells':>9} {'CPU s/M':>8} {'peak MB':>8} "
          f"{'planning MB':>11}")  # fmt: skip
    first = None
    for fraction in fractions:
        box = west_part(EUROPE, fraction)
        r = child(f"--child=plan,1,{','.join(map(str, box))}")
        per, cpu = r["seconds"] / r["cells"] * 1e6, r["cpu_seconds"] / r["cells"] * 1e6
        first = first or cpu
        print(f"{fraction:>8.3f} {r['cells']:>11,} {r['seconds']:>8.1f} {per:>9.1f} {cpu:>8.1f} {r['peak_mb']:>8.0f} "
              f"{r['peak_mb'] - r['imports_mb']:>11.0f}  ({cpu / first:.2f}× the first's CPU time a cell; "
              f"{r['bytes'] / 1e6:.0f} MB written)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
