"""Signed reads: providers whose assets need a short-lived token in the URL (Planetary Computer's SAS tokens).

A source with ``sign:`` reads every asset through an href signed right before the read; what is recorded
(``Sample.hrefs``, hence the index and the STAC items) and what is said (a read's error, a failure's reason) is the
unsigned href (``eo_etl.text.public_href``, ``eo_etl.text.redacted``). rasterio names each dataset it opens, and
urllib3 each request, in DEBUG log records: a filter on their loggers redacts query strings there too.

Planetary Computer: ``planetary_computer.sas.get_token`` (the planetary-computer extra) asks the token endpoint
(``PC_SDK_SAS_URL``, with ``PC_SDK_SUBSCRIPTION_KEY`` if set) for a token per storage account and container and
caches it while it has time left for a read and all its retries (``RetryPolicy.longest_wait_s`` and
``READ_MARGIN_S``, at most ``TOKEN_MIN_TTL_CAP_S``): a token that expired between two attempts would turn a
transient fault into a refused read. The request is ours, not the package's ``get_token`` (which has no
timeout: a token endpoint that stops answering would hang a worker): it has a timeout, goes through the one retry
policy and host limit, and fills the package's token cache. Hrefs outside Azure Blob Storage, or signed already,
are read as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlparse

import requests

from eo_etl.sources.remote import HostLimiter, RetryPolicy, limited_call
from eo_etl.text import redacted

BLOB_STORAGE_DOMAIN = ".blob.core.windows.net"
TOKEN_TIMEOUT_S = 30.0  # a token request that takes longer is a transient failure (retried), not a hung worker
READ_MARGIN_S = 300.0  # a token's time left beyond its read's retry waits: the reads themselves
TOKEN_MIN_TTL_CAP_S = 1800.0  # PC's tokens last about an hour: a longer retry budget must not renew on every read
LOGGERS = ("rasterio", "urllib3")  # they log the URLs they open or request, query strings and all

Signer = Callable[[str], str]


def signer(kind: str | None, policy: RetryPolicy, limiter: HostLimiter) -> Signer:
    """The href modifier a source's ``sign:`` names; hrefs unchanged when it names none."""
    if kind is None:
        return lambda href: href
    if kind == "planetary-computer":
        return PlanetaryComputerSigner(policy, limiter)
    raise ValueError(f"sign: unknown signer {kind!r}")


class PlanetaryComputerSigner:
    """Appends Planetary Computer's SAS token for the href's storage account and container."""

    def __init__(self, policy: RetryPolicy, limiter: HostLimiter):
        from planetary_computer.settings import Settings
        from planetary_computer.utils import parse_blob_url

        self._parse = parse_blob_url
        self.settings = Settings.get()
        self.token_url = self.settings.sas_url
        self.policy, self.limiter = policy, limiter
        hide_url_queries_in_logs()

    def __call__(self, href: str) -> str:
        parsed = urlparse(href)
        if not parsed.netloc.endswith(BLOB_STORAGE_DOMAIN) or parsed.query:
            return href
        account, container = self._parse(parsed)
        return self.token(account, container, parsed.netloc).sign(href).href

    def token(self, account: str, container: str, host: str = ""):
        """The cached token for the container, or a new one when it could expire before a read of ``host`` and
        its retries are over."""
        from planetary_computer.sas import TOKEN_CACHE

        url = f"{self.token_url}/{account}/{container}"
        token = TOKEN_CACHE.get(url)
        needed = min(self.policy.longest_wait_s(host) + READ_MARGIN_S, TOKEN_MIN_TTL_CAP_S)
        if token is None or token.ttl() < needed:
            token = TOKEN_CACHE[url] = limited_call(self.policy, self.limiter, url, self._request_token, url)
        return token

    def _request_token(self, url: str):
        from planetary_computer.sas import SASToken

        key = self.settings.subscription_key
        headers = {"Ocp-Apim-Subscription-Key": key} if key else None
        answer = requests.get(url, headers=headers, timeout=TOKEN_TIMEOUT_S)
        answer.raise_for_status()
        return SASToken(**answer.json())


class RedactQueries(logging.Filter):
    """Rewrites a log record whose message holds a URL with a query string to say ``?<redacted>`` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redacted(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactQueries()


def hide_url_queries_in_logs() -> None:
    """Put the redacting filter on every logger of ``LOGGERS`` and their children that exist (a logger's filters
    do not apply to its children's records, so each gets one)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in LOGGERS]
    for name in {*LOGGERS, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
