"""Pixels as Zarr v3 with the sharding codec: one group per source in ``pixels.zarr``.

    pixels.zarr/<source>/pixels   (sample, band, y, x)  one chunk per sample, ``shard_size`` samples a shard,
                                                        blosc-zstd; nodata in the ``nodata`` attribute
    pixels.zarr/<source>/band     (band,)               band names
    pixels.zarr/<source>/sample   (sample,)             grid cell of each sample
    pixels.zarr/<source>/x, y     (sample, x), (sample, y)  pixel-centre coordinates in the sample's UTM zone
    pixels.zarr/<source>/time, epsg, grid_row_u, grid_col_r, centre_lat, centre_lon   (sample,)
    pixels.zarr/<source>/scale, offset   (sample, band) physical value = pixel * scale + offset (per sample:
                                                        Sentinel-2 gained an offset with processing baseline 04.00)
    pixels.zarr/<source>/sample_id, crs, product_id, cloud_cover, nodata, processing_baseline   (sample,)
                                                        the index's columns of the same names (nodata: the share
                                                        of pixels with no data; the value is the ``nodata`` attribute)
    pixels.zarr/<source>/spatial_ref   ()               CF grid mapping of x/y when every sample shares one UTM
                                                        zone (``pixels`` names it in ``grid_mapping``)
    pixels.zarr/<source>/records/sample   (sample,)     the writer's own: each sample's coordinates as JSON
                                                        (x/y as their transform), one chunk per shard

The ``sample`` coordinate holds the grid cell: the index's ``grid_cell``. ``sample_id`` is the key of the index
and of every stage table.

``xarray.open_zarr(path, group=source)`` gives them as one labelled Dataset with no code of ours, and rioxarray
finds the CRS (through ``spatial_ref``, or ``write_crs(int(epsg))`` on a selected sample when zones differ) and the
transform (from a selected sample's x/y). Per-band
statistics of the valid pixels (for normalisation) are in the group's ``band_statistics`` attribute.

Layout choice (format 4), measured in ``bench/store.py``: a shard costs two files, its pixels and its
``records`` chunk, not one file per coordinate (format 3 wrote 17 small coordinate files a shard: a shard cost
up to 1.5× bare zarr-python's on small samples). The pixels are written with ``write_empty_chunks`` (no scan of
each chunk for the fill value): a shard, the band statistics and its record included, now costs about what bare
zarr-python's default pixel write costs.
``close`` writes the coordinate arrays once, from the records, in chunks of many shards (``coordinate_chunk``),
so ``open_zarr`` reads a coordinate in a few requests, not one per shard. That close is a fixed cost per store
(17 arrays' metadata and chunks, built in memory and stored one request a file, and the consolidated metadata:
~0.06 s of CPU, most of it file creations), which weighs on a small store only: bare zarr-python writing the
same arrays costs as much. Rejected:
zarr's sharding for the coordinates (still an object per array per shard); coordinates from the index at the
end (the writer could no longer tell by itself which samples a shard holds). Until ``close`` the group has
pixels and records only: readers open closed stores (a dataset is finished once its index exists).

A shard is written in one put (zarr's local store writes a temporary file and renames it; an object
store's PUT is whole), after its samples' record, so a shard that exists is complete; a killed writer leaves
at most a stray ``*.partial`` file, removed when the store is reopened. Rewriting skips complete shards whose
records are those of the samples given, and the same samples give the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyproj
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync  # zarr's own bridge to its async store API (there is no sync exists())
from zarr.storage import MemoryStore, StorePath

from eo_etl.sample import OK, Sample

STORE_NAME = "pixels.zarr"
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")  # level 5 packs 1% more at half the speed
EPOCH_UNITS = "milliseconds since 1970-01-01T00:00:00"
FORMAT_VERSION = 4  # 2: scale and offset per sample; 3: the index's sample columns, CF grid mapping;
# 4: per-shard records, coordinates written at close
# Every chunk written, nodata-only ones too: zarr otherwise compares each chunk to the fill value before encoding
# (a pass over the pixels), and leaves out a shard of nodata-only samples, which then never reads as complete.
PIXEL_CONFIG = {"write_empty_chunks": True}
RECORDS = "records"  # the subgroup of the shards' records (xarray shows a group's arrays, not its subgroups)
COORDINATE_CHUNK_BYTES = 4 << 20  # a chunk of the widest coordinate (x, y: 8 bytes a pixel column) at most


# Index columns stored per sample too, so a reader without the index (plain xarray) has them.
INDEX_COLUMNS = {"sample_id": str, "crs": str, "product_id": str, "cloud_cover": "float64", "nodata": "float64",
                 "processing_baseline": str}  # fmt: skip
SAMPLE_COORDINATES = ("time", "epsg", "grid_row_u", "grid_col_r", "centre_lat", "centre_lon", "x", "y", "scale",
                      "offset", *INDEX_COLUMNS)  # fmt: skip


@dataclass(frozen=True)
class PixelLayout:
    """What every sample of one source shares: bands, shape, dtype and nodata (scaling may differ)."""

    bands: tuple[str, ...]
    height: int
    width: int
    dtype: str
    nodata: float | None

    @classmethod
    def of(cls, sample: Sample) -> PixelLayout:
        _, height, width = sample.pixels.shape
        nodata = None if sample.nodata is None or np.isnan(sample.nodata) else float(sample.nodata)
        return cls(tuple(sample.bands), height, width, str(sample.pixels.dtype), nodata)

    def check(self, sample: Sample) -> None:
        if sample.status != OK or sample.pixels is None:
            raise ValueError(f"{sample.key}: only ok samples with pixels are stored (status {sample.status})")
        if PixelLayout.of(sample) != self:
            raise ValueError(f"{sample.key}: bands, shape, dtype or nodata differ from the source's other samples")
        if len(sample.scales) != len(self.bands) or len(sample.offsets) != len(self.bands):
            raise ValueError(f"{sample.key}: a scale and an offset per band are needed")


class BandStatistics:
    """Count, mean, spread, range and percentiles of each band's valid pixels (nodata left out).

    Integer bands of up to 16 bits keep a histogram of their values, so the statistics are exact, cheap to
    merge across shards or workers, and give percentiles (the usual clip range for normalising imagery);
    other bands keep running moments (Chan et al.'s merge), without percentiles.
    """

    PERCENTILES = (1, 99)

    def __init__(self, bands: Sequence[str], dtype: str, nodata: float | None):
        self.bands, self.nodata = tuple(bands), nodata
        kind = np.dtype(dtype)
        self.offset = -int(np.iinfo(kind).min) if kind.kind in "iu" and kind.itemsize <= 2 else None
        n = len(self.bands)
        if self.offset is not None:
            self.histograms = np.zeros((n, 1 << (8 * kind.itemsize)), dtype=np.int64)
        self.count, self.mean, self.m2 = np.zeros(n), np.zeros(n), np.zeros(n)
        self.min, self.max = np.full(n, np.inf), np.full(n, -np.inf)

    def add(self, pixels: np.ndarray) -> None:
        """``pixels``: (sample, band, y, x) or (band, y, x)."""
        samples = pixels.reshape(-1, *pixels.shape[-3:])
        if self.offset is not None:  # a sample's band at a time: contiguous, no copy; np.add.at counts in place,
            for sample in samples:  # in half the time of np.bincount (which first copies the values to intp)
                for i, band in enumerate(sample):
                    values = band.ravel()
                    np.add.at(self.histograms[i], values.astype(np.int64) + self.offset if self.offset else values, 1)
            return
        for i, band in enumerate(samples.swapaxes(0, 1).reshape(len(self.bands), -1)):
            self._add_moments(i, band if self.nodata is None else band[band != self.nodata])

    def _add_moments(self, i: int, valid: np.ndarray) -> None:
        if valid.size == 0:
            return
        valid = valid.astype(np.float64)
        n, mean = valid.size, valid.mean()
        total, delta = self.count[i] + n, mean - self.mean[i]
        self.m2[i] += ((valid - mean) ** 2).sum() + delta**2 * self.count[i] * n / total
        self.mean[i] += delta * n / total
        self.count[i] = total
        self.min[i], self.max[i] = min(self.min[i], valid.min()), max(self.max[i], valid.max())

    def merge(self, other: BandStatistics) -> BandStatistics:
        """Add ``other``'s pixels (another shard's, another worker's) to these statistics."""
        if self.offset is not None:
            self.histograms += other.histograms
            return self
        for i in range(len(self.bands)):
            n, total = other.count[i], self.count[i] + other.count[i]
            if n:
                delta = other.mean[i] - self.mean[i]
                self.m2[i] += other.m2[i] + delta**2 * self.count[i] * n / total
                self.mean[i] += delta * n / total
                self.count[i] = total
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        return self

    def save(self, file: Path | BinaryIO) -> None:
        """The running state (histograms or moments), to merge later in another process."""
        state = {"histograms": self.histograms} if self.offset is not None else {}
        np.savez_compressed(file, count=self.count, mean=self.mean, m2=self.m2, min=self.min, max=self.max, **state)

    def load(self, path: Path) -> BandStatistics:
        """Statistics saved by ``save`` with the same bands, dtype and nodata."""
        with np.load(path) as state:
            for name in ("count", "mean", "m2", "min", "max", *(["histograms"] if self.offset is not None else [])):
                setattr(self, name, state[name])
        return self

    def as_dict(self) -> dict[str, dict[str, float | int | None]]:
        return {band: self._band(i) for i, band in enumerate(self.bands)}

    def _band(self, i: int) -> dict[str, float | int | None]:
        if self.offset is None:
            count = int(self.count[i])
            if not count:
                return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
            std = math.sqrt(self.m2[i] / count)
            return {"count": count, "mean": float(self.mean[i]), "std": std,
                    "min": float(self.min[i]), "max": float(self.max[i])}  # fmt: skip
        histogram = self.histograms[i].copy()
        if self.nodata is not None and 0 <= self.nodata + self.offset < len(histogram):
            histogram[int(self.nodata) + self.offset] = 0
        present = np.flatnonzero(histogram)
        count = int(histogram.sum())
        if not count:
            empty = dict.fromkeys(("mean", "std", "min", "max", *(f"p{q:02d}" for q in self.PERCENTILES)))
            return {"count": 0, **empty}
        values = present.astype(np.float64) - self.offset
        weights = histogram[present].astype(np.float64)
        mean = float((values * weights).sum() / count)
        std = math.sqrt(float((weights * (values - mean) ** 2).sum() / count))
        cumulative = np.cumsum(weights)
        percentiles = {
            f"p{q:02d}": float(values[np.searchsorted(cumulative, q / 100 * count)]) for q in self.PERCENTILES
        }
        return {"count": count, "mean": mean, "std": std, "min": float(values[0]), "max": float(values[-1]),
                **percentiles}  # fmt: skip


async def _root_group(root: str, storage_options: dict | None) -> zarr.AsyncGroup:
    """The dataset's root group, created when missing. Each source's writer opens it on its own worker at the same
    time; the one that loses the race to create it opens the winner's instead of failing."""
    try:
        return await zarr.api.asynchronous.open_group(root, mode="a", zarr_format=3, use_consolidated=False,
                                                      storage_options=storage_options)  # fmt: skip
    except zarr.errors.ContainsGroupError:
        return await zarr.api.asynchronous.open_group(root, mode="r+", zarr_format=3, use_consolidated=False,
                                                      storage_options=storage_options)  # fmt: skip


async def _in_memory(attributes: dict | None = None) -> zarr.AsyncGroup:
    """An empty group in memory, where a writer builds arrays before ``_write_built`` stores their files."""
    return await zarr.api.asynchronous.open_group(MemoryStore(), mode="w", zarr_format=3, attributes=attributes)


async def _write_built(built: zarr.AsyncGroup, target: StorePath, *, with_group: bool) -> None:
    """The files of ``built`` (a group made in memory) under ``target``, one request a file, concurrently.

    Creating an array in place costs about six requests: zarr checks that it does not exist and, for each parent
    group, that it is no array and that its metadata exists (a write that fails when it does). That was most of
    a store's fixed cost here, and on an object store each request is a round trip. With ``with_group`` the group's
    own metadata is written after the rest (a group that has its attributes is whole), else not at all."""
    memory, prototype = built.store_path.store, default_buffer_prototype()
    keys = [key async for key in memory.list() if key != "zarr.json"]
    values = await asyncio.gather(*(memory.get(key, prototype) for key in keys))
    await asyncio.gather(*((target / key).set(value) for key, value in zip(keys, values)))
    if with_group:
        await (target / "zarr.json").set(await memory.get("zarr.json", prototype))


class ZarrWriter:
    """Writes one source's samples into ``<root>/<source>``, a shard at a time.

    ``capacity`` bounds the number of samples (the planned cells will do; a reopened group grows to it);
    ``close(count)`` trims the arrays to the samples written. Reopening a group with the same layout and
    ``build`` (the recipe's series hash) resumes it: a complete shard holding the same samples (cells and
    times) is kept, any other is rewritten. A different layout or build starts the group afresh.

    Writers in several processes may share a group once it exists: open it first in one process, then
    in the others with ``tidy=False`` (only the first removes a killed run's leftovers). ``root`` may be an
    fsspec URL (``s3://…``), opened with ``storage_options``.
    """

    def __init__(
        self, root: str | Path, source: str, layout: PixelLayout, *, capacity: int, shard_size: int, build: str = "",
        tidy: bool = True, storage_options: dict | None = None,
    ):  # fmt: skip
        self.root, self.source, self.layout, self.shard_size, self.build = str(root), source, layout, shard_size, build
        if tidy:
            _remove_partial_files(f"{self.root}/{source}")  # this source's group only: the others have their writers
        self._group = sync(self._open(capacity, storage_options))
        self.group = zarr.Group(self._group)
        self.pixels = self.group["pixels"].with_config(PIXEL_CONFIG)  # looked up once: each lookup asks the store
        self.records = self.group[f"{RECORDS}/sample"]
        self.statistics = BandStatistics(layout.bands, layout.dtype, layout.nodata)

    async def _open(self, capacity: int, storage_options: dict | None) -> zarr.AsyncGroup:
        """The source's group: resumed (grown to ``capacity``) when its layout and build match, else created."""
        group = await _root_group(self.root, storage_options)
        if await group.contains(self.source):
            existing = await group.getitem(self.source)
            if existing.attrs.get("layout") == self._layout_attrs():
                if (await existing.getitem("pixels")).shape[0] < capacity:
                    await _resize(existing, capacity)
                return existing
            await existing.store_path.delete_dir()  # another layout or build: afresh
        built = await _in_memory(attributes={"layout": self._layout_attrs()})
        await self._create_arrays(built, max(capacity, 1))
        target = group.store_path / self.source
        await _write_built(built, target, with_group=True)  # the group's layout last: a group that has it is whole
        return zarr.AsyncGroup(metadata=built.metadata, store_path=target)

    @classmethod
    def existing(
        cls, root: str | Path, source: str, *, tidy: bool = False, storage_options: dict | None = None
    ) -> ZarrWriter:
        """A writer of the group ``source`` as it was created (its layout and build from its attributes)."""
        group = zarr.open_group(str(root), mode="r", use_consolidated=False, storage_options=storage_options)
        attrs = group[source].attrs["layout"]
        layout = PixelLayout(tuple(attrs["bands"]), attrs["height"], attrs["width"], attrs["dtype"], attrs["nodata"])
        return cls(root, source, layout, capacity=0, shard_size=attrs["shard_size"], build=attrs["build"], tidy=tidy,
                   storage_options=storage_options)  # fmt: skip

    def _layout_attrs(self) -> dict:
        layout = self.layout
        return {"format_version": FORMAT_VERSION, "bands": list(layout.bands), "height": layout.height,
                "width": layout.width, "dtype": layout.dtype, "nodata": layout.nodata, "shard_size": self.shard_size,
                "build": self.build}  # fmt: skip

    async def _create_arrays(self, group: zarr.AsyncGroup, capacity: int) -> None:
        """The arrays shards are written into (pixels, records) and the band names, created concurrently (each is
        a metadata write); the coordinate arrays come at ``close``."""
        layout, n = self.layout, self.shard_size
        bands, height, width = len(layout.bands), layout.height, layout.width
        pixels = group.create_array(
            "pixels", shape=(capacity, bands, height, width), dtype=layout.dtype,
            chunks=(1, bands, height, width), shards=(n, bands, height, width), compressors=COMPRESSOR,
            fill_value=layout.nodata or 0, dimension_names=("sample", "band", "y", "x"),
            attributes={"long_name": f"{self.source} pixels as delivered (digital numbers)", "nodata": layout.nodata,
                        "coordinates": " ".join(SAMPLE_COORDINATES)},
        )  # fmt: skip
        band = group.create_array("band", shape=(bands,), dtype=str, dimension_names=("band",))
        band, records, *_ = await asyncio.gather(band, group.create_group(RECORDS), pixels)
        await asyncio.gather(
            band.setitem(slice(None), np.asarray(layout.bands, dtype=str)),
            records.create_array("sample", shape=(capacity,), dtype=str, chunks=(n,), dimension_names=("sample",),
                                 attributes={"long_name": "the sample's coordinates as JSON, written with its shard"}),
        )  # fmt: skip

    def shard_complete(self, k: int) -> bool:
        key = self.pixels.metadata.encode_chunk_key((k, 0, 0, 0))
        return sync(self.pixels.store_path.store.exists(f"{self.pixels.path}/{key}"))

    def shard_bytes(self, k: int) -> int:
        key = self.pixels.metadata.encode_chunk_key((k, 0, 0, 0))
        return sync(self.pixels.store_path.store.getsize(f"{self.pixels.path}/{key}"))

    def write_shard(self, k: int, samples: Sequence[Sample]) -> bool:
        """Samples ``k * shard_size …`` in order; False when the shard already holds them (nothing written)."""
        if not 0 < len(samples) <= self.shard_size:
            raise ValueError(f"shard {k}: {len(samples)} samples; a shard holds 1 to {self.shard_size}")
        for sample in samples:
            self.layout.check(sample)
        pixels = np.stack([sample.pixels for sample in samples])
        # counted here, not beside zarr's compression in a side thread: that shortens the wall time on idle cores
        # but costs ~8% more CPU a shard (bench/store.py), and a worker of a build has no idle core to spare
        self.statistics.add(pixels)
        start = k * self.shard_size
        rows = slice(start, start + len(samples))
        records = _records(samples)
        kept = self.shard_complete(k) and np.array_equal(self.records[rows], records)
        if not kept:
            sync(self._write(rows, records, pixels))
        return not kept

    async def _write(self, rows: slice, records: np.ndarray, pixels: np.ndarray) -> None:
        """The records, then the pixels: the shard's existence says its samples are all there."""
        await self.records.async_array.setitem(rows, records)
        await self.pixels.async_array.setitem(rows, pixels)

    def coordinate_chunk(self, count: int) -> int:
        """Samples a chunk of the coordinate arrays: the widest (x or y, 8 bytes a pixel) at most
        ``COORDINATE_CHUNK_BYTES``, and no more than the samples there are."""
        widest = 8 * max(self.layout.width, self.layout.height, len(self.layout.bands))
        return max(1, min(count, COORDINATE_CHUNK_BYTES // widest))

    async def _write_coordinates(self, built: zarr.AsyncGroup, count: int) -> set[int]:
        """Every coordinate array at ``count`` samples into ``built``, from the records, a chunk of samples at a time;
        the EPSG codes of the samples."""
        chunk = self.coordinate_chunk(count)
        specs = _coordinate_specs(self.layout)
        arrays = await asyncio.gather(*(
            built.create_array(name, shape=(count, *other[1:]), dtype=dtype, chunks=(chunk, *other[1:]),
                               dimension_names=("sample", *other[:1]), attributes=attrs)
            for name, (dtype, other, attrs) in specs.items()
        ))  # fmt: skip
        records = await (await self._group.getitem(RECORDS)).getitem("sample")  # as resized (a handle keeps its shape)
        zones = set()
        for start in range(0, count, chunk):
            rows = slice(start, min(start + chunk, count))
            values = _coordinates(await records.getitem(rows), self.layout)
            zones.update(int(epsg) for epsg in np.unique(values["epsg"]))
            await asyncio.gather(*(array.setitem(rows, values[name]) for name, array in zip(specs, arrays)))
        return zones

    async def _grid_mapping(self, built: zarr.AsyncGroup, zones: set[int]) -> dict:
        """CF grid mapping (what rioxarray reads) into ``built`` when the samples share one CRS, none when zones
        differ; the pixels' attributes that name it."""
        if len(zones) != 1:
            return {"coordinates": " ".join(SAMPLE_COORDINATES)}
        crs = pyproj.CRS.from_epsg(zones.pop())
        attrs = {**crs.to_cf(), "spatial_ref": crs.to_wkt()}  # spatial_ref: GDAL's name, rioxarray reads it
        await built.create_array("spatial_ref", shape=(), dtype="int32", attributes=attrs)
        return {"grid_mapping": "spatial_ref", "coordinates": " ".join([*SAMPLE_COORDINATES, "spatial_ref"])}

    def empty_statistics(self) -> BandStatistics:
        """Statistics of this store's layout with nothing counted yet."""
        return BandStatistics(self.layout.bands, self.layout.dtype, self.layout.nodata)

    def restart_statistics(self) -> BandStatistics:
        """Count the statistics afresh from here (one shard's alone, where writers share a store); those counted."""
        self.statistics = self.empty_statistics()
        return self.statistics

    def close(self, count: int, statistics: BandStatistics | None = None) -> None:
        """Trim to ``count`` samples, write the coordinate arrays from the shards' records, record the statistics
        (``statistics``, else those of the shards this writer wrote), consolidate the metadata for quick opens."""
        sync(self._close(count, (statistics or self.statistics).as_dict()))

    async def _close(self, count: int, band_statistics: dict) -> None:
        """``close`` in one pass of zarr's event loop: the coordinate arrays built in memory, then stored with the
        independent metadata writes concurrently."""
        group = self._group
        if self.pixels.shape[0] != count:  # pixels and records are created and resized together
            await _resize(group, count)
        built = await _in_memory()
        zones = await self._write_coordinates(built, count)
        pixel_attrs = await self._grid_mapping(built, zones)
        replaced = {*_coordinate_specs(self.layout), "spatial_ref"}  # an earlier close's (spatial_ref: if zones differ)
        stale = {name async for name in group.store_path.store.list_dir(group.path)} & replaced
        await asyncio.gather(*((group.store_path / name).delete_dir() for name in stale))
        pixels = await group.getitem("pixels")  # fresh: writing attrs through a handle from before a resize undoes it
        pixels.metadata.attributes.pop("grid_mapping", None)  # an earlier close's, if zones now differ
        await asyncio.gather(
            _write_built(built, group.store_path, with_group=False),
            group.update_attributes({"band_statistics": band_statistics, "samples": count}),
            pixels.update_attributes(pixel_attrs),
        )
        with quiet_consolidated():
            await zarr.api.asynchronous.consolidate_metadata(group.store)  # the store's root: pixels.zarr


@contextmanager
def quiet_consolidated() -> Iterator[None]:
    """Consolidated metadata makes a remote open one request; zarr warns that v3 has not standardised it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


async def _resize(group: zarr.AsyncGroup, count: int) -> None:
    """Every per-sample array of ``group`` and its records to ``count`` samples (concurrently: each is a metadata
    write)."""
    arrays = [array async for _, array in group.arrays()]
    if await group.contains(RECORDS):
        arrays += [array async for _, array in (await group.getitem(RECORDS)).arrays()]
    await asyncio.gather(*(
        array.resize((count, *array.shape[1:])) for array in arrays
        if "sample" in (array.metadata.dimension_names or ()) and array.shape[0] != count
    ))  # fmt: skip


def _coordinate_specs(layout: PixelLayout) -> dict[str, tuple]:
    """Each coordinate array: its dtype, its other dimension (and length), its attributes."""
    metres = {"units": "m", "long_name": "pixel centre"}
    bands = len(layout.bands)
    return {
        "sample": (str, (), {"long_name": "grid cell"}),
        "time": ("int64", (), {"units": EPOCH_UNITS, "calendar": "proleptic_gregorian"}),
        "epsg": ("int32", (), {"long_name": "EPSG code of the sample's UTM zone (x, y)"}),
        "grid_row_u": ("int32", (), {}),
        "grid_col_r": ("int32", (), {}),
        "centre_lat": ("float64", (), {"units": "degrees_north"}),
        "centre_lon": ("float64", (), {"units": "degrees_east"}),
        "x": ("float64", ("x", layout.width), {"standard_name": "projection_x_coordinate", **metres}),
        "y": ("float64", ("y", layout.height), {"standard_name": "projection_y_coordinate", **metres}),
        "scale": ("float64", ("band", bands), {"long_name": "physical value = pixel * scale + offset"}),
        "offset": ("float64", ("band", bands), {"long_name": "physical value = pixel * scale + offset"}),
        "sample_id": (str, (), {"long_name": "sample id: the key of index.parquet and every stage table"}),
        "crs": (str, (), {"long_name": "CRS of the sample's x/y"}),
        "product_id": (str, (), {"long_name": "id of the item (scene) the pixels came from first"}),
        "cloud_cover": ("float64", (), {"units": "%", "long_name": "cloud cover over the cell (Major TOM)"}),
        "nodata": ("float64", (), {"long_name": "share of the patch's pixels with no data, 0-1"}),
        "processing_baseline": (str, (), {"long_name": "the provider's processing version of the item"}),
    }


def _records(samples: Sequence[Sample]) -> np.ndarray:
    """Each sample's coordinates as JSON text (x and y as the transform's origin and pixel size): what ``close``
    writes the coordinate arrays from. The same sample gives the same text (floats round-trip exactly)."""
    rows = []
    for s in samples:
        record = s.record()
        rows.append(json.dumps({
            "sample": s.cell, "time": round(s.timestamp.timestamp() * 1000), "epsg": int(s.crs.split(":")[1]),
            "grid_row_u": s.row_u, "grid_col_r": s.col_r, "centre_lat": s.centre_lat, "centre_lon": s.centre_lon,
            "x": [s.transform[2], s.transform[0]], "y": [s.transform[5], s.transform[4]],
            "scale": list(s.scales), "offset": list(s.offsets), **{name: record[name] for name in INDEX_COLUMNS},
        }, default=lambda value: value.item()))  # numpy scalars as plain numbers  # fmt: skip
    return np.array(rows, dtype=str)


def _coordinates(records: Sequence[str], layout: PixelLayout) -> dict[str, np.ndarray]:
    """The coordinate arrays' values of the samples of ``records`` (``_records``)."""
    if not all(records):  # the fill value: a position no shard was written to
        raise ValueError("a sample has no record: close a store after writing every shard of its samples")
    rows = [json.loads(str(text)) for text in records]
    columns = {"x": layout.width, "y": layout.height}
    values = {name: np.array([row[name] for row in rows], dtype=dtype)
              for name, (dtype, *_) in _coordinate_specs(layout).items()
              if name not in columns and name not in INDEX_COLUMNS}  # fmt: skip
    for name, size in columns.items():  # pixel centres from the origin and the pixel size
        origin, step = np.array([row[name] for row in rows], dtype="float64").reshape(-1, 2).T
        values[name] = origin[:, None] + step[:, None] * (np.arange(size) + 0.5)
    for name, dtype in INDEX_COLUMNS.items():
        values[name] = np.array([_missing(row[name], dtype) for row in rows], dtype=dtype)
    return values


def _missing(value, dtype) -> object:
    """A missing value as the array can hold it: empty text, or NaN."""
    return value if value is not None else ("" if dtype is str else np.nan)


def _remove_partial_files(root: str) -> None:
    """Temporary files of a write that was killed (local stores only; object stores have none)."""
    if "://" not in root and Path(root).is_dir():
        for partial in Path(root).rglob("*.partial"):
            partial.unlink(missing_ok=True)
