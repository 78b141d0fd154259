"""The facts a caption may state about one sample: a plain dict made from its index row and its labels row.

Every captioner (templates, an LLM) puts these facts into words and nothing else, so a caption can be checked
against them. The shape, with every key optional but ``sample_id``:

    {
      "sample_id": "454U_120R.sentinel-2-l2a.20240601",
      "sensor": "Sentinel-2 L2A",                       # the source's collection, named for people
      "date": "2024-06-14", "month": "June", "year": 2024,
      "season": "winter",                               # astronomical, for the hemisphere of the cell's centre
      "place": {"name": "Putre", "region": "Arica y Parinacota", "country": "Chile"},   # nearest town, offline
      "cloud_percent": 3,
      "land_cover": [{"class": "grassland", "percent": 61}, …],        # largest first, 1 % and more
      "osm": [{"tag": "natural=water", "name": "Lago Chungará", "percent": 12, "where": "north-west"},
              {"tag": "highway=primary", "length_m": 2300, "where": "across the patch"}, …]
    }

Percentages are whole numbers rounded half to even (``round``) once, here, so every captioner and every
check sees the same number. Free text (OSM names and tag values) is untrusted: it is cut to
``TEXT_LIMIT`` characters and control characters are dropped, but never interpreted.

The labels are the rows of the earlier stages' tables for this sample (read from the tables, never from
their modules): ``landcover`` (``classes``: a list of ``{name, fraction}``, fraction 0-1) and ``osm``
(``osm_tags``: a list of ``{key, value, count, area_fraction, length_m, position}``, ``position`` being how
the tag's extent splits over the patch's 3 × 3 ninths, row by row from the top left; an optional ``name``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from eo_etl.text import CONTROL

TEXT_LIMIT = 80  # characters of one free-text fact (an OSM name or tag)
MAX_CLASSES = 6  # land-cover classes kept, largest first
MAX_FEATURES = 8  # OSM features kept, largest first
MIN_PERCENT = 1  # smaller shares are not worth a word
TROPICS = 23.44  # degrees of latitude

# Collection ids → the sensor's name in a sentence; other ids are said as they are.
SENSORS = {
    "sentinel-2-l2a": "Sentinel-2 L2A",
    "sentinel-2-l1c": "Sentinel-2 L1C",
    "sentinel-1-rtc": "Sentinel-1 radar",
    "sentinel-1-grd": "Sentinel-1 radar",
    "landsat-c2-l2": "Landsat",
    "cop-dem-glo-30": "Copernicus DEM",
}
_SEASONS_NORTH = ("winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer", "autumn",
                  "autumn", "autumn", "winter")  # fmt: skip
_OPPOSITE = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}


def clean_text(value: object) -> str:
    """Untrusted text as a fact: control characters (newlines, escapes, bidi overrides) dropped, whitespace
    collapsed, cut to ``TEXT_LIMIT`` characters."""
    text = " ".join(CONTROL.sub(" ", str(value)).split())
    return text[:TEXT_LIMIT].rstrip()


def percent(fraction: float) -> int:
    """A fraction 0-1 as the whole percent every caption states."""
    return round(float(fraction) * 100)


def season(month: int, latitude: float | None) -> str | None:
    """The season of ``month`` at ``latitude``; None in the tropics (their seasons are wet and dry, which
    would need climate data) and where the latitude is unknown."""
    if latitude is None or abs(latitude) < TROPICS:
        return None
    north = _SEASONS_NORTH[month - 1]
    return _OPPOSITE[north] if latitude < 0 else north


_NINTHS = ("north-west", "north", "north-east", "west", "centre", "east", "south-west", "south", "south-east")


def where(position: object) -> str | None:
    """Where in the patch a tag lies, from how its extent splits over the 3 × 3 ninths (row by row from the
    top left): the ninth holding half or more, else the third (row or column) holding 70 % or more, else
    "across the patch"."""
    try:
        shares = [float(v) for v in position]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(shares) != 9 or not all(math.isfinite(v) and v >= 0 for v in shares) or sum(shares) <= 0:
        return None
    total = sum(shares)
    shares = [v / total for v in shares]
    best = max(range(9), key=lambda i: (shares[i], -i))
    if shares[best] >= 0.5:
        return _NINTHS[best]
    thirds = {"north": shares[0:3], "south": shares[6:9], "west": shares[0::3], "east": shares[2::3]}
    for name, part in thirds.items():
        if sum(part) >= 0.7:
            return name
    return "across the patch"


def make_facts(index_row: Mapping[str, Any], landcover: Mapping[str, Any] | None = None,
               osm: Mapping[str, Any] | None = None, *, sensor: str | None = None,
               place: Mapping[str, str] | None = None) -> dict:  # fmt: skip
    """The facts of one sample from its index row and its rows of the ``landcover`` and ``osm`` tables (None:
    no row). ``sensor`` is its source's collection id (the index holds the recipe's source name), ``place``
    the nearest town (eo_etl.captions.place), both optional."""
    facts: dict[str, Any] = {"sample_id": str(index_row["sample_id"])}
    if sensor:
        facts["sensor"] = SENSORS.get(sensor, clean_text(sensor))
    stamp = index_row.get("timestamp")
    if stamp is not None and not pd.isna(stamp):
        day = pd.Timestamp(stamp).tz_convert(UTC) if pd.Timestamp(stamp).tzinfo else pd.Timestamp(stamp)
        facts.update(date=f"{day:%Y-%m-%d}", month=f"{day:%B}", year=day.year)
        if name := season(day.month, _number(index_row.get("centre_lat"))):
            facts["season"] = name
    if place:
        facts["place"] = {key: clean_text(value) for key, value in place.items() if value}
    cloud = _number(index_row.get("cloud_cover"))
    if cloud is not None:
        facts["cloud_percent"] = round(cloud)
    classes = _decoded((landcover or {}).get("classes")) or []
    land_cover = sorted(
        ({"class": clean_text(c["name"]), "percent": percent(c["fraction"])} for c in classes
         if isinstance(c, Mapping) and c.get("name") and _number(c.get("fraction")) is not None),
        key=lambda item: (-item["percent"], item["class"]),
    )  # fmt: skip
    land_cover = [item for item in land_cover if item["percent"] >= MIN_PERCENT][:MAX_CLASSES]
    if land_cover:
        facts["land_cover"] = land_cover
    features = [feature for raw in _decoded((osm or {}).get("osm_tags")) or [] if (feature := _feature(raw))]
    features.sort(key=lambda f: (-f.get("percent", 0), -f.get("length_m", 0), -f.get("count", 0), f["tag"],
                                 f.get("name", "")))  # fmt: skip
    if features:
        facts["osm"] = features[:MAX_FEATURES]
    return facts


def _feature(raw: object) -> dict | None:
    if not isinstance(raw, Mapping):
        return None
    tag = raw.get("tag") or (f"{raw['key']}={raw['value']}" if raw.get("key") and raw.get("value") else None)
    if not tag:
        return None
    feature: dict[str, Any] = {"tag": clean_text(tag)}
    if raw.get("name"):
        feature["name"] = clean_text(raw["name"])
    if (fraction := _number(raw.get("area_fraction"))) is not None and percent(fraction) >= MIN_PERCENT:
        feature["percent"] = percent(fraction)
    if (length := _number(raw.get("length_m"))) is not None and length > 0:
        feature["length_m"] = int(round(length, -2)) or 100  # to 100 m: a caption says "about 2.3 km"
    if (count := _number(raw.get("count"))) is not None and count > 0:
        feature["count"] = int(count)
    if place := where(raw.get("position")):
        feature["where"] = place
    return feature


def _decoded(value: object) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "tolist"):  # numpy arrays from parquet list columns
        return value.tolist()
    return value


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def facts_hash(facts: Mapping[str, Any]) -> str:
    """A stable fingerprint of the facts (canonical JSON, sha256), the cache's key part for them."""
    return hashlib.sha256(canonical(facts).encode()).hexdigest()


def canonical(value: object) -> str:
    """Canonical JSON: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def numbers_in(facts: Mapping[str, Any]) -> set[str]:
    """Every number the facts state (as a caption would write it: 61, 2024, 2.3 for 2300 m, 14 for a day),
    the only numbers a caption may contain."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if key == "length_m" and isinstance(item, int):
                    found.update({str(item), f"{item / 1000:g}", f"{item / 1000:.1f}"})
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, bool):
            return
        elif isinstance(value, int | float):
            found.add(f"{value:g}")
        elif isinstance(value, str):
            for number in re.findall(r"\d+(?:\.\d+)?", value):
                found.update({number, str(int(float(number))) if "." not in number else number})

    walk({key: value for key, value in facts.items() if key != "sample_id"})
    return found


def now() -> str:
    """UTC time as recorded with a generated caption."""
    return datetime.now(UTC).isoformat(timespec="seconds")
