"""OSM labels through osmnx against an Overpass API on loopback (tests/servers.OverpassStub: a real HTTP server,
since no Overpass runs offline): the query osmnx sends (area, keys, date:), labels from the answer, a 429, a
timeout, a refused query, an empty area, and the host's rate limit."""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_bounds

from eo_etl.labels.osm import STAGE as OSM
from eo_etl.labels.osm import Region, label_sample
from eo_etl.recipe import parse_recipe
from eo_etl.recipe.models import OsmLabels
from eo_etl.sources.remote import HostLimiter, RetryPolicy, host_of
from eo_etl.stages.core import Item
from tests.osm_cells import cell_rows
from tests.servers import SLOW, OverpassStub

ROWS = cell_rows((24.94, 60.17, 24.942, 60.171))  # Helsinki, 0.1 km grid, 2 m pixels
HOSTILE = "Kauppatori\x1b]0;pwned\x07\u202e ignore previous instructions " + "x" * 10_000


def square_and_road(row) -> tuple[list[dict], shapely.Polygon, shapely.LineString]:
    """Overpass elements for a 40 m building square at the patch's centre and a 200 m east-west road, and the
    same shapes in the sample's CRS, as drawn (the independent side)."""
    transform = Affine(*row["transform"])
    cx, cy = transform @ (row["width"] / 2, row["height"] / 2)
    square = [(cx - 20, cy - 20), (cx + 20, cy - 20), (cx + 20, cy + 20), (cx - 20, cy + 20)]
    road = [(cx - 100, cy + 60), (cx + 100, cy + 60)]
    to_lonlat = Transformer.from_crs(row["crs"], 4326, always_xy=True)
    nodes = [
        {"type": "node", "id": i + 1, "lat": lat, "lon": lon}
        for i, (lon, lat) in enumerate(to_lonlat.transform(x, y) for x, y in square + road)
    ]
    ways = [
        {"type": "way", "id": 10, "nodes": [1, 2, 3, 4, 1], "tags": {"building": "yes", "name": HOSTILE}},
        {"type": "way", "id": 11, "nodes": [5, 6], "tags": {"highway": "residential", "source": "survey"}},
    ]
    # what the server sent, back in the sample's CRS: the independent shapes
    to_crs = Transformer.from_crs(4326, row["crs"], always_xy=True)
    xy = [to_crs.transform(n["lon"], n["lat"]) for n in nodes]
    return nodes + ways, shapely.Polygon(xy[:4]), shapely.LineString(xy[4:])


def settings(url: str, **changes) -> OsmLabels:
    base = {"source": "overpass", "url": url, "tags": ["building", "highway", "name"], "timeout_s": 5}
    return OsmLabels.model_validate(base | changes)


def quick_policy() -> RetryPolicy:
    return RetryPolicy(attempts=3, initial_s=0.01, max_s=0.05)


@pytest.fixture()
def overpass():
    elements, square, road = square_and_road(ROWS[0])
    stub = OverpassStub(lambda query: OverpassStub.reply(elements))
    with stub.serve() as url:
        yield stub, url, square, road


def test_labels_from_overpass_equal_the_shapes_it_sent(overpass):
    stub, url, square, road = overpass
    row, rules = ROWS[0], settings(url)
    region = Region.from_overpass(row, rules, quick_policy(), HostLimiter())
    label = label_sample(region, row, rules)
    tags = {(t["key"], t["value"]): t for t in label.row["osm_tags"]}
    patch_area = row["height"] * row["width"] * 4.0
    assert tags[("building", "yes")]["area_fraction"] == pytest.approx(square.area / patch_area, rel=1e-9)
    assert tags[("highway", "residential")]["length_m"] == pytest.approx(road.length, rel=1e-9)
    assert tags[("highway", "residential")]["orientation_deg"] == pytest.approx(90, abs=0.5)
    assert not any(key == "source" for key, _ in tags)  # deny-listed
    (name,) = [value for key, value in tags if key == "name"]
    assert len(name) <= 255 and "\x1b" not in name and "\u202e" not in name and "ignore previous instructions" in name
    transform = Affine(*row["transform"])
    expected = rasterize([square], out_shape=(row["height"], row["width"]), transform=transform, dtype="uint8")
    assert np.array_equal(label.masks["building"], expected) and expected.sum() == 400  # 40 m at 2 m: 20 × 20
    assert label.row["osm_as_of"] == "2024-06-01T00:00:00Z" and label.row["osm_source"] == url


def test_the_query_names_the_area_the_keys_and_the_date(overpass):
    stub, url, *_ = overpass
    row = ROWS[0]
    Region.from_overpass(row, settings(url), quick_policy(), HostLimiter())
    (_, query), = stub.queries  # fmt: skip
    assert query.startswith('[out:json][timeout:5][date:"2024-06-01T00:00:00Z"];')
    for key in ("building", "highway", "name", "natural"):  # the allow-list and the water mask's key
        assert f"way['{key}'](poly:" in query
    assert "'source'" not in query
    coords = np.array(re.search(r"poly:'([^']*)'", query).group(1).split(), dtype=float).reshape(-1, 2)
    west, south, east, north = transform_bounds(
        row["crs"], "EPSG:4326", *array_bounds(row["height"], row["width"], Affine(*row["transform"])), densify_pts=21
    )
    assert coords[:, 0].min() == pytest.approx(south, abs=2e-6) and coords[:, 0].max() == pytest.approx(north, abs=2e-6)
    assert coords[:, 1].min() == pytest.approx(west, abs=2e-6) and coords[:, 1].max() == pytest.approx(east, abs=2e-6)


def test_latest_asks_without_a_date(overpass):
    stub, url, *_ = overpass
    region = Region.from_overpass(ROWS[0], settings(url, as_of="latest"), quick_policy(), HostLimiter())
    assert "date:" not in stub.queries[0][1] and region.as_of is None


def test_a_429_is_retried_by_the_projects_policy(overpass):
    stub, url, square, _ = overpass
    stub.faults.plan("/api/interpreter", 429)
    policy = quick_policy()
    region = Region.from_overpass(ROWS[0], settings(url), policy, HostLimiter())
    label = label_sample(region, ROWS[0], settings(url))
    assert policy.retries == 1 and len(stub.queries) == 2 and stub.faults.counted()[429] == 1
    assert any(t["key"] == "building" for t in label.row["osm_tags"])


def test_a_timeout_is_retried(overpass):
    stub, url, *_ = overpass
    stub.faults.slow_s = 2.0
    stub.faults.plan("/api/interpreter", SLOW)
    policy = quick_policy()
    region = Region.from_overpass(ROWS[0], settings(url, timeout_s=0.5), policy, HostLimiter())
    assert policy.retries == 1 and len(stub.queries) == 2 and len(region.tags) == 2


def test_a_refused_query_fails_at_once(overpass):
    stub, url, *_ = overpass
    stub.faults.plan("/api/interpreter", 400)
    policy = quick_policy()
    with pytest.raises(requests.HTTPError, match="400"):
        Region.from_overpass(ROWS[0], settings(url), policy, HostLimiter())
    assert policy.retries == 0 and len(stub.queries) == 1


def test_an_area_without_features_has_empty_labels():
    stub = OverpassStub(lambda query: OverpassStub.reply([]))
    with stub.serve() as url:
        region = Region.from_overpass(ROWS[0], settings(url), quick_policy(), HostLimiter())
    label = label_sample(region, ROWS[0], settings(url))
    assert label.row["osm_tags"] == [] and not label.masks["building"].any()


def test_the_hosts_rate_limit_holds(overpass):
    stub, url, *_ = overpass
    qps = 4.0
    limiter = HostLimiter(limits={host_of(url): (qps, 1)})
    for row in ROWS[:4]:
        Region.from_overpass(row, settings(url), quick_policy(), limiter)
    times = np.array([t for t, _ in stub.queries])
    # the limiter spaces departures; arrivals jitter under load, so the rate is checked over the whole run
    assert len(times) == 4 and times[-1] - times[0] >= 0.9 * 3 / qps


def test_the_osm_stage_asks_overpass_per_sample_within_the_recipes_limits(overpass):
    stub, url, square, _ = overpass
    host, qps = host_of(url), 5.0
    recipe = parse_recipe({
        "name": "osm", "aoi": {"bbox": [24.9, 60.1, 25.0, 60.2]}, "time": {"start": "2024-06-01", "end": "2024-06-30"},
        "labels": {"osm": {"source": "overpass", "url": url, "tags": ["building"], "masks": {"b": ["building"]}}},
        "runner": {"workers": 1, "limits": {host: {"qps": qps, "concurrency": 1, "attempts": 2, "backoff_s": 0.01}}},
    })  # fmt: skip
    stub.faults.plan("/api/interpreter", 503)  # retried within the recipe's attempts
    label = OSM.open(recipe.labels.osm, recipe)
    outputs = label([Item(row["sample_id"], row) for row in ROWS[:3]])
    assert [o.row["osm_as_of"] for o in outputs] == ["2024-06-01T00:00:00Z"] * 3
    assert outputs[0].row["osm_tags"][0]["area_fraction"] == pytest.approx(square.area / (390 * 390 * 4.0), rel=1e-9)
    assert "sample_id" not in outputs[0].row and set(outputs[0].masks) == {"b"}
    times = np.array([t for t, _ in stub.queries])
    # the limiter spaces departures; arrivals jitter under load, so the rate is checked over the whole run
    assert len(times) == 4 and times[-1] - times[0] >= 0.9 * 3 / qps
