"""Which OpenStreetMap tags a sample keeps, as data: an allow-list and a deny-list of key globs, and mask classes
as ``key`` or ``key=value`` globs. OSM text is untrusted (anyone can write any tag): every key and value is made
fit to store (``eo_etl.text.stored``: NFKC, no control or bidi characters, bounded) before it is matched or kept,
so what is matched is what is stored."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from eo_etl.text import stored

if TYPE_CHECKING:
    from eo_etl.recipe.models import OsmLabels

PLAIN_KEY = re.compile(r"[A-Za-z0-9_:.-]{1,255}")  # a key sent to a server as it is: no quote can end the query


def _matches(selector: str, key: str, value: str) -> bool:
    want_key, _, want_value = selector.partition("=")
    return fnmatchcase(key, want_key) and (not want_value or fnmatchcase(value, want_value))


@dataclass(frozen=True)
class TagRules:
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    masks: Mapping[str, tuple[str, ...]]  # class -> selectors
    limit: int = 255  # characters of a key or a value

    @classmethod
    def of(cls, settings: OsmLabels) -> TagRules:
        """The rules of a recipe's ``labels.osm`` (``OsmLabels``)."""
        masks = {name: tuple(selectors) for name, selectors in settings.masks.items()}
        return cls(tuple(settings.tags), tuple(settings.deny_tags), masks, settings.value_limit)

    def clean(self, tags: Mapping[str, object] | None) -> dict[str, str]:
        """Every tag with key and value made fit to store; tags left empty by that are dropped."""
        cleaned = {}
        for key, value in (tags or {}).items():
            if value is None or not isinstance(key, str):
                continue
            key, value = stored(key, self.limit), stored(str(value), self.limit)
            if key and value:
                cleaned[key] = value
        return cleaned

    def kept(self, tags: Mapping[str, str]) -> dict[str, str]:
        """The cleaned tags whose key is allowed and not denied."""
        return {
            key: value
            for key, value in tags.items()
            if any(fnmatchcase(key, allow) for allow in self.allow) and not any(fnmatchcase(key, d) for d in self.deny)
        }

    def classes(self, tags: Mapping[str, str]) -> tuple[str, ...]:
        """The mask classes a feature with these cleaned tags fills."""
        return tuple(
            name
            for name, selectors in self.masks.items()
            if any(_matches(selector, key, value) for selector in selectors for key, value in tags.items())
        )

    def query_keys(self) -> list[str]:
        """The plain keys (no globs) to ask a server for: every allowed key and every mask key."""
        keys: Iterable[str] = [*self.allow, *(s.partition("=")[0] for ss in self.masks.values() for s in ss)]
        return sorted({key for key in keys if PLAIN_KEY.fullmatch(key)})  # globs and odd keys: filtered here only
