"""OpenStreetMap features of a small area from an Overpass API, through osmnx, for areas no local extract covers.

Every query goes through the project's one path for network calls (``limited_call``: the host's rate limit and
concurrency, retries with backoff on 429, 5xx and timeouts). osmnx would wait out a 429 or 504 itself, 55 s and
again without end; a response hook turns every HTTP error into an exception before osmnx sees it, so the retry
policy decides. osmnx keeps its settings in module globals, so queries in one process take turns.

An as-of time makes the query ``[date:"…"]``: OSM as it was then (the sample's acquisition time), recorded with
the labels. A query that finds nothing is an empty area, not an error.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import geopandas as gpd
import requests

from eo_etl.sources.remote import HostLimiter, RetryPolicy, limited_call

_SETTINGS = threading.Lock()  # osmnx's settings are module globals
OVERPASS_SETTINGS = "[out:json][timeout:{timeout}]{{maxsize}}"  # whole seconds for the server; osmnx adds maxsize


def overpass_date(when: datetime) -> str:
    """The UTC time in Overpass's ``date:`` form, ``2024-06-01T10:30:00Z``."""
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return f"{when.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def public_url(url: str) -> str:
    """``url`` fit to record with the labels: no user, password or query (where keys hide)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def _raise_http_errors(response: requests.Response, *args, **kwargs) -> None:
    if response.status_code >= 400:
        response.raise_for_status()


def _query(url: str, bounds: tuple[float, float, float, float], keys: list[str], as_of: str | None,
           timeout_s: float) -> gpd.GeoDataFrame:  # fmt: skip
    import osmnx
    from osmnx._errors import InsufficientResponseError

    with _SETTINGS:
        settings = osmnx.settings
        settings.overpass_url = url.rstrip("/")
        settings.use_cache = False
        settings.requests_timeout = timeout_s
        query_settings = OVERPASS_SETTINGS.format(timeout=math.ceil(timeout_s))
        settings.overpass_settings = query_settings + (f'[date:"{as_of}"]' if as_of else "")
        settings.requests_kwargs = {"hooks": {"response": [_raise_http_errors]}}
        try:
            return osmnx.features.features_from_bbox(bounds, dict.fromkeys(keys, True))
        except InsufficientResponseError as error:
            if "No matching features" in str(error):
                return gpd.GeoDataFrame({"geometry": []}, geometry="geometry", crs="EPSG:4326")
            raise


def fetch_overpass(
    url: str,
    bounds: tuple[float, float, float, float],
    keys: list[str],
    *,
    as_of: str | None,
    timeout_s: float,
    policy: RetryPolicy,
    limiter: HostLimiter,
) -> gpd.GeoDataFrame:
    """Features with any of ``keys`` reaching into ``bounds`` (west, south, east, north), as ``read_pbf`` gives
    them: ``geometry`` (lon/lat) and ``tags`` (a dict per feature, raw text)."""
    found = limited_call(policy, limiter, url, _query, url, bounds, keys, as_of, timeout_s)
    columns = [c for c in found.columns if c != "geometry"]
    tags = [
        {key: value for key, value in zip(columns, values) if isinstance(value, str)}  # NaN: a tag it lacks
        for values in found[columns].itertuples(index=False, name=None)
    ]
    return gpd.GeoDataFrame({"tags": tags}, geometry=found.geometry.values, crs="EPSG:4326")
