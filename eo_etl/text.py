"""Untrusted text made fit to show: values from recipes and catalogues echoed in messages stay short and
printable, so a 50 MB field or a terminal escape sequence in one cannot flood or drive the terminal. And fit to
store: text from outside (OSM tags) kept in a dataset is normalised, bounded and free of control characters
(``stored``) before it goes into tables, captions or prompts."""

from __future__ import annotations

import re
import unicodedata

ECHO_LIMIT = 200  # characters of a value echoed in a message
LINE_LIMIT = 2000  # characters of a whole message line

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")  # and bidi overrides


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters with an ellipsis: ``'aaaa…' (50000000 characters)``."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 20:
        return f"{type(value).__name__} of {len(value)} items"
    return printable(repr(value), limit)


def printable(text: str, limit: int = LINE_LIMIT) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``) and cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


# Stored text also loses the bidi marks and invisible characters that could reorder or hide what a reader sees.
STORED_CONTROL = re.compile(
    r"[\s\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]+"
)


def stored(text: str, limit: int) -> str:
    """Untrusted ``text`` fit to store and hand on (labels, captions, prompts): Unicode NFKC, each run of
    whitespace, control and bidi characters one space, trimmed, at most ``limit`` characters."""
    text = unicodedata.normalize("NFKC", text[: 4 * limit])  # cut first: the work stays bounded too
    return STORED_CONTROL.sub(" ", text).strip()[:limit].rstrip()


# A URL's query string: where providers put read tokens (Planetary Computer's SAS, presigned S3 URLs).
URL_QUERY = re.compile(r"([a-z][a-z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]+", re.IGNORECASE)
REDACTED = "?<redacted>"


def redacted(text: str) -> str:
    """``text`` with the query string of every URL in it replaced by ``?<redacted>``: what a message or a log line
    may say of a signed href."""
    return URL_QUERY.sub(lambda match: match[1] + REDACTED, text)


def public_href(href: str) -> str:
    """The href to record (provenance, the index): a URL without its query string, where a token would be."""
    return href.split("?", 1)[0] if "://" in href else href
