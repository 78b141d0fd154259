"""Samples in Major TOM Core's own layout, so that ESA's Major TOM tools (``MajorTOM/metadata_helpers.py``:
``filter_metadata``, ``read_row``, ``filter_download``; the ``MajorTOM`` PyTorch dataset) read them as they read
Core (huggingface.co/datasets/Major-TOM/Core-S2L2A). One folder per source is one Core-style dataset:

    majortom/<source>/images/part_NNNNN.parquet   shard k of the source as part k + 1 (Core counts from 1): one
                                                 row group per sample, in store order, one row each:
        product_id, grid_cell, product_datetime   strings, as Core
        thumbnail                                PNG bytes: the RGB bands with Core's stretch (below)
        <band> …                                 one GeoTIFF (bytes) per band, named as Core names it (B01 … B12,
                                                 B8A; vv, vh; DEM): the sample's CRS, transform and nodata
        cloud_mask                               Sentinel-2 with SCL: GeoTIFF of SEnSeIv2's 4 classes (below)
    majortom/<source>/metadata.parquet           Core's columns, one row per stored sample, in store order:
        grid_cell, grid_row_u, grid_col_r, product_id, timestamp, cloud_cover, nodata, centre_lat,
        centre_lon, crs, parquet_url, parquet_row (+ sample_id, our key)

``parquet_url`` is relative to ``metadata.parquet`` (``images/part_00001.parquet``); :func:`absolute_urls` makes
it a URL where the folder is served (the Hub's ``…/resolve/main/…`` once published); ``parquet_row`` is the row
group. ``timestamp`` is naive UTC, as in Core, so ``filter_metadata``'s date strings compare with it.

Conventions followed (ESA-PhiLab/Major-TOM, Core's dataset card): S2 thumbnail ``1.3 * reflectance ** 0.6``
clipped to 0..1 as 8 bits (``extras/thumbnail_s2.py``) at the bands' full size; S1 ``vv``/``vh`` in dB stretched
over their valid range, false colour (vv, mean, vh) (``extras/thumbnail_s1rtc.py``). Differences on purpose (the
README lists them): every band at the recipe's resolution (Core keeps each band's native one); reflectance is
``DN * scale + offset`` (Core divides DNs by 10,000, ignoring the offset of baseline 04.00); the cloud mask comes
from SCL, not SEnSeIv2; mask bands such as SCL are kept as columns too; DEM thumbnails are grey, not hillshade.

Written like the other exports: a part per Zarr shard, whole or not at all (a staged file renamed or uploaded),
rewritten only with its shard, and the same samples give the same bytes (GeoTIFF and PNG carry no clock).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from PIL import Image
from rasterio.io import MemoryFile

from eo_etl.sample import Sample
from eo_etl.sources.profile import CollectionProfile
from eo_etl.store.index_batches import Index, index_batches
from eo_etl.store.location import Location

FOLDER, IMAGES, METADATA_NAME = "majortom", "images", "metadata.parquet"
# Core's column for a band, where it is not our band id (Core-DEM's one band is "DEM").
CORE_NAMES = {"cop-dem-glo-30": {"data": "DEM"}}
CLOUD_MASK, CLOUD_MASK_NODATA = "cloud_mask", 255
# SEnSeIv2's '4-class' output (senseiv2/inference.py), which Core's cloud masks come from: clear, thin, thick, shadow.
CLEAR, THIN, THICK, SHADOW = 0, 1, 2, 3
SCL_CLASSES = {10: THIN, 8: THICK, 9: THICK, 3: SHADOW}  # Sen2Cor's thin cirrus, cloud medium/high, cloud shadow
S2_GAIN, S2_GAMMA, DN_SCALE = 1.3, 0.6, 1e-4  # Core's thumbnail_s2.py; DNs / 10,000 where no scale is known
TEXT_COLUMNS = ("product_id", "grid_cell", "product_datetime")

METADATA_SCHEMA = pa.schema([
    ("grid_cell", pa.string()), ("grid_row_u", pa.int64()), ("grid_col_r", pa.int64()), ("product_id", pa.string()),
    ("timestamp", pa.timestamp("us")), ("cloud_cover", pa.float64()), ("nodata", pa.float64()),
    ("centre_lat", pa.float64()), ("centre_lon", pa.float64()), ("crs", pa.string()), ("parquet_url", pa.string()),
    ("parquet_row", pa.int64()), ("sample_id", pa.string()),
])  # fmt: skip


def part_name(k: int) -> str:
    """The data parquet of shard ``k`` (Core's parts count from 1)."""
    return f"part_{k + 1:05d}.parquet"


def part_number(name: str) -> int:
    """Shard of a part's file name (``part_name``'s inverse)."""
    return int(name.removeprefix("part_").removesuffix(".parquet")) - 1


def band_columns(bands: Sequence[str], profile: CollectionProfile | None) -> list[str]:
    """Each band's column, as Core names it."""
    renamed = CORE_NAMES.get(profile.name, {}) if profile else {}
    return [renamed.get(band, band) for band in bands]


def write_part(folder: Location, k: int, samples: Sequence[Sample], profile: CollectionProfile | None) -> Location:
    """Shard ``k``'s samples as ``folder/images/part_….parquet``, one row group each, in order."""
    target = folder / IMAGES / part_name(k)
    rows = (sample_row(sample, profile) for sample in samples)  # one sample's images in memory at a time
    first = next(rows)
    schema = pa.schema([(name, pa.string() if name in TEXT_COLUMNS else pa.binary()) for name in first])
    with target.staged_file() as partial, pq.ParquetWriter(
        partial, schema,
        compression="none",  # GeoTIFFs are deflated and PNGs compressed already
        use_dictionary=False, write_statistics=list(TEXT_COLUMNS),  # no min/max copies of image bytes in the footer
    ) as writer:  # fmt: skip
        for row in itertools.chain([first], rows):
            writer.write_table(pa.Table.from_pylist([row], schema=schema))  # a table per sample: its row group
    return target


def sample_row(sample: Sample, profile: CollectionProfile | None) -> dict[str, str | bytes]:
    """One sample as a row of Core's data parquets."""
    when = pd.Timestamp(sample.timestamp)
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")  # naive times are UTC here
    row: dict[str, str | bytes] = {
        "product_id": sample.product_id or "",
        "grid_cell": sample.cell,
        "product_datetime": f"{when:%Y-%m-%dT%H:%M:%SZ}",
        "thumbnail": png_bytes(thumbnail(sample, profile)),
    }
    for i, column in enumerate(band_columns(sample.bands, profile)):
        scaling = (sample.scales[i], sample.offsets[i]) if len(sample.scales) == len(sample.bands) else None
        row[column] = geotiff_bytes(sample.pixels[i], sample, sample.nodata, column, scaling)
    mask = cloud_mask(sample, profile)
    if mask is not None:
        row[CLOUD_MASK] = geotiff_bytes(mask, sample, CLOUD_MASK_NODATA, CLOUD_MASK)
    return row


def geotiff_bytes(band: np.ndarray, sample: Sample, nodata, name: str, scaling: tuple[float, float] | None = None):
    """One band as a GeoTIFF in memory: the sample's CRS and transform, ``nodata``, deflate."""
    profile = dict(driver="GTiff", count=1, height=band.shape[0], width=band.shape[1], dtype=band.dtype,
                   crs=sample.crs, transform=rasterio.Affine(*sample.transform[:6]), compress="deflate")  # fmt: skip
    if band.dtype.kind in "iu":
        profile["predictor"] = 2  # horizontal differencing: integer bands deflate to about two thirds
    if nodata is not None:
        profile["nodata"] = nodata
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(band, 1)
            dst.set_band_description(1, name)
            if scaling is not None:
                dst.scales, dst.offsets = (scaling[0],), (scaling[1],)
        return memory.read()


def cloud_mask(sample: Sample, profile: CollectionProfile | None) -> np.ndarray | None:
    """SEnSeIv2's classes (0 clear, 1 thin, 2 thick cloud, 3 shadow; 255 no data) from Sen2Cor's SCL, when the
    sample has it; None otherwise (a source without SCL has no cloud_mask column)."""
    quality = profile.quality if profile else None
    if quality is None or quality.band != "SCL" or "SCL" not in sample.bands:
        return None
    scl = sample.pixels[sample.bands.index("SCL")]
    mask = np.full(scl.shape, CLEAR, dtype=np.uint8)
    for value, kind in SCL_CLASSES.items():
        mask[scl == value] = kind
    mask[np.isin(scl, quality.nodata_values)] = CLOUD_MASK_NODATA
    return mask


def thumbnail(sample: Sample, profile: CollectionProfile | None) -> np.ndarray:
    """Core's rendering of the sample, full size: RGB reflectance (S2), vv/vh false colour (S1), else grey."""
    bands = list(sample.bands)
    common = {profile.bands[b].common_name: b for b in bands if b in profile.bands} if profile else {}
    valid = _valid(sample.pixels, sample.nodata)
    if all(name in common for name in ("red", "green", "blue")):
        rgb = [bands.index(common[name]) for name in ("red", "green", "blue")]
        reflectance = np.stack([_physical(sample, i) for i in rgb], -1)
        image = (S2_GAIN * np.clip(reflectance, 0, None) ** S2_GAMMA).clip(0, 1) * 255
        return np.where(valid[rgb].all(0)[..., None], image, 0).astype(np.uint8)
    if "vv" in bands and "vh" in bands:
        vv, vh = (bands.index(name) for name in ("vv", "vh"))
        return _sar(sample.pixels[vv], sample.pixels[vh], valid[vv], valid[vh])
    return _stretch(sample.pixels[0].astype(np.float64), valid[0]).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # uint8: (y, x, 3) is RGB, (y, x) grey
    return buffer.getvalue()


def _valid(pixels: np.ndarray, nodata) -> np.ndarray:
    if nodata is None:
        return np.ones(pixels.shape, dtype=bool)
    return ~np.isnan(pixels) if np.isnan(nodata) else pixels != nodata


def _physical(sample: Sample, i: int) -> np.ndarray:
    """Band ``i`` as reflectance: ``DN * scale + offset`` as recorded, else DN / 10,000 (what Core assumes)."""
    values = sample.pixels[i].astype(np.float64)
    scale = sample.scales[i] if len(sample.scales) == len(sample.bands) else None
    if scale is None or scale != scale or scale in (0, 1):  # unknown, or DNs passed as they are
        return values * DN_SCALE
    return values * scale + sample.offsets[i]


def _stretch(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """0..255 over the valid values' range; invalid pixels 0."""
    out = np.zeros(values.shape, dtype=np.float64)
    if valid.any():
        low, high = values[valid].min(), values[valid].max()
        out[valid] = (values[valid] - low) / (high - low) * 255 if high > low else 0
    return out


def _sar(vv: np.ndarray, vh: np.ndarray, vv_valid: np.ndarray, vh_valid: np.ndarray) -> np.ndarray:
    """Core's S1 thumbnail: each polarisation in dB over its valid range, then (vv, their sum, vh) as RGB."""
    channels = []
    for values, valid in ((vv, vv_valid), (vh, vh_valid)):
        positive = valid & (values > 0)
        floor = values[positive].min() if positive.any() else 1.0
        decibels = 10 * np.log10(np.where(positive, values, floor).astype(np.float64))
        channels.append(_stretch(decibels, valid))
    total = channels[0] + channels[1]
    middle = total * 255 / total.max() if total.max() > 0 else total
    return np.stack([channels[0], middle, channels[1]], -1).astype(np.uint8)


def metadata_table(index: pd.DataFrame, source: str, shard_size: int) -> pa.Table:
    """Core's metadata for ``source``'s stored samples (index rows with a ``zarr_index``), in store order, with
    their ``zarr_index`` last (what puts batches in store order; ``write_metadata`` drops it)."""
    rows = index[(index["source"] == source) & index["zarr_index"].notna()].sort_values("zarr_index")
    position = rows["zarr_index"].astype("int64")
    timestamps = pd.to_datetime(rows["timestamp"], utc=True).dt.tz_convert(None).astype("datetime64[us]")
    columns = {
        **{name: rows[name].to_numpy() for name in ("grid_cell", "grid_row_u", "grid_col_r", "product_id")},
        "timestamp": timestamps.to_numpy(),
        **{name: rows[name].astype("float64").to_numpy() for name in ("cloud_cover", "nodata")},
        **{name: rows[name].to_numpy() for name in ("centre_lat", "centre_lon", "crs")},
        "parquet_url": [f"{IMAGES}/{part_name(k)}" for k in position // shard_size],
        "parquet_row": (position % shard_size).to_numpy(),
        "sample_id": rows["sample_id"].to_numpy(),
        "zarr_index": position.to_numpy(),
    }
    return pa.Table.from_pydict(columns, schema=METADATA_SCHEMA.append(pa.field("zarr_index", pa.int64())))


# what metadata_table reads of the index
METADATA_INDEX_COLUMNS = [
    "source",
    "zarr_index",
    *(name for name in METADATA_SCHEMA.names if not name.startswith("parquet_")),
]


def write_metadata(folder: Location, index: Index, source: str, shard_size: int, batch_size: int | None = None):
    """``folder/metadata.parquet`` from the index (in memory, or where it is written), read ``batch_size`` rows and
    the columns it needs at a time, and put in store order; parts past the last shard (a store that shrank)
    removed."""
    pieces = [
        metadata_table(rows, source, shard_size) for rows in index_batches(index, METADATA_INDEX_COLUMNS, batch_size)
    ]
    if not pieces:
        table = METADATA_SCHEMA.empty_table()
    else:  # store order across the batches
        table = pa.concat_tables(pieces).sort_by("zarr_index").drop_columns("zarr_index").combine_chunks()
    shards = -(-table.num_rows // shard_size)
    for part in (folder / IMAGES).glob("part_*.parquet"):
        if part_number(part.name) >= shards:
            part.remove()
    target = folder / METADATA_NAME
    with target.staged_file() as partial:
        pq.write_table(table, partial)
    return target


def absolute_urls(metadata: pd.DataFrame, base_url: str) -> pd.DataFrame:
    """``metadata`` with each relative ``parquet_url`` joined to ``base_url``, where the folder holding
    ``metadata.parquet`` is served (``https://huggingface.co/datasets/<repo>/resolve/main/majortom/<source>``)."""
    base = base_url.rstrip("/")
    relative = ~metadata["parquet_url"].str.contains("://", regex=False)
    return metadata.assign(parquet_url=metadata["parquet_url"].where(~relative, base + "/" + metadata["parquet_url"]))
