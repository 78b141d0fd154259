"""Acquisition benchmark on local COGs of real Sentinel-2 pixels (xarray-spatial's scene, tiled 6 × 9 to
1800 × 1800 px at 10 m so that full 1068 px Major TOM patches fit).

Prints:
- patches per second for whole samples (4 × 10 m bands + SCL at 20 m, cloud ranking, index record) cut by
  ``StacReader.acquire`` from one item of local COGs, on one thread;
- our per-patch read (``StacReader.read``: asset lookup, retry policy, host limit, grid alignment, window
  read) against a bare ``rasterio.open(...).read(window=...)`` of the same window, as a ratio (target ≤ 1.2×).
Both sides open the file for every patch, as a worker does for a new cell.
- remote: the same COGs served over loopback HTTP (tests/servers.py's range server) answering every request
  50 ms late; whole 264 px samples by ``StacReader.acquire`` against a bare rasterio loop reading the same five
  windows with the same GDAL settings (``GDAL_HTTP_OPTIONS``; with GDAL's defaults ``rasterio.open`` waited forever
  on this server), each on the same THREADS threads, in one run: patches per second and HTTP requests per patch
  (target ≤ 1.1× the bare time, no more requests). GDAL's cache of each file is emptied before every run
  (``forget``), so no side reads on what another fetched.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eo_etl.demo import S2_EPSG, raster_asset, raster_item, scene_classification, sentinel2_bands, write_cog  # noqa: E402
from eo_etl.recipe.models import Source  # noqa: E402
from eo_etl.sources.acquire import StacReader  # noqa: E402
from eo_etl.sources.cell import Cell  # noqa: E402
from eo_etl.sources.patch_grid import patch_grid  # noqa: E402
from eo_etl.sources.remote import GDAL_HTTP_OPTIONS, forget  # noqa: E402
from tests.servers import Faults, file_server  # noqa: E402

SIZE = 1068
REPEATS = 5
LATENCY_S = 0.05
THREADS = 4
REMOTE_REPEATS = 5
REMOTE_SIZE = 264  # SSL4EO-S12's patch: small reads, where latency and request counts decide
REMOTE_OFFSETS = [(0, 0), (300, 200), (600, 400), (1500, 1500), (100, 1300), (1200, 0), (0, 900), (900, 1000)]


def tiled_scene(folder: Path) -> tuple[object, dict[str, Path]]:
    bands = sentinel2_bands()
    bands = {b: bands[b] for b in ("B02", "B03", "B04", "B08")}
    bands["SCL"] = scene_classification(bands)
    item = None
    paths = {}
    for band, (pixels, transform) in bands.items():
        big = np.tile(pixels, (9, 6))
        paths[band] = write_cog(folder / f"{band}.tif", big, transform, S2_EPSG, 0)
        if item is None:
            bounds = rasterio.transform.array_bounds(*big.shape, transform)
            item = raster_item("bench", "sentinel-2-l2a", datetime(2019, 3, 15, tzinfo=UTC), S2_EPSG, bounds, {})
            item.properties["eo:cloud_cover"] = 0.0
        item.add_asset("scl" if band == "SCL" else band, raster_asset(str(paths[band]), big, transform, 0))
    return item, paths


def main(parts: list[str]) -> None:
    """``parts``: local, remote (both when none is named)."""
    with tempfile.TemporaryDirectory() as tmp:
        item, paths = tiled_scene(Path(tmp))
        if not parts or "local" in parts:
            local(item, paths)
        if not parts or "remote" in parts:
            remote(item, paths, Path(tmp))


def local(item, paths: dict[str, Path]) -> None:
    if True:  # one block with the remote case's setup below
        source = Source(
            name="s2", url="unused", collection="sentinel-2-l2a", bands=["B02", "B03", "B04", "B08", "SCL"],
            resolution_m=10, patch_size=SIZE,
        )  # fmt: skip
        reader = StacReader(source, (datetime(2019, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)))
        x0, y1 = 600000.0, 4700020.0
        offsets = [(0, 0), (300, 200), (600, 400), (732, 732), (100, 700)]  # whole 1068 px patches inside
        grids = [
            patch_grid(
                S2_EPSG, (x0 + 10 * c, y1 - 10 * (r + SIZE), x0 + 10 * (c + SIZE), y1 - 10 * r), 10, SIZE, (x0, y1)
            )  # fmt: skip
            for c, r in offsets
        ]

        def ours():
            for grid in grids:
                reader.read(item, "B02", grid)

        def bare():
            for c, r in offsets:
                with rasterio.open(paths["B02"]) as src:
                    src.read(1, window=Window(c, r, SIZE, SIZE))

        for grid, (c, r) in zip(grids, offsets):  # same pixels, or the comparison means nothing
            with rasterio.open(paths["B02"]) as src:
                assert np.array_equal(reader.read(item, "B02", grid)[0], src.read(1, window=Window(c, r, SIZE, SIZE)))
        t_ours = min(_time(ours) for _ in range(REPEATS)) / len(grids)
        t_bare = min(_time(bare) for _ in range(REPEATS)) / len(grids)
        print(f"one 1068 px band read: ours {1000 * t_ours:.1f} ms, bare rasterio {1000 * t_bare:.1f} ms "
              f"→ ratio {t_ours / t_bare:.2f}× (target ≤ 1.2×)")  # fmt: skip

        cells = []
        for i, grid in enumerate(grids):
            left, bottom, right, top = grid.bounds
            cells.append(Cell(f"cell{i}", 0, i, S2_EPSG, (left, bottom, right, top), 0.0, 0.0))
        start = time.perf_counter()
        for _ in range(REPEATS):
            samples = [reader.acquire(cell, [item]) for cell in cells]
        elapsed = time.perf_counter() - start
        assert all(s.status == "ok" and s.nodata_fraction == 0 for s in samples), [s.reason for s in samples]
        n = REPEATS * len(cells)
        print(f"whole samples (5 bands, 1068 × 1068 px, cloud ranking): {n / elapsed:.1f} patches/s on one thread")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cells_at(offsets: list[tuple[int, int]], size: int) -> list[Cell]:
    """Cells whose ``size`` px patch lies at ``offsets`` (col, row) of the tiled scene."""
    x0, y1 = 600000.0, 4700020.0
    bounds = [(x0 + 10 * c, y1 - 10 * (r + size), x0 + 10 * (c + size), y1 - 10 * r) for c, r in offsets]
    return [Cell(f"cell{i}", 0, i, S2_EPSG, box, 0.0, 0.0) for i, box in enumerate(bounds)]


def remote(item, paths: dict[str, Path], folder: Path) -> None:
    source = Source(
        name="s2", url="unused", collection="sentinel-2-l2a", bands=["B02", "B03", "B04", "B08", "SCL"],
        resolution_m=10, patch_size=REMOTE_SIZE,
    )  # fmt: skip
    reader = StacReader(source, (datetime(2019, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)))
    cells = cells_at(REMOTE_OFFSETS, REMOTE_SIZE)
    faults = Faults()
    with file_server(folder, faults, latency_s=LATENCY_S) as url:
        served = item.clone()
        for asset in served.assets.values():
            asset.href = f"{url}/{Path(asset.href).name}"
        urls = {band: f"/vsicurl/{url}/{path.name}" for band, path in paths.items()}

        def ours() -> list:
            with ThreadPoolExecutor(THREADS) as pool:
                return list(pool.map(lambda cell: reader.acquire(cell, [served]), cells))

        def bare(settings: dict) -> list:
            def patch(offset: tuple[int, int]) -> list[np.ndarray]:
                c, r = offset
                with rasterio.Env(**settings):
                    out = []
                    for band in source.bands:
                        step = 2 if band == "SCL" else 1  # SCL is 20 m: its window, brought to 10 m (nearest)
                        size = REMOTE_SIZE
                        with rasterio.open(urls[band]) as src:
                            window = Window(c // step, r // step, size // step, size // step)
                            out.append(src.read(1, window=window, out_shape=(size, size)))
                    return out

            with ThreadPoolExecutor(THREADS) as pool:
                return list(pool.map(patch, REMOTE_OFFSETS))

        sides = {"ours": ours, "bare rasterio": lambda: bare(GDAL_HTTP_OPTIONS)}
        times, requests = {name: [] for name in sides}, {name: [] for name in sides}
        results = {}
        for _ in range(REMOTE_REPEATS):
            for name, side in sides.items():
                for path in urls.values():
                    forget(path)
                before = len(faults.requests)
                start = time.perf_counter()
                results[name] = side()
                times[name].append(time.perf_counter() - start)
                requests[name].append(len(faults.requests) - before)
    samples = results["ours"]
    assert all(s.status == "ok" for s in samples), [s.reason for s in samples]
    for sample, patch in zip(samples, results["bare rasterio"]):  # same pixels, or the comparison means nothing
        assert np.array_equal(sample.pixels, np.stack(patch))
    n = len(cells)
    print(f"remote: {n} whole samples (5 bands, {REMOTE_SIZE} × {REMOTE_SIZE} px) over loopback HTTP answering "
          f"{1000 * LATENCY_S:.0f} ms late, {THREADS} threads (medians of {REMOTE_REPEATS} interleaved runs, "
          "GDAL's cache emptied before each)")  # fmt: skip
    t_ours = statistics.median(times["ours"])
    for name in sides:
        t, asked = statistics.median(times[name]), statistics.median(requests[name])
        ratio = "" if name == "ours" else f"  → ours {t_ours / t:.2f}× its time"
        print(f"  {name:<24} {n / t:5.2f} patches/s, {asked / n:5.1f} HTTP requests a patch{ratio}")
    print("  (target: ≤ 1.1× the bare loop's time, no more requests than it)")


if __name__ == "__main__":
    main(sys.argv[1:])
