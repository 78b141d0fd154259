"""One policy for everything read over the network: retries with jittered backoff (attempts and backoff per
host), a concurrency limit per host, and GDAL settings for reading cloud-optimised GeoTIFFs by HTTP range
requests.

An error is *transient* when trying again can help (429, 5xx, timeouts, dropped connections, empty replies);
anything else (403, 404, a file that is not a raster) fails at once, and the caller records it. A refused read is
refused again: a signed href is signed right before its read, with a token that outlasts the read and its
retries (signing.py).

GDAL words a failed HTTP request as the open or the block read it broke ("not recognized as being in a
supported file format", "Read failed"), the status only in a debug message. So a GDAL failure on a remote
path that names no status or network error is checked against the server with one small ranged GET: a
failing or throttling server is transient, a refusal (401, 403), a 404 or bytes that are no raster are
permanent (as when GDAL names the status), and a server that serves a raster now means the read met a fault
that has passed (retried; if every attempt ends so, the file itself is at fault). After any failure GDAL's
memory of the URL (existence, size, blocks) is dropped, so the next read, a retry or another cell's, asks the
server again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

import rasterio
import requests
from rasterio._err import CPLE_BaseError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from eo_etl.text import redacted

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
# curl's words for a request that never got a whole answer: every "CURL error" is the network's
_GDAL_TRANSIENT_TEXT = ("curl error", "timed out", "timeout", "connection reset", "couldn't connect",
                        "could not connect", "empty reply")  # fmt: skip
# The first bytes of the rasters GDAL reads here: TIFF and BigTIFF (both byte orders), JPEG 2000, VRT
RASTER_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"\x00\x00\x00\x0cjP", b"\xff\x4f\xff\x51",
                     b"<VRTDataset")  # fmt: skip
PROBE_TIMEOUT_S = 30.0
log = logging.getLogger(__name__)


class TransientError(Exception):
    """A failure worth retrying, raised by our own code (e.g. a truncated read)."""


class ReadError(Exception):
    """A remote file that could not be read, said plainly (which file, what happened) and classified by what
    happened: ``transient`` when trying again can help. ``unexplained``: GDAL failed while the server serves
    the file; retried, but not evidence of a transient fault."""

    def __init__(self, message: str, *, transient: bool, unexplained: bool = False):
        super().__init__(message)
        self.transient, self.unexplained = transient, unexplained


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
    if isinstance(error, ReadError):  # already classified by what happened
        return error.transient
    # pystac-client re-raises dropped connections as APIError: look at what was being handled.
    while error.__cause__ or error.__context__:
        if _transient_here(error):
            return True
        error = error.__cause__ or error.__context__
    return _transient_here(error)


def _transient_here(error: BaseException) -> bool:
    if isinstance(error, ReadError):
        return error.transient
    if isinstance(error, TransientError | requests.ConnectionError | requests.Timeout | TimeoutError | ConnectionError):
        return True
    status = http_status(error)
    if status is not None:
        return status in TRANSIENT_STATUS
    if isinstance(error, rasterio.errors.RasterioIOError | CPLE_BaseError):
        return any(text in str(error).lower() for text in _GDAL_TRANSIENT_TEXT)
    return False


def unreachable(error: BaseException, url: str) -> ConnectionError | None:
    """``error`` said plainly when it is that ``url`` could not be reached (a refused or dropped connection, a
    name that does not resolve): the innermost cause, not the layers of clients around it."""
    chain = list(_chain(error))
    if not any(isinstance(e, requests.ConnectionError | requests.Timeout) for e in chain):
        return None
    cause = chain[-1]
    return ConnectionError(f"{url} cannot be reached ({type(cause).__name__}: {cause})")


def host_of(url: str) -> str:
    """The host a URL or GDAL path asks (``host:port``), the key of per-host limits; "local" for files."""
    return urlparse(url.removeprefix("/vsicurl/")).netloc or "local"


class RetryPolicy:
    """Exponential backoff with full jitter for transient errors; counts retries, in all and per host.

    The defaults (8 attempts, waits up to 1, 2, 4 … 60 s: about a minute in all) outlast an object store's
    throttling burst; ``hosts`` gives some hosts their own (attempts, initial_s, max_s)."""

    def __init__(self, attempts: int = 8, initial_s: float = 1.0, max_s: float = 60.0,
                 hosts: Mapping[str, tuple[int, float, float]] | None = None):  # fmt: skip
        self.attempts, self.initial_s, self.max_s = attempts, initial_s, max_s
        self.hosts = dict(hosts or {})
        self.retries = 0
        self.by_host: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, limits: Mapping[str, ServiceLimit]) -> RetryPolicy:
        """The recipe's retry budgets (``runner.limits``), the defaults for hosts it does not list."""
        return cls(
            hosts={host: (limit.attempts, limit.backoff_s, limit.max_backoff_s) for host, limit in limits.items()}
        )

    def budget(self, host: str) -> tuple[int, float, float]:
        return self.hosts.get(host, (self.attempts, self.initial_s, self.max_s))

    def longest_wait_s(self, host: str = "") -> float:
        """The most a call to ``host`` can wait between its attempts, all waits together."""
        attempts, initial_s, max_s = self.budget(host)
        return sum(min(max_s, initial_s * 2 ** (k + 1)) for k in range(attempts - 1))

    def call(self, fn: Callable[..., T], *args, host: str = "", **kwargs) -> T:
        attempts, initial_s, max_s = self.budget(host)

        def count(state: RetryCallState) -> None:
            with self._lock:
                self.retries += 1
                self.by_host[host or "other"] += 1

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=initial_s, max=max_s),
            stop=stop_after_attempt(attempts),
            before_sleep=count,
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
        host = host_of(url)
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

    return policy.call(attempt, host=host_of(url))


def gdal_call(
    policy: RetryPolicy, limiter: HostLimiter, path: str, fn: Callable[..., T], *args, what: str = "", **kwargs
) -> T:
    """``fn(*args, **kwargs)``, which reads the GDAL ``path``, as ``limited_call`` does. A failure is a
    ``ReadError`` that names ``what`` was read (the path by default), classified by what happened; GDAL
    forgets the URL after it (see the module's notes)."""
    unexplained = []

    def attempt() -> T:
        with limiter.slot(path):
            try:
                return fn(*args, **kwargs)
            except (rasterio.errors.RasterioError, CPLE_BaseError) as error:
                forget(path)
                failure = classify(error, path, what or path)
                unexplained.append(failure.unexplained)
                raise failure from error

    try:
        return policy.call(attempt, host=host_of(path))
    except ReadError as error:
        if error.unexplained and len(unexplained) > 1 and all(unexplained):  # no try showed a fault: the file did
            raise ReadError(
                f"{error} (the server serves the file, yet every read of it failed: it is damaged)", transient=False
            ) from error
        raise


def classify(error: BaseException, path: str, what: str) -> ReadError:
    """What a GDAL failure reading ``path`` was: the status or network error GDAL names, else what one
    small ranged GET of the file finds (http(s) only). The message starts with ``what``."""
    said = f"{what}: {redacted(gdal_messages(error))}"  # GDAL names the path it read, a signed href's token and all
    status = next((s for e in _chain(error) if (s := http_status(e)) is not None), None)
    if status is not None:
        return ReadError(said, transient=status in TRANSIENT_STATUS)
    if any(is_transient(e) for e in _chain(error)):
        return ReadError(said, transient=True)
    url = path.removeprefix("/vsicurl/")
    if not url.startswith(("http://", "https://")):
        # a local file fails for good; an object store's path (/vsis3/ …) needs signed requests to check
        remote = path.startswith("/vsi")
        return ReadError(said, transient=remote, unexplained=remote)
    try:
        with requests.get(url, headers={"Range": "bytes=0-15"}, stream=True, timeout=PROBE_TIMEOUT_S) as answer:
            head = next(answer.iter_content(16), b"") if answer.ok else b""
    except requests.RequestException as probe_error:
        return ReadError(f"{said} (and the server failed a check: {type(probe_error).__name__})", transient=True)
    if answer.status_code == 407:  # the check's proxy wants credentials (GDAL's may have them): no evidence
        return ReadError(said, transient=True, unexplained=True)
    if not answer.ok:  # a refusal (401, 403) too: the check asks for the URL GDAL read, a signed href's token and all
        transient = answer.status_code in TRANSIENT_STATUS
        return ReadError(f"{said} (the server answers HTTP {answer.status_code})", transient=transient)
    if not head.lstrip().startswith(RASTER_SIGNATURES):
        return ReadError(f"{what}: not a raster (the server answers {answer.status_code} with {head[:8]!r}…)",
                         transient=False)  # fmt: skip
    return ReadError(said, transient=True, unexplained=True)


def gdal_messages(error: BaseException) -> str:
    """GDAL's word for one failure: its outermost and innermost messages, without rasterio's "see previous
    exception"."""
    said = list(dict.fromkeys(str(e) for e in _chain(error) if "See previous exception" not in str(e)))
    return "; ".join(said[:1] + said[1:][-1:]) or str(error)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def forget(path: str) -> None:
    """Drop what GDAL's network file systems remember of ``path`` (that it exists, its size, its blocks)."""
    library = _gdal_library()
    if library is not None and path.startswith("/vsi"):
        library.VSICurlPartialClearCache(path.encode())


@functools.cache
def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL library rasterio runs on, for the one call rasterio does not wrap (VSICurlPartialClearCache):
    the copy bundled in rasterio's wheel, else the system's."""
    bundled = Path(rasterio.__file__).parent
    candidates = [
        *sorted((bundled.parent / "rasterio.libs").glob("libgdal*")),
        *sorted((bundled / ".dylibs").glob("libgdal*")),
    ]
    system = ctypes.util.find_library("gdal")
    for candidate in [*map(str, candidates), *([system] if system else [])]:
        try:
            library = ctypes.CDLL(candidate)
            library.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            return library
        except (OSError, AttributeError):
            continue
    log.warning("GDAL's library was not found: a failed remote read may be remembered by GDAL until restart")
    return None


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
