"""OpenStreetMap labels of a sample: its kept tags with their geometry statistics, and masks on its pixel grid.

A ``Region`` holds the features of one area, read once (a ``.osm.pbf`` extract, or one Overpass answer): only
those with a kept tag or a mask class, their tags already made fit to store. Per CRS (a UTM zone) it projects
them once and indexes them (an STRtree), so labelling a sample is a query, a clip and some sums.

``label_sample(region, row, settings)`` reads only the sample's index row: ``sample_id``, ``crs``, ``transform``
(a, b, c, d, e, f), ``height`` and ``width``; it gives one row of the labels table and one mask per class.

The row (``OSM_SCHEMA``): ``osm_tags``, one entry per kept ``key=value``, largest first, with
- ``count``: features with the tag that can be seen in the patch;
- ``area_fraction``: share of the patch their polygons cover (overlaps counted once);
- ``length_m``: length of their lines inside the patch, metres;
- ``position``: how their extent (area, else length, else count) splits over the patch's 3 × 3 ninths,
  row by row from the top left (sums to 1);
- ``orientation_deg`` / ``orientation_strength``: the length-weighted axial mean direction of their lines,
  degrees clockwise from grid north in [0, 180), and how strongly they share it (1: all parallel; 0: none);
  null without lines;
- ``extends_past``: whether any of them reaches beyond the patch.
A feature counts only when what lies inside the patch could be seen at the sample's ground resolution: a
polygon of at least ``min_area_px`` pixels, a line of at least ``min_length_px`` pixels (nodes only when
``points`` is set). Masks take every feature of their class, whatever its size: the rasteriser decides.
A sample with no OSM data has an empty ``osm_tags`` and empty masks, not an error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
import shapely.geometry
from rasterio.features import rasterize
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_bounds

from eo_etl.labels.osm_pbf import read_pbf
from eo_etl.labels.osm_tags import TagRules
from eo_etl.labels.overpass import fetch_overpass, overpass_date, public_url
from eo_etl.sources.remote import HostLimiter, RetryPolicy
from eo_etl.stages.core import Item, Labeller, Output, Stage

if TYPE_CHECKING:
    from eo_etl.recipe.models import OsmLabels, Recipe

POLYGON, LINE, POINT = 0, 1, 2

OSM_TAG_TYPE = pa.struct([
    ("key", pa.string()), ("value", pa.string()), ("count", pa.int64()), ("area_fraction", pa.float64()),
    ("length_m", pa.float64()), ("position", pa.list_(pa.float64(), 9)), ("orientation_deg", pa.float64()),
    ("orientation_strength", pa.float64()), ("extends_past", pa.bool_()),
])  # fmt: skip
OSM_COLUMNS = pa.schema([
    pa.field("osm_tags", pa.list_(OSM_TAG_TYPE), metadata={"description": "kept OSM tags and their statistics"}),
    pa.field("osm_source", pa.string(), metadata={"description": "the extract's file name or the Overpass endpoint"}),
    pa.field("osm_as_of", pa.string(), metadata={"description": "OSM as of this UTC time (Overpass date:); "
                                                 "null: as the source holds it"}),
])  # fmt: skip
OSM_SCHEMA = OSM_COLUMNS.insert(0, pa.field("sample_id", pa.string(), nullable=False))  # the osm.parquet table


@dataclass
class OsmLabel:
    """One sample's labels: its row of the table (``OSM_SCHEMA``) and its masks (class -> uint8, height × width)."""

    row: dict
    masks: dict[str, np.ndarray]


def _kind_and_shape(geometry) -> tuple[int, object]:
    """A valid geometry and its kind: polygons win over lines over points in what ``make_valid`` leaves."""
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    parts = shapely.get_parts(geometry)
    for kind, types in ((POLYGON, (3, 6)), (LINE, (1, 2, 5)), (POINT, (0, 4))):
        chosen = [part for part in parts if shapely.get_type_id(part) in types and not part.is_empty]
        if chosen:
            return kind, shapely.union_all(chosen) if len(chosen) > 1 else chosen[0]
    return -1, None


@dataclass
class Region:
    """The features of one area, read once: per feature its ``geometry`` (lon/lat), ``kinds`` (POLYGON, LINE,
    POINT), kept ``tags`` and mask ``classes``; the ``source`` and ``as_of`` its labels record."""

    geometry: gpd.GeoSeries
    kinds: np.ndarray
    tags: list[dict[str, str]]
    classes: list[tuple[str, ...]]
    source: str
    as_of: str | None = None
    _projected: dict[str, Projected] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, raw: gpd.GeoDataFrame, rules: TagRules, source: str, as_of: str | None = None) -> Region:
        """The features of ``raw`` (``geometry``, ``tags``) worth keeping under ``rules``."""
        rows = []
        for tags, geometry in zip(raw["tags"], raw.geometry.values):
            if geometry is None or geometry.is_empty:
                continue
            cleaned = rules.clean(tags)
            kept, classes = rules.kept(cleaned), rules.classes(cleaned)
            if not (kept or classes):
                continue
            kind, shape = _kind_and_shape(geometry)
            if shape is not None:
                rows.append((shape, kind, kept, classes))
        shapes, kinds, tags, classes = zip(*rows) if rows else ((), (), (), ())
        geometry = gpd.GeoSeries(list(shapes), crs="EPSG:4326")
        return cls(geometry, np.asarray(kinds, dtype=np.int8), list(tags), list(classes), source, as_of)

    @classmethod
    def from_pbf(cls, path: str | Path, settings: OsmLabels) -> Region:
        """Every feature of a local extract, read once (``settings``: the recipe's ``labels.osm``)."""
        raw = read_pbf(path, points=settings.points)
        return cls.of(raw, TagRules.of(settings), Path(path).name)

    @classmethod
    def from_overpass(cls, row: Mapping, settings: OsmLabels, policy: RetryPolicy, limiter: HostLimiter) -> Region:
        """The features around one sample from ``settings.url``, as of its acquisition time unless ``settings.as_of``
        is "latest" (or the row has no time)."""
        crs, transform, height, width = sample_grid(row)
        bounds = transform_bounds(crs, "EPSG:4326", *array_bounds(height, width, transform), densify_pts=21)
        when = row.get("timestamp") if settings.as_of == "acquisition" else None
        as_of = overpass_date(pd.Timestamp(when).to_pydatetime()) if when is not None and not pd.isna(when) else None
        rules = TagRules.of(settings)
        raw = fetch_overpass(settings.url, bounds, rules.query_keys(), as_of=as_of, timeout_s=settings.timeout_s,
                             policy=policy, limiter=limiter)  # fmt: skip
        return cls.of(raw, rules, public_url(settings.url), as_of)

    def projected(self, crs: str) -> Projected:
        """The features in ``crs``, indexed, made once per CRS."""
        if crs not in self._projected:
            geometries = self.geometry.to_crs(crs).values if len(self.geometry) else np.array([])
            self._projected[crs] = Projected.of(np.asarray(geometries, dtype=object), self.kinds, self.tags)
        return self._projected[crs]


@dataclass
class Projected:
    """A region's features in one CRS: their spatial index, the pairs of polygons with a tag in common whose
    areas overlap (only their tags' areas need a union), and each feature as GeoJSON for the rasteriser, made
    once (a feature lies in many overlapping samples)."""

    geometries: np.ndarray
    tree: shapely.STRtree
    overlaps: tuple[np.ndarray, np.ndarray, list[set[tuple[str, str]]]]
    _geojson: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def of(cls, geometries: np.ndarray, kinds: np.ndarray, tags: list[dict[str, str]]) -> Projected:
        tree = shapely.STRtree(geometries)
        polygons = np.flatnonzero(kinds == POLYGON)
        left, right = tree.query(geometries[polygons], predicate="intersects") if len(polygons) else ([], [])
        pairs = [(polygons[i], j) for i, j in zip(left, right) if polygons[i] < j and kinds[j] == POLYGON]
        shared = [tags[i].items() & tags[j].items() for i, j in pairs]
        pairs = [pair for pair, common in zip(pairs, shared) if common]
        first, second = (np.array(side, dtype=int) for side in zip(*pairs)) if pairs else (np.zeros(0, int),) * 2
        overlap = shapely.relate_pattern(geometries[first], geometries[second], "2********")  # interiors share area
        common = [set(tags[i].items() & tags[j].items()) for i, j in zip(first[overlap], second[overlap])]
        return cls(geometries, tree, (first[overlap], second[overlap], common))

    def overlapping(self, seen: np.ndarray) -> set[tuple[str, str]]:
        """The tags two of whose polygons among ``seen`` (a mask over all features) overlap."""
        first, second, common = self.overlaps
        both = np.flatnonzero(seen[first] & seen[second])
        return set().union(*(common[k] for k in both))

    def geojson(self, index: int) -> dict:
        if index not in self._geojson:
            self._geojson[index] = shapely.geometry.mapping(self.geometries[index])
        return self._geojson[index]


def sample_grid(row: Mapping) -> tuple[str, Affine, int, int]:
    """The pixel grid (crs, transform, height, width) an index row records; a clear error when it has none."""
    values = row.get("transform")
    height, width = row.get("height"), row.get("width")
    if values is None or len(values) < 6 or not height or not width or not row.get("crs"):
        raise ValueError(f"sample {row.get('sample_id')}: its index row has no pixel grid (crs, transform, size)")
    transform = Affine(*[float(v) for v in values[:6]])
    if transform.b or transform.d:
        raise ValueError(f"sample {row.get('sample_id')}: its pixel grid is rotated; OSM labels need a north-up one")
    return str(row["crs"]), transform, int(height), int(width)


def _ninths(transform: Affine, height: int, width: int) -> list[tuple[float, float, float, float]]:
    """The patch's 3 × 3 ninths (xmin, ymin, xmax, ymax), row by row from the top left, in the sample's CRS."""
    xs = [transform.c + transform.a * width * i / 3 for i in range(4)]
    ys = [transform.f + transform.e * height * i / 3 for i in range(4)]
    return [(xs[c], min(ys[r], ys[r + 1]), xs[c + 1], max(ys[r], ys[r + 1])) for r in range(3) for c in range(3)]


def _ninth_of(point, transform: Affine, height: int, width: int) -> int:
    """The ninth (0-8) a point inside the patch falls in; on an edge between two, the later one."""
    col, row = ~transform @ (point.x, point.y)
    return min(int(row * 3 // height), 2) * 3 + min(int(col * 3 // width), 2)


def _line_directions(lines: np.ndarray) -> np.ndarray:
    """Per line: (Σ l·cos 2φ, Σ l·sin 2φ, Σ l) over its segments, φ the direction from the x axis."""
    sums = np.zeros((len(lines), 3))
    parts, owner = shapely.get_parts(lines, return_index=True)
    if not len(parts):
        return sums
    coords, part = shapely.get_coordinates(parts, return_index=True)
    same = part[1:] == part[:-1]
    dx, dy = np.diff(coords[:, 0])[same], np.diff(coords[:, 1])[same]
    length, angle = np.hypot(dx, dy), 2 * np.arctan2(dy, dx)
    feature = owner[part[:-1][same]]
    for column, values in enumerate((length * np.cos(angle), length * np.sin(angle), length)):
        sums[:, column] = np.bincount(feature, weights=values, minlength=len(lines))
    return sums


def label_sample(region: Region, row: Mapping, settings: OsmLabels) -> OsmLabel:
    """The OSM labels of the sample whose index row is ``row`` (``settings``: the recipe's ``labels.osm``)."""
    crs, transform, height, width = sample_grid(row)
    projected = region.projected(crs)
    geometries, tree = projected.geometries, projected.tree
    patch = shapely.Polygon([transform @ corner for corner in ((0, 0), (width, 0), (width, height), (0, height))])
    found = tree.query(patch, predicate="intersects") if len(geometries) else np.array([], dtype=int)
    found.sort()
    whole, kinds = geometries[found], region.kinds[found]
    tags, classes = [region.tags[i] for i in found], [region.classes[i] for i in found]
    past = ~shapely.covered_by(whole, patch)
    inside = whole.copy()  # most features lie wholly inside: only the others are clipped
    inside[past] = shapely.intersection(whole[past], patch)

    pixel_area = abs(transform.determinant)
    gsd = math.sqrt(pixel_area)
    area, length = shapely.area(inside), shapely.length(inside)
    big_enough = {POLYGON: area >= max(settings.min_area_px * pixel_area, 1e-9),
                  LINE: length >= max(settings.min_length_px * gsd, 1e-9), POINT: settings.points}  # fmt: skip
    seen = np.select([kinds == kind for kind in big_enough], list(big_enough.values()), False)
    seen &= ~shapely.is_empty(inside)
    ninths = _ninths(transform, height, width)
    ninth_of = partial(_ninth_of, transform=transform, height=height, width=width)
    seen_anywhere = np.zeros(len(geometries), dtype=bool)
    seen_anywhere[found[seen]] = True
    overlapping = projected.overlapping(seen_anywhere)
    entries = _tag_statistics(tags, inside, kinds, seen, past, patch.area, ninths, ninth_of, overlapping)
    entries.sort(key=lambda t: (-t["area_fraction"], -t["length_m"], -t["count"], t["key"], t["value"]))
    masks = {
        name: _mask([projected.geojson(i) for i, c in zip(found, classes) if name in c], transform, height, width)
        for name in settings.masks
    }
    label_row = {"sample_id": row["sample_id"], "osm_tags": entries[: settings.max_tags], "osm_source": region.source,
                 "osm_as_of": region.as_of}  # fmt: skip
    return OsmLabel(label_row, masks)


def _mask(geometries: list, transform: Affine, height: int, width: int) -> np.ndarray:
    if not geometries:
        return np.zeros((height, width), dtype=np.uint8)
    return rasterize(geometries, out_shape=(height, width), transform=transform, fill=0, default_value=1, dtype="uint8")


def _tag_statistics(tags, inside, kinds, seen, past, patch_area, ninths, ninth_of, overlapping) -> list[dict]:
    """One entry per kept key=value over the features that can be seen (see the module's notes)."""
    members = _members(tags, seen)
    if not members:
        return []
    lines = np.flatnonzero(seen & (kinds == LINE))
    line_at = {int(i): n for n, i in enumerate(lines)}
    line_ninths = np.stack([shapely.length(shapely.clip_by_rect(inside[lines], *box)) for box in ninths], axis=1)
    directions = _line_directions(inside[lines])
    polygons = np.flatnonzero(seen & (kinds == POLYGON))
    polygon_at = {int(i): n for n, i in enumerate(polygons)}
    areas = shapely.area(inside[polygons])
    polygon_ninths = np.stack([shapely.area(shapely.clip_by_rect(inside[polygons], *box)) for box in ninths], axis=1)

    entries = []
    for (key, value), chosen in members.items():
        chosen = np.asarray(chosen)
        on_polygons = np.array([polygon_at[i] for i in chosen if i in polygon_at], dtype=int)
        on_lines = np.array([line_at[i] for i in chosen if i in line_at], dtype=int)
        if (key, value) in overlapping:  # count shared ground once
            union = shapely.union_all(inside[polygons[on_polygons]])
            area = union.area
            position = np.array([shapely.clip_by_rect(union, *box).area for box in ninths]) / area
        else:
            area = float(areas[on_polygons].sum())
            position = polygon_ninths[on_polygons].sum(axis=0) / area if area > 0 else None
        if area <= 0 and len(on_lines) and directions[on_lines, 2].sum() > 0:  # no area: where its lines run
            position = line_ninths[on_lines].sum(axis=0) / line_ninths[on_lines].sum()
        elif area <= 0:  # points: the ninth each falls in
            position = np.bincount([ninth_of(inside[i]) for i in chosen], minlength=9) / len(chosen)
        orientation, strength = _orientation(*(directions[on_lines].sum(axis=0) if len(on_lines) else (0, 0, 0)))
        entries.append({
            "key": key, "value": value, "count": len(chosen),
            "area_fraction": float(area / patch_area),
            "length_m": float(directions[on_lines, 2].sum()) if len(on_lines) else 0.0,
            "position": [float(p) for p in position], "orientation_deg": orientation,
            "orientation_strength": strength, "extends_past": bool(past[chosen].any()),
        })  # fmt: skip
    return entries


def _members(tags, seen: np.ndarray) -> dict[tuple[str, str], list[int]]:
    """The features (their positions) that carry each key=value, of those that can be seen."""
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in np.flatnonzero(seen):
        for key, value in tags[i].items():
            members[(key, value)].append(int(i))
    return members


def _orientation(cos2: float, sin2: float, total: float) -> tuple[float | None, float | None]:
    """The mean bearing of lines (0-180°, from their doubled-angle sums weighted by length ``total``) and how
    strongly they share it (0-1); None for both without lines."""
    if total <= 0:
        return None, None
    # the x axis is east, angles count anticlockwise: a bearing is clockwise from north
    orientation = float((90.0 - math.degrees(math.atan2(sin2, cos2) / 2)) % 180.0)
    return orientation, float(math.hypot(cos2, sin2) / total)


def open_labeller(settings: OsmLabels, recipe: Recipe) -> Labeller:
    """The stage's function: per batch of samples, their OSM rows and masks. A local extract is read here, once
    per worker; Overpass is asked once per sample, within the recipe's limits for its host (``runner.limits``)."""
    if settings.source == "pbf":
        region = Region.from_pbf(settings.path, settings)
        regions = lambda row: region  # noqa: E731
    else:
        policy = RetryPolicy.of(recipe.runner.limits)
        limiter = HostLimiter.share(recipe.runner.limits, recipe.runner.workers)
        regions = lambda row: Region.from_overpass(row, settings, policy, limiter)  # noqa: E731

    def label(items: Sequence[Item]) -> list[Output]:
        outputs = []
        for item in items:
            labels = label_sample(regions(item.row), item.row, settings)
            outputs.append(Output({k: v for k, v in labels.row.items() if k != "sample_id"}, labels.masks))
        return outputs

    return label


STAGE = Stage(
    name="osm",
    group="labels",
    section="labels.osm",
    open=open_labeller,
    columns=OSM_COLUMNS,
    masks=lambda settings: dict.fromkeys(settings.masks, 0),
)
