"""Finding items in a STAC API with pystac-client, or in a static catalog on disk or on the web.

A server that conforms to the query or filter extension filters cloud cover itself; for any other
(and for static catalogs, which are walked and filtered here) the same rule runs on the client. A static
catalog's item (or child) that cannot be read is skipped and kept in ``StacCatalog.skipped`` with its path and
why: one bad file never fails the cells the other items cover.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pystac
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import FallbackToPystac, NoConformsTo
from shapely.geometry import box, shape

from eo_etl.sources.remote import HostLimiter, RetryPolicy, limited_call


class StacCatalog:
    """The items of one collection at ``url``, searched by bbox, time window and scene cloud cover."""

    def __init__(self, url: str, collection: str, *, cloud_property: str | None = "eo:cloud_cover", policy=None,
                 limiter: HostLimiter | None = None):  # fmt: skip
        self.url, self.collection, self.cloud_property = url, collection, cloud_property
        self.policy = policy or RetryPolicy()
        self.limiter = limiter or HostLimiter()
        # No retries inside pystac-client: the one policy in remote.py owns them.
        with _static_is_fine():
            self.client = self._call(Client.open, url, stac_io=StacApiIO(max_retries=None))
        self.searchable = self.client.conforms_to(ConformanceClasses.ITEM_SEARCH)
        self._walked: list[pystac.Item] | None = None  # a static catalog's items, read once
        self.skipped: dict[str, str] = {}  # a static catalog's unreadable items or children: href -> why

    def search(
        self, bbox: tuple[float, float, float, float], start: datetime, end: datetime, max_cloud: float = 100.0
    ) -> list[pystac.Item]:
        """Items over ``bbox`` (lon/lat) acquired in [start, end) with cloud cover ≤ ``max_cloud`` %, by id. A
        collection without cloud cover (``cloud_property`` None: radar, elevation) is never filtered by it."""
        if self.searchable:
            items = self._call(self._search_api, bbox, start, end, max_cloud)
        else:
            items = self._static_items()
        items = [
            item
            for item in items
            if item.collection_id in (None, self.collection)
            and _overlaps(item, bbox)
            and start <= item_time(item) < end
            and scene_cloud(item, self.cloud_property) <= max_cloud
        ]
        return sorted(items, key=lambda item: item.id)

    def _static_items(self) -> list[pystac.Item]:
        if self._walked is None:
            with _static_is_fine():
                self._walked = list(self._walk(self.client))
        return self._walked

    def _walk(self, catalog: pystac.Catalog) -> Iterator[pystac.Item]:
        """Every item under ``catalog``, each link resolved on its own (transient errors retried), so that an
        unreadable item or child is skipped and recorded instead of ending the walk."""
        root = catalog.get_root()
        for rel in (pystac.RelType.ITEM, pystac.RelType.CHILD):
            for link in catalog.get_links(rel):
                try:
                    target = self._call(lambda link=link: link.resolve_stac_object(root=root).target)
                except Exception as error:
                    cause = error.__cause__ or error
                    self.skipped[link.get_absolute_href() or link.href] = f"{type(cause).__name__}: {cause}"[:200]
                    continue
                if isinstance(target, pystac.Item):
                    yield target
                elif isinstance(target, pystac.Catalog):
                    yield from self._walk(target)

    def _call(self, fn, *args, **kwargs):
        return limited_call(self.policy, self.limiter, self.url, lambda: fn(*args, **kwargs))

    def _search_api(self, bbox, start: datetime, end: datetime, max_cloud: float) -> list[pystac.Item]:
        # STAC intervals include both ends; ours excludes the end.
        interval = f"{_iso(start)}/{_iso(end - timedelta(milliseconds=1))}"
        params: dict = {"collections": [self.collection], "bbox": list(bbox), "datetime": interval}
        if max_cloud < 100 and self.cloud_property:  # a server drops items that lack the property
            if self.client.conforms_to(ConformanceClasses.QUERY):
                params["query"] = {self.cloud_property: {"lte": max_cloud}}
            elif self.client.conforms_to(ConformanceClasses.FILTER):
                params["filter_lang"] = "cql2-json"
                params["filter"] = {"op": "<=", "args": [{"property": self.cloud_property}, max_cloud]}
        return list(self.client.search(**params).items())


@contextmanager
def _static_is_fine():
    """Silence pystac-client's warnings that a static catalog is not an API: walking it is the plan."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoConformsTo)
        warnings.simplefilter("ignore", FallbackToPystac)
        yield


def item_time(item: pystac.Item) -> datetime:
    """The acquisition time: ``datetime``, or the start of ``start_datetime``/``end_datetime``."""
    when = item.datetime or pystac.utils.str_to_datetime(item.properties["start_datetime"])
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def scene_cloud(item: pystac.Item, cloud_property: str | None = "eo:cloud_cover") -> float:
    """The item's cloud cover in percent; 0 for items that carry none (radar, elevation): they rank by time."""
    value = item.properties.get(cloud_property) if cloud_property else None
    return 0.0 if value is None else float(value)


def _overlaps(item: pystac.Item, bbox) -> bool:
    if item.geometry is None:
        return False
    return shape(item.geometry).intersects(box(*bbox))


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")
