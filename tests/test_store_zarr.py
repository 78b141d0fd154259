"""The Zarr pixel store: exact round trips, what zarr and xarray see without our code, statistics, and a
writer killed mid-shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import eo_etl
from eo_etl.store.zarr import SAMPLE_COORDINATES, PixelLayout, ZarrWriter
from tests.imagery import sentinel2_samples

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, samples, shard_size: int) -> ZarrWriter:
    writer = ZarrWriter(root, "s2", PixelLayout.of(samples[0]), capacity=len(samples) + 5, shard_size=shard_size)
    for k in range(0, len(samples), shard_size):
        writer.write_shard(k // shard_size, samples[k : k + shard_size])
    writer.close(len(samples))
    return writer


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_zarr_and_xarray_read_back_the_written_pixels_exactly_with_labels_and_coordinates(tmp_path):
    samples = sentinel2_samples(7)
    samples[5].offsets = (0.0,) * 5  # a scene from before Sentinel-2's processing baseline 04.00: no offset
    write(tmp_path / "pixels.zarr", samples, shard_size=3)

    # zarr alone: the array, its sharding and compression
    pixels = zarr.open_array(tmp_path / "pixels.zarr", path="s2/pixels", mode="r")
    assert pixels.shape == (7, 5, 64, 64) and pixels.dtype == np.uint16
    assert pixels.chunks == (1, 5, 64, 64) and pixels.shards == (3, 5, 64, 64)
    assert [c.to_dict()["configuration"]["cname"] for c in pixels.compressors] == ["zstd"]
    assert pixels.metadata.dimension_names == ("sample", "band", "y", "x")
    np.testing.assert_array_equal(pixels[:], np.stack([s.pixels for s in samples]))
    assert len([p for p in (tmp_path / "pixels.zarr/s2/pixels/c").rglob("*") if p.is_file()]) == 3  # 3 shards

    # xarray alone: labelled bands, cells, coordinates, time and CRS per sample
    ds = xr.open_zarr(tmp_path / "pixels.zarr", group="s2")
    assert ds.pixels.dims == ("sample", "band", "y", "x") and ds.pixels.dtype == np.uint16
    assert list(ds.band.values) == ["B02", "B03", "B04", "B08", "SCL"]
    assert list(ds.sample.values) == [s.cell for s in samples]
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(ds.pixels.sel(sample=sample.cell).values, sample.pixels)
        a, _, c, _, e, f = sample.transform
        np.testing.assert_allclose(ds.x[i].values, c + a * (np.arange(64) + 0.5))
        np.testing.assert_allclose(ds.y[i].values, f + e * (np.arange(64) + 0.5))
        assert ds.time[i].values == np.datetime64(sample.timestamp.replace(tzinfo=None), "ms")
        assert int(ds.epsg[i]) == 32719 and int(ds.grid_row_u[i]) == sample.row_u
    np.testing.assert_allclose(ds.scale.values, [s.scales for s in samples])
    np.testing.assert_allclose(ds.offset.values, [s.offsets for s in samples])
    assert ds.pixels.attrs["nodata"] == 0


def test_plain_xarray_and_rioxarray_find_each_samples_crs_transform_and_index_columns(tmp_path):
    import rioxarray  # noqa: F401  (the .rio accessor)

    samples = sentinel2_samples(4)
    write(tmp_path / "pixels.zarr", samples, shard_size=3)
    ds = xr.open_zarr(tmp_path / "pixels.zarr", group="s2")  # no eo-etl code from here
    for i, sample in enumerate(samples):
        one = ds.pixels.isel(sample=i)
        assert one.rio.crs.to_epsg() == 32719
        assert tuple(one.rio.transform())[:6] == pytest.approx(sample.transform)
        record = sample.record()
        assert str(one.sample_id.values) == record["sample_id"] and str(one.crs.values) == "EPSG:32719"
        assert str(one.product_id.values) == record["product_id"]
        assert float(one.cloud_cover) == pytest.approx(record["cloud_cover"])
        assert float(one.nodata) == pytest.approx(record["nodata"])

    # a sample in another UTM zone: no one grid mapping fits the group, the documented call sets each sample's
    other = sentinel2_samples(1)[0]
    other.crs, other.cell = "EPSG:32720", "5330D_5050L"
    write(tmp_path / "zones.zarr", [*samples, other], shard_size=3)
    ds = xr.open_zarr(tmp_path / "zones.zarr", group="s2")
    assert "spatial_ref" not in ds.variables and "grid_mapping" not in ds.pixels.attrs
    assert ds.pixels.isel(sample=4).rio.crs is None
    one = eo_etl.sample_array(ds, 4)
    assert one.rio.crs.to_epsg() == 32720 and tuple(one.rio.transform())[:6] == pytest.approx(other.transform)
    assert eo_etl.sample_array(ds, 0).rio.crs.to_epsg() == 32719


def test_closing_again_over_samples_of_two_zones_drops_the_earlier_grid_mapping(tmp_path):
    samples = sentinel2_samples(4)
    write(tmp_path / "pixels.zarr", samples, shard_size=2)
    assert xr.open_zarr(tmp_path / "pixels.zarr", group="s2").pixels.attrs["grid_mapping"] == "spatial_ref"
    samples[3].crs, samples[3].cell = "EPSG:32720", "5330D_5050L"
    write(tmp_path / "pixels.zarr", samples, shard_size=2)  # resumed: the second shard rewritten, closed again
    ds = xr.open_zarr(tmp_path / "pixels.zarr", group="s2")
    assert "spatial_ref" not in ds.variables and "grid_mapping" not in ds.pixels.attrs
    assert list(ds.epsg.values) == [32719, 32719, 32719, 32720] and list(ds.sample.values)[3] == "5330D_5050L"
    assert ds.pixels.shape[0] == 4  # the trim to 4 samples kept though the store was grown to 9 on reopening


def test_band_statistics_are_those_of_the_valid_pixels(tmp_path):
    samples = sentinel2_samples(5)
    samples[0].pixels[:, :8] = 0  # nodata rows, left out of the statistics
    write(tmp_path / "pixels.zarr", samples, shard_size=2)
    statistics = zarr.open_group(tmp_path / "pixels.zarr", path="s2", mode="r").attrs["band_statistics"]
    stack = np.stack([s.pixels for s in samples])
    for b, band in enumerate(["B02", "B03", "B04", "B08", "SCL"]):
        valid = stack[:, b][stack[:, b] != 0].astype(float)
        assert statistics[band]["count"] == valid.size
        assert statistics[band]["mean"] == pytest.approx(valid.mean(), rel=1e-12)
        assert statistics[band]["std"] == pytest.approx(valid.std(), rel=1e-9)
        assert (statistics[band]["min"], statistics[band]["max"]) == (valid.min(), valid.max())


def test_a_writer_restarts_its_statistics_to_count_one_shard_alone(tmp_path):
    samples = sentinel2_samples(4)
    writer = ZarrWriter(tmp_path / "pixels.zarr", "s2", PixelLayout.of(samples[0]), capacity=4, shard_size=2)
    writer.write_shard(0, samples[:2])
    shard = writer.restart_statistics()  # what a worker writing shard 1 of a shared store records for it
    writer.write_shard(1, samples[2:])
    alone = writer.empty_statistics()
    alone.add(np.stack([s.pixels for s in samples[2:]]))
    assert shard is writer.statistics and shard.as_dict() == alone.as_dict()
    assert writer.empty_statistics().as_dict() != shard.as_dict()  # nothing counted in a fresh one


def test_rewriting_the_same_samples_skips_complete_shards_and_changes_no_byte(tmp_path):
    samples = sentinel2_samples(5)
    write(tmp_path / "pixels.zarr", samples, shard_size=2)
    before = tree_bytes(tmp_path / "pixels.zarr")
    writer = ZarrWriter(tmp_path / "pixels.zarr", "s2", PixelLayout.of(samples[0]), capacity=10, shard_size=2)
    assert [writer.write_shard(k, samples[2 * k : 2 * k + 2]) for k in range(3)] == [False, False, False]
    writer.close(5)
    assert tree_bytes(tmp_path / "pixels.zarr") == before


def test_a_shard_of_samples_all_nodata_is_written_whole_and_kept_on_rewrite(tmp_path):
    samples = sentinel2_samples(4)
    for sample in samples[2:]:
        sample.pixels[:] = 0  # nothing but nodata (the fill value): zarr would leave such chunks out by default
    write(tmp_path / "pixels.zarr", samples, shard_size=2)
    shards = sorted(p.name for p in (tmp_path / "pixels.zarr/s2/pixels/c").iterdir())
    assert shards == ["0", "1"]  # the empty shard exists, so it reads as complete
    writer = ZarrWriter(tmp_path / "pixels.zarr", "s2", PixelLayout.of(samples[0]), capacity=4, shard_size=2)
    assert writer.write_shard(1, samples[2:]) is False
    pixels = zarr.open_array(tmp_path / "pixels.zarr", path="s2/pixels", mode="r")
    np.testing.assert_array_equal(pixels[:], np.stack([s.pixels for s in samples]))


def test_a_sample_of_another_shape_or_band_set_is_refused(tmp_path):
    samples = sentinel2_samples(2)
    writer = ZarrWriter(tmp_path / "p.zarr", "s2", PixelLayout.of(samples[0]), capacity=4, shard_size=2)
    samples[1].pixels = samples[1].pixels[:4]
    samples[1].bands = samples[1].bands[:4]
    with pytest.raises(ValueError, match="bands, shape, dtype or nodata differ"):
        writer.write_shard(0, samples)


# The writer, on a slow disk: each shard file (zarr writes it to a temporary *.partial name, then renames it)
# stalls halfway through its bytes, which gives the test a sure moment to kill it mid-shard.
WRITER_SCRIPT = """
import pathlib, sys, time
from tests.imagery import sentinel2_samples
from tests.test_store_zarr import write

class HalfwayStall:
    def __init__(self, file):
        self.file = file
    def write(self, data):
        view = memoryview(data).cast("B")
        written = self.file.write(view[: len(view) // 2])
        self.file.flush()
        time.sleep(0.3)
        return written + self.file.write(view[len(view) // 2 :])
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

plain_open = pathlib.Path.open
def slow_open(path, *args, **kwargs):
    file = plain_open(path, *args, **kwargs)
    return HalfwayStall(file) if path.suffix == ".partial" and "/pixels/c/" in path.as_posix() else file
pathlib.Path.open = slow_open
write(sys.argv[1], sentinel2_samples(24, size=128), shard_size=3)
"""


def test_a_writer_killed_mid_shard_leaves_no_shard_that_reads_as_complete_and_resuming_gives_the_same_bytes(
    tmp_path,
):
    samples = sentinel2_samples(24, size=128)
    expected = np.stack([s.pixels for s in samples])
    write(tmp_path / "uninterrupted.zarr", samples, shard_size=3)

    store = tmp_path / "killed.zarr"
    shards = store / "s2" / "pixels" / "c"
    writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(store)], cwd=ROOT, env=os.environ)
    deadline = time.monotonic() + 120
    while writer.poll() is None and time.monotonic() < deadline:  # kill it halfway through its third shard
        files = [p for p in shards.rglob("*") if p.is_file()] if shards.is_dir() else []
        if sum(p.suffix == ".partial" and p.stat().st_size > 0 for p in files) and len(files) == 3:
            writer.send_signal(signal.SIGKILL)
        time.sleep(0.01)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL

    # what the killed writer left: two whole shards and half a file under a temporary name
    partial = list(shards.rglob("*.partial"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0 and partial[0].parent == shards / "2/0/0"
    whole = [p.relative_to(shards).as_posix() for p in shards.rglob("*") if p.is_file() and p.suffix != ".partial"]
    assert sorted(whole) == ["0/0/0/0", "1/0/0/0"]
    pixels = zarr.open_array(store, path="s2/pixels", mode="r")
    np.testing.assert_array_equal(pixels[:6], expected[:6])
    assert (pixels[6:9] == 0).all()  # the third shard reads as missing (fill value), not as data

    write(store, samples, shard_size=3)  # the same command again
    assert not list(store.rglob("*.partial"))
    assert tree_bytes(store) == tree_bytes(tmp_path / "uninterrupted.zarr")


def test_a_complete_shard_holding_other_samples_is_rewritten_not_kept(tmp_path):
    first, second = sentinel2_samples(4), sentinel2_samples(8)[4:]
    for late, early in zip(second, first):
        late.cell, late.row_u, late.col_r = early.cell, early.row_u, early.col_r  # same cells, other times/pixels
    write(tmp_path / "p.zarr", first, shard_size=2)
    write(tmp_path / "p.zarr", second, shard_size=2)
    pixels = zarr.open_array(tmp_path / "p.zarr", path="s2/pixels", mode="r")
    np.testing.assert_array_equal(pixels[:], np.stack([s.pixels for s in second]))


def test_a_store_of_another_build_is_started_afresh(tmp_path):
    samples = sentinel2_samples(3)
    layout = PixelLayout.of(samples[0])
    ZarrWriter(tmp_path / "p.zarr", "s2", layout, capacity=3, shard_size=2, build="a").write_shard(0, samples[:2])
    writer = ZarrWriter(tmp_path / "p.zarr", "s2", layout, capacity=3, shard_size=2, build="b")
    assert writer.group.attrs["layout"]["build"] == "b"
    assert not writer.shard_complete(0)


def _open_writer(root: Path, source: str, layout: PixelLayout, start) -> None:
    start.wait()
    ZarrWriter(root, source, layout, capacity=2, shard_size=2)


def test_writers_of_several_sources_opening_a_new_store_at_once_all_open_it(tmp_path):
    """Each source's stores are opened by its own worker process at the same moment (the demo's two aligned
    sources did): the writers racing to create the root group all get it, and every source's group is there."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # the workers start with the test's imports: fast
    layout = PixelLayout.of(sentinel2_samples(1)[0])
    sources = [f"s{i}" for i in range(6)]
    for attempt in range(4):  # a fresh store each time: the race is at its creation
        root, start = tmp_path / f"p{attempt}.zarr", context.Barrier(len(sources))
        workers = [context.Process(target=_open_writer, args=(root, source, layout, start)) for source in sources]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0] * len(sources)
        assert sorted(name for name, _ in zarr.open_group(str(root), mode="r").groups()) == sources


def test_a_shard_writes_its_pixels_and_one_record_and_close_writes_each_coordinate_in_one_chunk(tmp_path):
    """Per-shard files are what an object store pays a request for: two a shard, however many coordinates."""
    samples = sentinel2_samples(7)
    root = tmp_path / "p.zarr"
    writer = ZarrWriter(root, "s2", PixelLayout.of(samples[0]), capacity=9, shard_size=3)
    for k in range(3):
        writer.write_shard(k, samples[3 * k : 3 * k + 3])
    chunks = sorted(p.relative_to(root / "s2").as_posix() for p in root.rglob("*") if p.is_file() and "/c/" in str(p))
    assert chunks == [
        "band/c/0",
        *(f"pixels/c/{k}/0/0/0" for k in range(3)),
        *(f"records/sample/c/{k}" for k in range(3)),
    ]
    with pytest.raises(ValueError, match="a sample has no record"):
        writer.close(8)  # a position no shard was written to
    writer.close(7)
    ds = xr.open_zarr(root, group="s2")
    for name in ("sample", "time", "x", "scale", "sample_id"):
        assert len([p for p in (root / "s2" / name / "c").rglob("*") if p.is_file()]) == 1
    assert list(ds.sample_id.values) == [s.record()["sample_id"] for s in samples]
    assert "records" not in ds.variables  # the writer's records are a subgroup: no variable of plain xarray's


class _Requests:
    """Counts the store requests a writer makes (each is a round trip on an object store); ``fail_at``: the
    request that fails, as a killed process or a dead server ends a write."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.calls: list[str] = []
        self.fail_at = fail_at
        for name in ("get", "set", "set_if_not_exists", "exists"):
            original = getattr(zarr.storage.LocalStore, name)
            monkeypatch.setattr(zarr.storage.LocalStore, name, self._counted(name, original))

    def _counted(self, name, original):
        async def call(store, key, *args, **kwargs):
            self.calls.append(name)
            if len(self.calls) == self.fail_at:
                raise OSError("the writer is killed here")
            return await original(store, key, *args, **kwargs)

        return call


def test_a_writer_killed_while_creating_its_store_leaves_nothing_a_resume_takes_for_whole(tmp_path, monkeypatch):
    """The group's layout is written after its arrays: a resumed writer keeps a group only when it is whole."""
    samples = sentinel2_samples(4)
    write(tmp_path / "uninterrupted.zarr", samples, shard_size=2)
    with monkeypatch.context() as patched:
        requests = _Requests(patched)
        ZarrWriter(tmp_path / "counted.zarr", "s2", PixelLayout.of(samples[0]), capacity=9, shard_size=2)
    creation = len(requests.calls)
    for k in range(1, creation + 1):  # killed at each request of the creation in turn
        root = tmp_path / f"killed{k}.zarr"
        with monkeypatch.context() as patched, pytest.raises(OSError, match="killed"):
            _Requests(patched, fail_at=k)
            ZarrWriter(root, "s2", PixelLayout.of(samples[0]), capacity=9, shard_size=2)
        write(root, samples, shard_size=2)  # the same command again
        assert tree_bytes(root) == tree_bytes(tmp_path / "uninterrupted.zarr"), f"killed at request {k}"


def test_close_writes_each_file_in_one_request(tmp_path, monkeypatch):
    """No existence checks or parent rewrites per coordinate array: on an object store each is a round trip."""
    samples = sentinel2_samples(5)
    root = tmp_path / "p.zarr"
    writer = ZarrWriter(root, "s2", PixelLayout.of(samples[0]), capacity=5, shard_size=5)
    writer.write_shard(0, samples)
    before = {p for p in root.rglob("*") if p.is_file()}
    with monkeypatch.context() as patched:
        requests = _Requests(patched)
        writer.close(5)
    written = {p for p in root.rglob("*") if p.is_file()} - before
    metadata = sorted(p.parent.name for p in written if p.name == "zarr.json")
    assert metadata == sorted([*SAMPLE_COORDINATES, "sample", "spatial_ref"])  # and their chunks (not fill alone)
    rewritten = 3  # the group's attributes, the pixels' attributes, the consolidated metadata at the root
    assert requests.calls.count("set") == len(written) + rewritten
    assert "set_if_not_exists" not in requests.calls and "exists" not in requests.calls
