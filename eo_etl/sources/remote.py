"""One policy for everything read over the network: retries with jittered backoff, a concurrency limit per
host, and GDAL settings for reading cloud-optimised GeoTIFFs by HTTP range requests.

An error is *transient* when trying again can help (429, 5xx, timeouts, dropped connections); anything else
(404, a corrupt file) fails at once, and the caller records it.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

import rasterio
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

if TYPE_CHECKING:
    from eo_etl.recipe.models import ServiceLimit

T = TypeVar("T")

# GDAL reads COGs with few, merged range requests and no directory listings; retries are ours (GDAL's off).
GDAL_HTTP_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF,.jp2,.vrt",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "VSI_CACHE": "TRUE",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_HTTP_TIMEOUT": "60",
    "CPL_VSIL_CURL_CHUNK_SIZE": "1048576",
}

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_GDAL_STATUS = re.compile(r"HTTP (?:response )?code:?\s*(\d{3})", re.IGNORECASE)
_GDAL_TRANSIENT_TEXT = ("timed out", "timeout", "connection reset", "couldn't connect", "could not connect")


class TransientError(Exception):
    """A failure worth retrying, raised by our own code (e.g. a truncated read)."""


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind an error from requests, pystac-client or GDAL, if it carries one."""
    status = getattr(error, "status_code", None)
    if status is None and isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
    if status is None and isinstance(error, rasterio.errors.RasterioIOError):
        match = _GDAL_STATUS.search(str(error))
        status = int(match.group(1)) if match else None
    return status


def is_transient(error: BaseException) -> bool:
    # pystac-client re-raises dropped connections as APIError: look at what was being handled.
    while error.__cause__ or error.__context__:
        if _transient_here(error):
            return True
        error = error.__cause__ or error.__context__
    return _transient_here(error)


def _transient_here(error: BaseException) -> bool:
    if isinstance(error, TransientError | requests.ConnectionError | requests.Timeout | TimeoutError):
        return True
    status = http_status(error)
    if status is not None:
        return status in TRANSIENT_STATUS
    if isinstance(error, rasterio.errors.RasterioIOError):
        return any(text in str(error).lower() for text in _GDAL_TRANSIENT_TEXT)
    return False


class RetryPolicy:
    """Exponential backoff with full jitter for transient errors; counts retries for the metrics."""

    def __init__(self, attempts: int = 5, initial_s: float = 0.5, max_s: float = 30.0):
        self.attempts, self.initial_s, self.max_s = attempts, initial_s, max_s
        self.retries = 0
        self._lock = threading.Lock()

    def _count(self, state: RetryCallState) -> None:
        with self._lock:
            self.retries += 1

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=self.initial_s, max=self.max_s),
            stop=stop_after_attempt(self.attempts),
            before_sleep=self._count,
            reraise=True,
        )
        return retrying(fn, *args, **kwargs)


class HostLimiter:
    """At most ``per_host`` requests in flight to any one host, across threads. Hosts in ``limits`` get
    their own (qps, concurrency): requests to them are also paced to ``qps`` a second."""

    def __init__(self, per_host: int = 8, limits: Mapping[str, tuple[float | None, int]] | None = None):
        self.per_host = per_host
        self.limits = dict(limits or {})
        self._slots: dict[str, tuple[threading.BoundedSemaphore, _Pacer | None]] = {}
        self._lock = threading.Lock()

    @classmethod
    def share(cls, limits: Mapping[str, ServiceLimit], workers: int) -> HostLimiter:
        """One worker's share of the recipe's per-service limits, when ``workers`` run at once."""
        return cls(limits={
            host: (None if limit.qps is None else limit.qps / workers, max(1, math.ceil(limit.concurrency / workers)))
            for host, limit in limits.items()
        })  # fmt: skip

    @contextmanager
    def slot(self, url: str) -> Iterator[None]:
        host = urlparse(url.removeprefix("/vsicurl/")).netloc or "local"
        with self._lock:
            if host not in self._slots:
                qps, concurrency = self.limits.get(host, (None, self.per_host))
                self._slots[host] = (threading.BoundedSemaphore(concurrency), _Pacer(qps) if qps else None)
            semaphore, pacer = self._slots[host]
        with semaphore:
            if pacer is not None:
                pacer.wait()
            yield


class _Pacer:
    """Spaces requests ``1 / qps`` seconds apart, across threads."""

    def __init__(self, qps: float):
        self.interval, self.next_at = 1.0 / qps, 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        if start > now:
            time.sleep(start - now)


def limited_call(policy: RetryPolicy, limiter: HostLimiter, url: str, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` with the policy's retries, every attempt (retries too) taking a slot of ``url``'s host:
    the one way a reader calls a service."""

    def attempt() -> T:
        with limiter.slot(url):
            return fn(*args)

    return policy.call(attempt)


def gdal_env(**overrides: str) -> rasterio.Env:
    """A rasterio environment with the HTTP settings above; use one per thread."""
    return rasterio.Env(**{**GDAL_HTTP_OPTIONS, **overrides})


def gdal_path(href: str) -> str:
    """What GDAL opens for an asset href: local paths and file:// as files, http(s) through /vsicurl/."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if parsed.scheme == "s3":
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    if parsed.scheme == "gs":
        return f"/vsigs/{parsed.netloc}{parsed.path}"
    return href
