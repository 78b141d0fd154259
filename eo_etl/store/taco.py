"""Samples as a TACO dataset: tacotoolbox writes it, ``tacoreader.load(path)`` opens it with none of our code.

    <path>/<dataset_id>_<block>.tacozip     the samples of one spatial block, one COG each, by row then column
                                            (``…_<block>_part0001.tacozip``, … when a block exceeds ``shard_size``)
    <path>/.tacocat/                        every shard's metadata in one place; ``tacoreader.load(path)`` finds it

Each sample's row holds tacotoolbox's STAC fields (``stac:crs``, ``stac:tensor_shape``, ``stac:geotransform``,
``stac:time_start/_end/_middle``, ``stac:centroid``), the Major TOM columns of :meth:`Sample.record` with our
provenance, and ``spatial_code``; tacoreader adds ``internal:gdal_vsi``, a path rasterio opens the COG by.

Why it is laid out so:
- ZIP shards, not tacotoolbox's FOLDER format: grouping and size splitting exist only for ZIP, and one file per
  shard is what object stores and the Hub serve; GDAL reads a sample in place (``/vsisubfile/`` + ``/vsicurl/``).
- Groups are shards, not nested FOLDER samples: TACO's position-invariant tree requires every root folder to
  hold the same child ids in the same order, which the cells of different blocks never do.
- The spatial code is a coarse Major TOM block: ``block`` × ``block`` cells, named after its first cell
  (``454U_120R`` is in block ``440U_120R`` at 20 cells, about 200 km). Major TOM counts columns per row from 0°
  longitude, so far from it blocks lean at high latitudes, but they stay contiguous.
- The same samples give the same bytes: samples are sorted (block, row, column), and the one thing tacozip
  stamps from the clock, each entry's modification time, is reset to 1980-01-01.
- A TACO is built in ``<path>.partial`` and renamed, so a killed run never leaves a half-written dataset. COGs
  are written as samples arrive (one sample's pixels at a time) and deleted once their block is zipped, so the
  scratch space peaks at the COGs of all samples plus one block's shards.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zipfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import rasterio
import tacotoolbox
from tacotoolbox.datamodel import Sample as TacoSample
from tacotoolbox.datamodel import Taco, Tortilla
from tacotoolbox.sample.datamodel import SampleExtension
from tacotoolbox.sample.extensions.stac import STAC

from eo_etl.grid import MajorTomGrid
from eo_etl.sample import OK, Sample

BLOCK_CELLS = 20  # a spatial block is 20 × 20 Major TOM cells, about 200 km on a side
DEFAULT_PROVIDERS = ({"name": "eo-etl", "roles": ["processor"]},)
# DOS time 00:00:00, date 1980-01-01: the earliest a ZIP entry can say, as reproducible builds use.
_DOS_EPOCH = struct.pack("<HH", 0, (0 << 9) | (1 << 5) | 1)

# Our columns: name -> (Arrow type, description). Explicit types keep every shard's schema the same even
# where a block's values are all None, which tacotoolbox's consolidation requires.
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "grid_cell": (pa.string(), "Major TOM cell name, e.g. 454U_120R"),
    "grid_row_u": (pa.int64(), "Major TOM row, signed (U positive, D negative)"),
    "grid_col_r": (pa.int64(), "Major TOM column, signed (R positive, L negative)"),
    "spatial_code": (pa.string(), "Spatial block of the cell (name of the block's first cell); one per shard"),
    "source": (pa.string(), "Source the pixels came from"),
    "product_id": (pa.string(), "Product (scene) id of the primary item"),
    "timestamp": (pa.timestamp("us", tz="UTC"), "Acquisition time of the primary item"),
    "cloud_cover": (pa.float64(), "Cloud cover, percent: over the cell when the source has a cloud mask, else scene"),
    "scene_cloud_cover": (pa.float64(), "The primary item's own cloud cover, percent"),
    "nodata": (pa.float64(), "Fraction of the cell's pixels that are nodata"),
    "centre_lat": (pa.float64(), "Latitude of the sample's centre, degrees"),
    "centre_lon": (pa.float64(), "Longitude of the sample's centre, degrees"),
    "crs": (pa.string(), "CRS of the pixels (the cell's UTM zone)"),
    "bands": (pa.list_(pa.string()), "Band names, in the raster's band order"),
    "dtype": (pa.string(), "Pixel data type"),
    "nodata_value": (pa.float64(), "Pixel value meaning nodata (null when none or NaN)"),
    "scales": (pa.list_(pa.float64()), "Per band: physical value = pixel * scale + offset"),
    "offsets": (pa.list_(pa.float64()), "Per band: physical value = pixel * scale + offset"),
    "items": (pa.list_(pa.string()), "Every item the pixels came from, best first"),
    "hrefs": (pa.map_(pa.string(), pa.list_(pa.string())), "Band -> assets read"),
    "processing_baseline": (pa.string(), "Processing baseline of the primary item"),
}


class _Record(SampleExtension):
    """Our columns for one sample, typed and described (tacotoolbox puts the descriptions in COLLECTION.json)."""

    values: dict

    def get_schema(self) -> pa.Schema:
        return pa.schema([pa.field(name, dtype) for name, (dtype, _) in COLUMNS.items()])

    def get_field_descriptions(self) -> dict[str, str]:
        return {name: description for name, (_, description) in COLUMNS.items()}

    def _compute(self, sample: TacoSample) -> pa.Table:
        row = dict(self.values)
        row["hrefs"] = list(row["hrefs"].items())  # Arrow builds a map from (key, value) pairs
        return pa.Table.from_pylist([row], schema=self.get_schema())


def spatial_code(row_u: int, col_r: int, block: int = BLOCK_CELLS) -> str:
    """The block of ``block`` × ``block`` Major TOM cells holding a cell, named after its first (lowest) cell."""
    return str(MajorTomGrid.names(row_u // block * block, col_r // block * block)[0])


def write_taco(
    path: Path,
    samples: Iterable[Sample],
    *,
    dataset_id: str,
    description: str = "",
    version: str = "0.1.0",
    licenses: Sequence[str] = ("cc-by-4.0",),
    providers: Sequence[dict] = DEFAULT_PROVIDERS,
    tasks: Sequence[str] = ("foundation-model",),
    title: str | None = None,
    keywords: Sequence[str] = (),
    block: int = BLOCK_CELLS,
    shard_size: str = "4GB",
    overwrite: bool = False,
) -> list[Path]:
    """Write the samples with status "ok" as a TACO dataset in the folder ``path``; returns its shards, in order.
    ``tacoreader.load(path)`` opens them all (through ``path/.tacocat``), ``tacoreader.load(shard)`` one.

    Samples that are not "ok" have no pixels and are skipped (the index records them). A sample's id is its
    cell name, so one TACO holds one sample per cell: write one per source. ``providers`` are tacotoolbox
    ``Provider`` fields (name, roles, url); ``tasks`` its task names.
    """
    path = Path(path)
    _check_arguments(path, dataset_id, block, overwrite)
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    scratch = staging / "scratch"
    scratch.mkdir(parents=True)
    collection = _collection(version, description, licenses, providers, tasks, title, keywords)
    try:
        shards = _write_staged(staging, scratch, samples, dataset_id, collection, block, shard_size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)
    return [path / shard.name for shard in shards]


def _check_arguments(path: Path, dataset_id: str, block: int, overwrite: bool) -> None:
    """Refuse a bad TACO id, an empty block, or a dataset that exists and is not to be overwritten."""
    if not re.fullmatch(r"[a-z0-9_-]+", dataset_id):
        raise ValueError(f"dataset_id {dataset_id!r}: TACO ids are lowercase letters, digits, '_' and '-'")
    if block < 1:
        raise ValueError(f"block must be at least 1 cell, got {block}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")


def _collection(version: str, description: str, licenses: Sequence[str], providers: Sequence[dict],
                tasks: Sequence[str], title: str | None, keywords: Sequence[str]) -> dict:  # fmt: skip
    """The TACO collection's fields (tacotoolbox's ``Taco`` beside its samples)."""
    return {
        "dataset_version": version,
        "description": description,
        "licenses": list(licenses),
        "providers": [dict(p) for p in providers],
        "tasks": list(tasks),
        "title": title,
        "keywords": list(keywords) or None,
    }


def _write_staged(staging: Path, scratch: Path, samples: Iterable[Sample], dataset_id: str, collection: dict,
                  block: int, shard_size: str) -> list[Path]:  # fmt: skip
    """The samples' COGs (in ``scratch``, removed after), a TACO per block of cells and the ``.tacocat`` over them,
    in ``staging``; the shards, in order."""
    entries = _write_cogs(scratch, samples, block)
    shards = []
    for code, group in _blocks(entries):
        taco = Taco(tortilla=Tortilla(samples=group), id=dataset_id, **collection)
        shards += _write_shards(staging / f"{dataset_id}_{code}.tacozip", taco, shard_size, scratch)
    shutil.rmtree(scratch)
    tacotoolbox.create_tacocat(shards, output=staging)
    return shards


def _write_cogs(scratch: Path, samples: Iterable[Sample], block: int) -> list[tuple[tuple, TacoSample]]:
    """Each "ok" sample as a COG in ``scratch`` with its TACO metadata, as it arrives (only one sample's pixels
    are held); returns (sort key, tacotoolbox sample) pairs."""
    entries, ids, acquisitions = [], set(), set()
    for sample in samples:
        if sample.status != OK:
            continue
        if sample.pixels is None or sample.timestamp is None:
            raise ValueError(f"sample {sample.key} is 'ok' but has no pixels or no timestamp")
        if (sample.cell, sample.timestamp) in acquisitions:
            raise ValueError(f"two samples of cell {sample.cell} at {sample.timestamp}: a TACO holds each once")
        acquisitions.add((sample.cell, sample.timestamp))
        sample_id = sample_id_of(sample)
        if sample_id in ids:
            raise ValueError(f"two samples {sample_id}: a TACO holds each sample once")
        ids.add(sample_id)
        cog = write_cog(scratch / f"{sample_id}.tif", sample)
        taco_sample = TacoSample(id=sample_id, path=cog)
        taco_sample.extend_with(_stac(sample, sample_id))
        code = spatial_code(sample.row_u, sample.col_r, block)
        taco_sample.extend_with(_Record(values=_values(sample, code)))
        # a place's samples over time (time slices, versions) one after the other, oldest first
        key = (sample.row_u // block, sample.col_r // block, sample.row_u, sample.col_r, sample.timestamp)
        entries.append((key, taco_sample))
    if not entries:
        raise ValueError("no samples with status 'ok' to write: a TACO needs at least one")
    return sorted(entries, key=lambda entry: entry[0])


def sample_id_of(sample: Sample) -> str:
    """A TACO sample's id: the sample's identity (:class:`eo_etl.sample.SampleId`), the ``sample_id`` of the index
    and of every stage table, so a TACO row joins them. A cell's sample of a later window (a dataset's next
    version) has its own id, and the ids of earlier samples never change."""
    return str(sample.sample_id)


def write_cog(path: Path, sample: Sample) -> Path:
    """The sample's pixels as a cloud-optimised GeoTIFF (metadata first, then tiles: one range read gets the
    header remotely), deflate; band names, scales and offsets in GDAL's own fields, the record in its tags."""
    bands, height, width = sample.pixels.shape
    with rasterio.open(
        path, "w", driver="COG", count=bands, height=height, width=width, dtype=sample.pixels.dtype,
        crs=sample.crs, transform=rasterio.Affine(*sample.transform), nodata=sample.nodata,
        blocksize=256, compress="deflate", predictor="YES",
        overviews="NONE",  # samples are read whole; overviews would add a third to every file
    ) as dst:  # fmt: skip
        dst.write(sample.pixels)
        dst.descriptions = sample.bands
        if len(sample.scales) == bands and len(sample.offsets) == bands:
            dst.scales, dst.offsets = sample.scales, sample.offsets
        record = sample.record()
        dst.update_tags(**{k: json.dumps(v, default=str) for k, v in record.items() if k != "transform"})
    return path


def _stac(sample: Sample, sample_id: str) -> STAC:
    """tacotoolbox's STAC fields; the sample is one acquisition, so it starts and ends at its timestamp."""
    a, b, c, d, e, f = sample.transform[:6]
    micros = _micros(sample.timestamp)
    return STAC(
        sample_id=sample_id,
        crs=sample.crs,
        tensor_shape=tuple(int(n) for n in sample.pixels.shape),
        geotransform=(c, a, b, f, d, e),  # GDAL's order
        time_start=micros,
        time_end=micros,
    )


def _micros(timestamp: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float on the way)."""
    return (timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _values(sample: Sample, code: str) -> dict:
    record = sample.record()
    values = {name: record.get(name) for name in COLUMNS}
    values["spatial_code"] = code
    return values


def _blocks(entries: list[tuple[tuple, TacoSample]]) -> list[tuple[str, list[TacoSample]]]:
    """Sorted entries cut into their spatial blocks, in order."""
    groups: dict[str, list[TacoSample]] = {}
    for _, taco_sample in entries:
        groups.setdefault(taco_sample.spatial_code, []).append(taco_sample)
    return list(groups.items())


def _write_shards(target: Path, taco: Taco, shard_size: str, scratch: Path) -> list[Path]:
    """One block's shard(s), with clean ZIP times; its COGs are deleted once zipped."""
    shards = tacotoolbox.create(taco, target, split_size=shard_size, consolidate=False, temp_dir=scratch)
    for shard in shards:
        _reset_zip_times(shard)
    for taco_sample in taco.tortilla.samples:
        taco_sample.path.unlink()
    return shards


def _reset_zip_times(path: Path) -> None:
    """Set every entry's modification time, local header and central directory alike, to 1980-01-01 00:00.

    tacozip stamps the wall clock there and nothing else reads it (TACO locates entries by offset and checks
    nothing by time), so this is what keeps two writes of the same samples byte-identical."""
    with zipfile.ZipFile(path) as zf:
        infos, central = zf.infolist(), zf.start_dir
    with open(path, "r+b") as f:
        for info in infos:
            f.seek(info.header_offset)
            if f.read(4) != b"PK\x03\x04":
                raise ValueError(f"{path}: no local header at {info.header_offset}")
            f.seek(info.header_offset + 10)  # version, flags, method, then time and date
            f.write(_DOS_EPOCH)
        for _ in infos:
            f.seek(central)
            header = f.read(46)
            if header[:4] != b"PK\x01\x02":
                raise ValueError(f"{path}: no central directory entry at {central}")
            f.seek(central + 12)  # signature, two versions, flags, method, then time and date
            f.write(_DOS_EPOCH)
            name, extra, comment = struct.unpack("<HHH", header[28:34])
            central += 46 + name + extra + comment
