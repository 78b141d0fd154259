"""The caption cache: what a model said for some facts, kept so that no build pays for it twice.

    <cache>/<kk>/<key>.json     one entry: {"key", "caption" or null, "flag", "model", "prompt_version",
                                "parameters", "created", "attempts"}

``key`` is the sha256 of (prompt version, model, parameters, facts hash, caption number), so a rerun, a
resumed build or a new dataset version finds every caption it has made, and a new prompt version or
model or temperature asks again. The folder is ``<dataset>/_build/captions-cache/`` unless the recipe
names another (``captions.cache``, e.g. one shared by several datasets); it may be local or in an object
store. Writers are many workers at once: each entry is one file, written whole (renamed into place, or
one PUT), and two workers writing the same key write equivalent entries, so the last one wins harmlessly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from eo_etl.captions.facts import canonical
from eo_etl.store.location import Location

CACHE_DIR = "captions-cache"


def cache_key(prompt_version: str, model: str, parameters: Mapping[str, Any], facts_sha: str, number: int) -> str:
    """The entry's name: everything that decides what the model is asked, and nothing else (no key, no URL:
    the same model behind another server answers the same)."""
    what = canonical({"prompt_version": prompt_version, "model": model, "parameters": dict(parameters),
                      "facts": facts_sha, "number": number})  # fmt: skip
    return hashlib.sha256(what.encode()).hexdigest()


class CaptionCache:
    """Entries under one folder; ``hits`` and ``misses`` count look-ups (for reports and tests)."""

    def __init__(self, folder: Location | str):
        self.folder = Location.of(folder)
        self.hits = self.misses = 0

    def _entry(self, key: str) -> Location:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            entry = json.loads(self._entry(key).read_bytes())
        except FileNotFoundError:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        location = self._entry(key)
        location.parent.mkdir()
        location.write_text(json.dumps({"key": key, **entry}, sort_keys=True, ensure_ascii=False))

    def __getstate__(self) -> dict:  # a worker's copy starts counting afresh
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])
