"""One row of the dataset index, declared once: each field of :class:`IndexRow` is a column of ``index.parquet``
with its Arrow type and description, and ``INDEX_SCHEMA`` (and so ``schemas/index.schema.json``) is generated from
the fields. The build's writers make ``IndexRow``s and its readers get them back (:meth:`IndexRow.from_dict`, from
the build's state, the index file or a frame of it); :meth:`IndexRow.to_dict` is the one place a row becomes a plain
dict (for JSON and pandas). The stages after the store take index rows as dicts read from the file (stages/core.py).

A row fills up as the build goes: the sample gives its own columns (``Sample.row``: ``SAMPLE_COLUMNS``), staging
adds ``recipe_hash`` and ``version``, the assignment of positions the location columns, and the index writer the
footprint (``geometry``, ``bbox``). Columns declared non-null hold a value once the row is in the index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any

import pyarrow as pa

_TEXT, _FLOATS, _TEXTS = pa.string(), pa.list_(pa.float64()), pa.list_(pa.string())
_TIME = pa.timestamp("us", tz="UTC")
_BBOX = pa.struct([(side, pa.float64()) for side in ("xmin", "ymin", "xmax", "ymax")])


def _column(kind: pa.DataType, description: str, *, nullable: bool = True, default: Any = None, **extra) -> Any:
    """A field of the row: its column's Arrow type, description and nullability; ``default=MISSING``: required."""
    metadata = {"arrow": kind, "description": description, "nullable": nullable, **extra}
    if isinstance(default, dict):  # an empty one, each row its own
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


def _missing(value) -> bool:
    """None, NaN or NaT (what pandas gives for a null), or pandas' NA."""
    try:
        return value is None or bool(value != value)
    except TypeError:  # pandas' NA is neither equal nor unequal to itself
        return True


# each takes the plain value (the build's state, Arrow) first, at once: rows are read many at a time
def _text(value) -> str | None:
    if value is None or type(value) is str:
        return value
    return None if _missing(value) else str(value)


def _integer(value) -> int | None:
    if value is None or type(value) is int:
        return value
    return None if _missing(value) else int(value)


def _number(value) -> float | None:
    if type(value) is float:
        return None if value != value else value
    return None if _missing(value) else float(value)


def _instant(value) -> datetime | None:
    """A time as a datetime: from a datetime, a pandas Timestamp or an ISO string (the build's state)."""
    if _missing(value):
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value


def _sequence(value) -> tuple:
    """A list column's value as a tuple of plain values (pandas gives numpy arrays); () for none."""
    if type(value) is list:
        return tuple(value)
    if value is None:
        return ()
    return tuple(value.tolist() if hasattr(value, "tolist") else value)


def _hrefs(value) -> dict[str, tuple[str, ...]]:
    """band -> hrefs: a JSON object in the index (bands vary by source), a mapping in memory."""
    if isinstance(value, str):
        value = json.loads(value)
    return {} if value is None else {band: tuple(hrefs) for band, hrefs in value.items()}


@dataclass(frozen=True, kw_only=True)
class IndexRow:
    """One row of ``index.parquet``: a (cell, source, version, time slice), failures included."""

    # fmt: off
    sample_id: str | None = _column(_TEXT, "the sample's identity, CELL.SOURCE.WINDOW_START (eo_etl.sample.SampleId); "
                                    "every stage table is keyed by it", nullable=False, default=MISSING)
    grid_cell: str = _column(_TEXT, "Major TOM cell name, e.g. 454U_120R", nullable=False, default=MISSING)
    grid_row_u: int = _column(pa.int64(), "Major TOM row (signed: U north of the equator, D south)",
                              nullable=False, default=MISSING)
    grid_col_r: int = _column(pa.int64(), "Major TOM column (signed: R east of 0°, L west)",
                              nullable=False, default=MISSING)
    source: str = _column(_TEXT, "the recipe's source name", nullable=False, default=MISSING)
    product_id: str | None = _column(_TEXT, "id of the item (scene) the pixels came from first")
    timestamp: datetime | None = _column(_TIME, "acquisition time of that item")
    cloud_cover: float | None = _column(pa.float64(), "cloud, percent: over the cell from the quality band, else "
                                        "the scene's")
    scene_cloud_cover: float | None = _column(pa.float64(), "the item's own cloud cover, percent")
    cloud_basis: str | None = _column(_TEXT, "where cloud_cover comes from: a quality band's name (SCL, QA_PIXEL) "
                                      "or 'scene'")
    nodata: float | None = _column(pa.float64(), "share of the patch's pixels with no data, 0-1")
    centre_lat: float | None = _column(pa.float64(), "latitude of the cell's centre")
    centre_lon: float | None = _column(pa.float64(), "longitude of the cell's centre")
    crs: str = _column(_TEXT, "the pixels' CRS (the cell's UTM zone), e.g. EPSG:32719", nullable=False,
                       default=MISSING)
    transform: tuple[float, ...] = _column(_FLOATS, "affine (a, b, c, d, e, f) of the pixels; empty without pixels",
                                           default=())
    bands: tuple[str, ...] = _column(_TEXTS, "band names, in the order of the pixels", default=())
    dtype: str | None = _column(_TEXT, "numpy dtype of the pixels")
    height: int | None = _column(pa.int64(), "pixel rows")
    width: int | None = _column(pa.int64(), "pixel columns")
    nodata_value: float | None = _column(pa.float64(), "the pixels' nodata value")
    scales: tuple[float, ...] = _column(_FLOATS, "per band: physical value = pixel * scale + offset", default=())
    offsets: tuple[float, ...] = _column(_FLOATS, "per band offsets", default=())
    items: tuple[str, ...] = _column(_TEXTS, "every item the pixels came from, best first", default=())
    hrefs: dict[str, tuple[str, ...]] = _column(_TEXT, "JSON object: band -> the asset hrefs read", default={},
                                                convert=_hrefs)
    processing_baseline: str | None = _column(_TEXT, "the provider's processing version of the item")
    slice_start: datetime | None = _column(_TIME, "start of the time slice the sample was chosen in "
                                           "(recipe time.slices); empty when the recipe does not slice time")
    slice_end: datetime | None = _column(_TIME, "end of that time slice (exclusive)")
    status: str = _column(_TEXT, "ok, rejected or failed", nullable=False, default=MISSING)
    reason: str | None = _column(_TEXT, "why a sample was rejected or failed")
    recipe_hash: str | None = _column(_TEXT, "fingerprint of the recipe that built the row")
    version: int | None = _column(pa.int64(), "dataset version (time window) of the row", nullable=False)
    # where a stored sample's pixels are; None where the format was not written (or the sample not stored)
    zarr_group: str | None = _column(_TEXT, "pixels.zarr group (the source) holding the sample")
    zarr_index: int | None = _column(pa.int64(), "position along the group's sample dimension")
    video_path: str | None = _column(_TEXT, "video cube folder holding the sample")
    video_frame: int | None = _column(pa.int64(), "frame of the sample in that cube")
    geometry: bytes | None = _column(pa.binary(), "footprint of the pixels (else of the cell) in lon/lat, WKB",
                                     nullable=False)
    bbox: dict[str, float] | None = _column(_BBOX, "bounds of geometry (GeoParquet 1.1 covering)")
    # fmt: on

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> IndexRow:
        """The row of ``values``: a record of the build's state (times as ISO text), a pandas row of the index
        (NaN or NaT for nulls, numpy arrays, ``hrefs`` as JSON) or an Arrow one. Keys that are not columns are
        ignored (a reader's frame may hold more); columns left out take their defaults."""
        return cls(**{name: _CONVERTERS[name](value) for name, value in values.items() if name in _CONVERTERS})

    def to_dict(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The row's ``names`` columns (all by default) as plain values (lists, ``hrefs`` a dict of lists): what
        the build's state stores as JSON and the index writer takes into pandas."""
        return {name: _plain(getattr(self, name)) for name in (COLUMNS if names is None else names)}


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _converter(kind: pa.DataType) -> Callable[[Any], Any]:
    if pa.types.is_timestamp(kind):
        return _instant
    if pa.types.is_integer(kind):
        return _integer
    if pa.types.is_floating(kind):
        return _number
    if pa.types.is_list(kind):
        return _sequence
    if pa.types.is_string(kind):
        return _text
    return lambda value: value  # binary (WKB), struct (bbox)


_FIELDS = fields(IndexRow)
COLUMNS = tuple(f.name for f in _FIELDS)
_CONVERTERS = {f.name: f.metadata.get("convert") or _converter(f.metadata["arrow"]) for f in _FIELDS}
SAMPLE_COLUMNS = COLUMNS[: COLUMNS.index("reason") + 1]  # what the sample itself gives (Sample.row)
STAGED_COLUMNS = (*SAMPLE_COLUMNS, "recipe_hash", "version")  # what the build's state records
INDEX_SCHEMA = pa.schema([
    pa.field(f.name, f.metadata["arrow"], nullable=f.metadata["nullable"],
             metadata={"description": f.metadata["description"]})
    for f in _FIELDS
])  # fmt: skip
