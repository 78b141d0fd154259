"""Video-codec cubes: lossless modes bit-exact, lossy modes meet the PSNR they record, masks exact in every mode,
random access by seeking, keyframes where asked, the sidecar, and a folder whose writer died."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest

from eo_etl.demo import scene_classification, sentinel2_bands
from eo_etl.store import video
from eo_etl.store.video import VideoOptions, band_summary, read_cube, read_sidecar, write_cube

S2_BANDS = ["B02", "B03", "B04", "B08", "B11", "B12", "SCL"]
LOSSY = VideoOptions(lossy=True)


@pytest.fixture(scope="module")
def s2_cube() -> np.ndarray:
    """Six 64 × 64 frames cut from different places of the real scene (frames are different samples), the six
    reflectance bands plus SCL (uint8 in the product, here in the cube's uint16) with some cloud."""
    bands = sentinel2_bands()
    scl, _ = scene_classification(bands, cloudy_rows=slice(20, 40))
    layers = [bands[name][0] for name in S2_BANDS[:-1]] + [np.kron(scl, np.ones((2, 2), scl.dtype))]
    spots = [(0, 0), (0, 128), (64, 64), (64, 192), (128, 0), (128, 236)]
    cube = np.stack([np.stack([layer[y : y + 64, x : x + 64] for layer in layers]) for y, x in spots])
    assert cube.dtype == np.uint16 and {5, 9} <= set(np.unique(cube[:, -1])) <= {4, 5, 9}
    return cube


def psnr(original: np.ndarray, decoded: np.ndarray, peak: float) -> float:
    mse = np.mean((original.astype(np.float64) - decoded) ** 2)
    return 10 * math.log10(peak**2 / mse)


def test_lossless_s2_cube_is_bit_exact_and_masks_get_8_bit_planes(tmp_path, s2_cube):
    sidecar = write_cube(tmp_path / "cube", s2_cube, S2_BANDS, masks=["SCL"])
    back = read_cube(tmp_path / "cube")
    assert back.dtype == np.uint16 and np.array_equal(back, s2_cube)
    assert [(s["codec"], s["pix_fmt"], s["bands"]) for s in sidecar["streams"]] == [
        ("ffv1", "yuv444p16le", ["B02", "B03", "B04"]),
        ("ffv1", "yuv444p16le", ["B08", "B11", "B12"]),
        ("ffv1", "gray", ["SCL"]),  # every value fits 8 bits
    ]
    assert all(b["lossless"] and b["psnr_db"] is None and b["ssim"] == 1.0 for b in sidecar["bands"])


@pytest.mark.parametrize(
    ("dtype", "values"),
    [(np.uint16, [0, 1, 65534, 65535]), (np.uint8, [0, 1, 254, 255]), (np.int16, [-32768, -1, 0, 32767])],
)
def test_lossless_keeps_every_value_of_the_type(tmp_path, dtype, values):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    cube = rng.integers(info.min, info.max, (3, 2, 19, 23), endpoint=True).astype(dtype)
    cube.flat[: len(values)] = values  # the extremes, surely
    cube[1, 1] = values[-1]  # a constant plane at the top of the range
    sidecar = write_cube(tmp_path / "cube", cube, ["a", "b"])
    back = read_cube(tmp_path / "cube")
    assert back.dtype == dtype and np.array_equal(back, cube)
    assert [b["offset"] for b in sidecar["bands"]] == [int(info.min)] * 2  # signed types offset into unsigned
    depth = 8 if info.bits == 8 else 16
    assert sidecar["streams"][0]["pix_fmt"] == ("yuv444p" if depth == 8 else "yuv444p16le")


@pytest.mark.parametrize(("count", "height", "width"), [(1, 1, 1), (2, 5, 7), (4, 64, 64), (7, 33, 65)])
def test_lossless_odd_band_counts_and_sizes(tmp_path, count, height, width):
    cube = np.random.default_rng(count).integers(0, 65536, (3, count, height, width)).astype(np.uint16)
    cube[0, :, 0, 0] = 65535
    sidecar = write_cube(tmp_path / "cube", cube, [f"b{i}" for i in range(count)])
    assert np.array_equal(read_cube(tmp_path / "cube"), cube)
    # three bands a stream; a lone band its own gray stream
    assert [len(s["bands"]) for s in sidecar["streams"]] == [min(3, count - k) for k in range(0, count, 3)]
    assert [s["pix_fmt"] for s in sidecar["streams"]][-1] == ("gray16le" if count % 3 == 1 else "yuv444p16le")


def test_lossy_bands_meet_their_recorded_psnr_and_masks_stay_exact(tmp_path, s2_cube):
    sidecar = write_cube(tmp_path / "cube", s2_cube, S2_BANDS, masks=["SCL"], options=LOSSY)
    back = read_cube(tmp_path / "cube")
    assert back.dtype == np.uint16
    for b, band in enumerate(sidecar["bands"][:-1]):
        lo, hi = band["range"]
        assert (lo, hi) == (s2_cube[:, b].min(), s2_cube[:, b].max())
        assert lo <= back[:, b].min() and back[:, b].max() <= hi  # clipped to the band's range
        measured = psnr(s2_cube[:, b], back[:, b], hi - lo)
        assert measured == pytest.approx(band["psnr_db"], abs=1e-3), band["name"]
        assert measured > 45, band["name"]  # measured ~62 dB at crf 6 on these frames
        assert band["ssim"] > 0.99 and not band["lossless"]
        assert np.abs(back[:, b].astype(int) - s2_cube[:, b]).max() < 0.02 * (hi - lo)
    assert np.array_equal(back[:, -1], s2_cube[:, -1])  # SCL
    x265 = [s for s in sidecar["streams"] if s["codec"] == "libx265"]
    assert [s["bands"] for s in x265] == [["B02", "B03", "B04"], ["B08", "B11", "B12"]]
    assert all(s["pix_fmt"] == "yuv444p12le" and s["crf"] == 6 for s in x265)
    assert sidecar["streams"][-1] | {"bytes": 0, "bits_per_pixel": 0} == {
        "file": "stream-2.mkv", "kind": "mask", "bands": ["SCL"], "codec": "ffv1", "pix_fmt": "gray",
        "lossless": True, "crf": None, "preset": None, "keyframe_interval": 1, "coded_size": [64, 64],
        "bytes": 0, "bits_per_pixel": 0,
    }  # fmt: skip
    # a higher crf costs fewer bits and gives a lower PSNR
    rough = write_cube(tmp_path / "rough", s2_cube, S2_BANDS, masks=["SCL"], options=VideoOptions(lossy=True, crf=20))
    for fine, coarse in zip(sidecar["bands"][:-1], rough["bands"][:-1]):
        assert coarse["bits_per_pixel"] < fine["bits_per_pixel"] and coarse["psnr_db"] < fine["psnr_db"]


def test_lossy_lone_band_small_frames_and_other_types(tmp_path, s2_cube):
    # 4 bands: a stream of three and a gray12le one; 9 x 13 frames are padded up to x265's 16 and cropped back
    cube = (s2_cube[:, :4, :9, :13].astype(np.int32) - 1500).astype(np.int16)
    sidecar = write_cube(tmp_path / "cube", cube, S2_BANDS[:4], options=LOSSY)
    back = read_cube(tmp_path / "cube")
    assert back.dtype == np.int16 and back.shape == cube.shape
    assert [s["pix_fmt"] for s in sidecar["streams"]] == ["yuv444p12le", "gray12le"]
    assert {tuple(s["coded_size"]) for s in sidecar["streams"]} == {(16, 16)}
    for b, band in enumerate(sidecar["bands"]):
        lo, hi = band["range"]
        assert psnr(cube[:, b], back[:, b], hi - lo) == pytest.approx(band["psnr_db"], abs=1e-3)
    # a constant band is exact even when lossy
    flat = np.full((2, 1, 20, 20), 7, np.uint8)
    sidecar = write_cube(tmp_path / "flat", flat, ["a"], options=LOSSY)
    assert np.array_equal(read_cube(tmp_path / "flat"), flat) and sidecar["bands"][0]["psnr_db"] is None


def test_lossless_ranges_are_those_of_the_valid_pixels_as_the_range_rule_says(tmp_path, s2_cube):
    cube = s2_cube[:, :3].copy()
    cube[1, :, :20, :] = 0  # a swath edge
    cube[:, 2] = 0  # a band with no data at all
    sidecar = write_cube(tmp_path / "cube", cube, S2_BANDS[:3], nodata=0)
    for b, band in enumerate(sidecar["bands"][:2]):
        valid = cube[:, b][cube[:, b] != 0]
        assert band["lossless"] and band["range"] == [valid.min(), valid.max()] and valid.min() > 0
    assert sidecar["bands"][2]["range"] is None
    np.testing.assert_array_equal(read_cube(tmp_path / "cube"), cube)


def test_nodata_is_exact_in_lossy_mode_and_excluded_from_the_range(tmp_path, s2_cube):
    cube = s2_cube[:, :3].copy()
    cube[1, :, :20, :] = 0  # a swath edge
    cube[2, 1, 30:34, 30:34] = 0  # a hole in one band
    cube[3] = 0  # a frame with no data
    sidecar = write_cube(tmp_path / "cube", cube, S2_BANDS[:3], nodata=0, options=LOSSY)
    back = read_cube(tmp_path / "cube")
    assert np.array_equal(back == 0, cube == 0)
    assert sidecar["nodata"] == 0 and sidecar["streams"][-1]["kind"] == "valid"
    for b, band in enumerate(sidecar["bands"]):
        valid = cube[:, b] != 0
        assert band["range"] == [cube[:, b][valid].min(), cube[:, b][valid].max()]
        assert band["valid"]["stream"] == len(sidecar["streams"]) - 1
        lo, hi = band["range"]
        measured = psnr(cube[:, b][valid], back[:, b][valid], hi - lo)
        assert measured == pytest.approx(band["psnr_db"], abs=1e-3) and measured > 45


def test_bands_with_the_same_nodata_pixels_share_one_validity_plane(tmp_path, s2_cube):
    cube = s2_cube[:, :4].copy()
    cube[1, :, :20, :] = 0  # a swath edge: every band's
    cube[2, 3, 30:34, 30:34] = 0  # a hole in the fourth band alone
    sidecar = write_cube(tmp_path / "cube", cube, S2_BANDS[:4], nodata=0, options=LOSSY)
    places = [(band["valid"]["stream"], band["valid"]["plane"]) for band in sidecar["bands"]]
    assert places[0] == places[1] == places[2] != places[3]
    validity = [stream for stream in sidecar["streams"] if stream["kind"] == "valid"]
    assert len(validity) == 1 and validity[0]["bands"] == ["B02", "B08"]  # one plane each for the two patterns
    assert np.array_equal(read_cube(tmp_path / "cube") == 0, cube == 0)


@pytest.mark.parametrize("options", [VideoOptions(), VideoOptions(lossy=True, keyframe_interval=4)])
def test_frames_and_bands_read_alone_equal_the_same_slice_of_a_full_read(tmp_path, monkeypatch, options):
    cube = np.random.default_rng(3).integers(900, 1300, (10, 4, 24, 32)).astype(np.uint16)
    write_cube(tmp_path / "cube", cube, ["a", "b", "c", "d"], masks=["d"], options=options)
    full = read_cube(tmp_path / "cube")
    decoded = []  # frame indices the decoders gave, to see the seeks
    real_open = av.open

    class Counting:
        def __init__(self, container):
            self.container = container

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.container.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.container, name)

        def decode(self, *args, **kwargs):
            for frame in self.container.decode(*args, **kwargs):
                decoded.append(round(frame.pts * frame.time_base))
                yield frame

    monkeypatch.setattr(video.av, "open", lambda *args, **kwargs: Counting(real_open(*args, **kwargs)))
    k = 4 if options.lossy else 1
    for frames, bands in [([7], ["b"]), ([9, 2, 9], ["d", "a"]), (slice(1, 10, 4), None), ([-1], ["c"])]:
        decoded.clear()
        part = read_cube(tmp_path / "cube", bands=bands, frames=frames)
        columns = [0, 1, 2, 3] if bands is None else ["abcd".index(name) for name in bands]
        assert np.array_equal(part, full[frames][:, columns])
        wanted = sorted(set(np.arange(10)[frames].tolist()))
        streams = len({name == "d" for name in bands or "abcd"})  # a, b, c share a stream; d has its own
        # the decoders started at the first wanted frame's keyframe, not at the start of the file, and decoded
        # at most a keyframe interval of frames for each wanted one
        assert min(decoded) == min(wanted) // k * k
        assert len(decoded) <= len(wanted) * k * streams
    with pytest.raises(KeyError):
        read_cube(tmp_path / "cube", bands=["e"])
    with pytest.raises(IndexError):
        read_cube(tmp_path / "cube", frames=[10])


@pytest.mark.parametrize("keyframe_interval", [1, 3, 8])
def test_keyframes_come_every_keyframe_interval_frames(tmp_path, s2_cube, keyframe_interval):
    options = VideoOptions(lossy=True, keyframe_interval=keyframe_interval)
    cube = np.concatenate([s2_cube, s2_cube[..., ::-1]])[:, [0, 1, 2, 6]]  # 12 frames
    sidecar = write_cube(tmp_path / "cube", cube, ["B02", "B03", "B04", "SCL"], masks=["SCL"], options=options)
    for stream in sidecar["streams"]:
        with av.open(str(tmp_path / "cube" / stream["file"])) as container:
            track = container.streams.video[0]
            keys = {round(p.pts * track.time_base): p.is_keyframe for p in container.demux(track) if p.size}
        k = stream["keyframe_interval"]
        assert k == (keyframe_interval if stream["codec"] == "libx265" else 1)  # ffv1 is intra-only
        assert keys == {i: i % k == 0 for i in range(12)}
    # inter frames at 64 px wide: x265 drifted (31-55 dB, varying) until such frames got a 65th column
    assert sidecar["streams"][0]["coded_size"] == [64, 64 if keyframe_interval == 1 else 65]
    assert all(band["psnr_db"] > 50 for band in sidecar["bands"][:3])
    assert np.array_equal(read_cube(tmp_path / "cube", bands=["SCL"]), cube[:, 3:])


def test_sidecar_describes_streams_and_bands(tmp_path, s2_cube):
    sidecar = write_cube(tmp_path / "cube", s2_cube, S2_BANDS, masks=["SCL"], options=LOSSY)
    on_disk = json.loads((tmp_path / "cube" / "video.json").read_text())
    assert on_disk == sidecar == read_sidecar(tmp_path / "cube")
    assert sidecar["format"] == "eo-etl-video" and sidecar["version"] == 1
    assert sidecar["shape"] == [6, 7, 64, 64] and sidecar["dtype"] == "uint16" and sidecar["nodata"] is None
    assert [b["name"] for b in sidecar["bands"]] == S2_BANDS
    assert sorted(p.name for p in (tmp_path / "cube").iterdir()) == [
        "stream-0.mkv",
        "stream-1.mkv",
        "stream-2.mkv",
        "video.json",
    ]
    pixels = 6 * 64 * 64
    for stream in sidecar["streams"]:
        size = (tmp_path / "cube" / stream["file"]).stat().st_size
        assert stream["bytes"] == size
        assert stream["bits_per_pixel"] == pytest.approx(size * 8 / pixels / len(stream["bands"]))
        with av.open(str(tmp_path / "cube" / stream["file"])) as container:  # band names in the tags, for people
            assert container.streams.video[0].metadata["BANDS"] == ",".join(stream["bands"])
    assert sidecar["bytes"] == sum(s["bytes"] for s in sidecar["streams"])
    assert sidecar["bits_per_pixel_per_band"] == pytest.approx(sidecar["bytes"] * 8 / (pixels * 7))
    for band in sidecar["bands"]:
        stream = sidecar["streams"][band["stream"]]
        assert stream["bands"][band["plane"]] == band["name"]
        assert band["bits_per_pixel"] == stream["bits_per_pixel"]
        assert band["mask"] == (band["name"] == "SCL") == band["lossless"]
        if not band["lossless"]:  # value = code * scale + offset maps 0..4095 onto the range
            lo, hi = band["range"]
            assert band["offset"] == lo and band["scale"] * 4095 == pytest.approx(hi - lo)
    rows = band_summary(sidecar)
    assert [(r["band"], r["codec"], r["lossless"]) for r in rows][-2:] == [
        ("B12", "libx265", False),
        ("SCL", "ffv1", True),
    ]


def test_same_cube_gives_the_same_bytes(tmp_path, s2_cube):
    for options in (VideoOptions(), VideoOptions(lossy=True, keyframe_interval=3)):
        first = write_cube(tmp_path / "one", s2_cube, S2_BANDS, masks=["SCL"], options=options)
        second = write_cube(tmp_path / "two", s2_cube, S2_BANDS, masks=["SCL"], options=options)
        assert first == second
        for stream in first["streams"]:
            assert (tmp_path / "one" / stream["file"]).read_bytes() == (tmp_path / "two" / stream["file"]).read_bytes()


def test_an_interrupted_write_is_not_a_cube_and_the_next_write_replaces_it(tmp_path, s2_cube, monkeypatch):
    folder = tmp_path / "shard-0"
    leftover = tmp_path / ".shard-0.partial"  # what a killed writer leaves: streams, no sidecar, hidden name
    leftover.mkdir()
    (leftover / "stream-0.mkv").write_bytes(b"half a stream")
    with pytest.raises(FileNotFoundError):
        read_cube(folder)
    folder.mkdir()  # nor is a folder without its sidecar
    with pytest.raises(FileNotFoundError):
        read_cube(folder)

    write_cube(folder, s2_cube, S2_BANDS, masks=["SCL"])
    assert not leftover.exists() and np.array_equal(read_cube(folder), s2_cube)

    # a write that fails half-way leaves the previous complete cube as it was, and no temporary folder
    calls = []
    real_encode = video._encode

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(video, "_encode", failing)
    with pytest.raises(RuntimeError):
        write_cube(folder, s2_cube[:2], S2_BANDS, masks=["SCL"], options=LOSSY)
    monkeypatch.undo()
    assert np.array_equal(read_cube(folder), s2_cube)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0"]

    # a rewrite replaces the whole folder: no stream of the old cube stays behind
    write_cube(folder, s2_cube[:2, :1], ["B02"], options=LOSSY)
    assert sorted(p.name for p in folder.iterdir()) == ["stream-0.mkv", "video.json"]
    assert read_cube(folder).shape == (2, 1, 64, 64)


def test_bad_input_is_refused(tmp_path):
    cube = np.zeros((2, 2, 4, 4), np.uint16)
    with pytest.raises(TypeError):
        write_cube(tmp_path / "c", cube.astype(np.float32), ["a", "b"])
    with pytest.raises(TypeError):
        write_cube(tmp_path / "c", cube.astype(np.uint32), ["a", "b"])
    with pytest.raises(ValueError):
        write_cube(tmp_path / "c", cube, ["a"])
    with pytest.raises(ValueError):
        write_cube(tmp_path / "c", cube, ["a", "b"], masks=["SCL"])
    with pytest.raises(ValueError):
        write_cube(tmp_path / "c", cube, ["a", "b"], nodata=-1)
    with pytest.raises(ValueError):
        VideoOptions(keyframe_interval=0)
    assert not any(tmp_path.iterdir())
