"""Storage benchmark on real Sentinel-2 pixels (the six 10/20 m bands of xarray-spatial's scene, uint16).

Prints:
- write and read throughput (MB/s of raw pixels) of the sharded Zarr store (``ZarrWriter``, blosc-zstd,
  16 samples a shard) against a raw ``.npy`` file per shard, the baseline, in the same run, and the
  ratio; 96 samples of 6 × 192 × 192 px cut at scattered places of the scene;
- compression against quality for the same 6 non-overlapping 100 × 100 px samples (the scene tiled
  2 × 3, so no sample repeats another's pixels): bits per pixel per band and PSNR for Zarr zstd
  (lossless), ffv1 16-bit (lossless) and libx265 12-bit at two CRFs. The anchor: xarrayvideo reports
  ~1.2 bits per pixel per band at ~56 dB on Sentinel-2 cubes (time series of one place, where frames
  resemble each other far more than different places do).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from affine import Affine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eo_etl.demo import S2_EPSG, sentinel2_bands  # noqa: E402
from eo_etl.sample import Sample  # noqa: E402
from eo_etl.store.video import VideoOptions, band_summary, write_cube  # noqa: E402
from eo_etl.store.zarr import PixelLayout, ZarrWriter  # noqa: E402

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
SHARD = 16
REPEATS = 3


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


def best_of(function) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def throughput(stack: np.ndarray, origin: Affine, folder: Path) -> None:
    rng = np.random.default_rng(0)
    size = 192
    places = [(int(rng.integers(0, 200 - size + 1)), int(rng.integers(0, 300 - size + 1))) for _ in range(96)]
    samples = samples_at(stack, origin, places, size)
    megabytes = sum(s.pixels.nbytes for s in samples) / 1e6
    shards = [samples[k : k + SHARD] for k in range(0, len(samples), SHARD)]

    def write_zarr():
        shutil.rmtree(folder / "p.zarr", ignore_errors=True)
        writer = ZarrWriter(folder / "p.zarr", "s2", PixelLayout.of(samples[0]), capacity=96, shard_size=SHARD)
        for k, shard in enumerate(shards):
            writer.write_shard(k, shard)
        writer.close(len(samples))

    def write_npy():
        shutil.rmtree(folder / "npy", ignore_errors=True)
        (folder / "npy").mkdir()
        for k, shard in enumerate(shards):
            np.save(folder / "npy" / f"{k}.npy", np.stack([s.pixels for s in shard]))

    def read_zarr():
        import zarr

        return zarr.open_array(folder / "p.zarr", path="s2/pixels", mode="r")[:]

    def read_npy():
        return np.concatenate([np.load(folder / "npy" / f"{k}.npy") for k in range(len(shards))])

    zarr_write, npy_write = best_of(write_zarr), best_of(write_npy)
    zarr_read, npy_read = best_of(read_zarr), best_of(read_npy)
    assert np.array_equal(read_zarr(), read_npy())
    stored = sum(p.stat().st_size for p in (folder / "p.zarr").rglob("*") if p.is_file())
    print(f"{len(samples)} samples, {megabytes:.1f} MB of pixels; Zarr holds them in {stored / 1e6:.1f} MB")
    print(f"  write: Zarr {megabytes / zarr_write:7.1f} MB/s   .npy {megabytes / npy_write:7.1f} MB/s   "
          f"ratio {zarr_write / npy_write:.2f}× the .npy time")  # fmt: skip
    print(f"  read:  Zarr {megabytes / zarr_read:7.1f} MB/s   .npy {megabytes / npy_read:7.1f} MB/s   "
          f"ratio {zarr_read / npy_read:.2f}× the .npy time")  # fmt: skip


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


def main() -> None:
    stack, origin = scene()
    with tempfile.TemporaryDirectory() as tmp:
        throughput(stack, origin, Path(tmp))
        compression(stack, origin, Path(tmp))


if __name__ == "__main__":
    main()
