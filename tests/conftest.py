"""Fixtures shared by test modules."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from eo_etl.demo import land_cover_installed, write_demo_catalog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)  # many tests load pipelines/demo.yaml
def demo_catalog() -> Path:
    """The demo's static catalog where pipelines/demo.yaml expects it (out/demo-catalog), written as `make demo`
    writes it when it is not there yet: validating the demo recipe checks that its catalog exists."""
    target = ROOT / "out" / "demo-catalog"
    if (target / "catalog.json").is_file() and not _current(target / "catalog.json"):
        shutil.rmtree(target, ignore_errors=True)
    if not (target / "catalog.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".demo-catalog-"))
        write_demo_catalog(scratch)
        try:
            os.rename(scratch, target)  # whole or not at all: another test process may be writing it too
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    return target / "catalog.json"


def _current(catalog: Path) -> bool:
    """Whether a catalog an earlier run left holds the collections the demo writes now: a checkout that gained a
    demo source would otherwise test against the old catalog."""
    expected = {"sentinel-2-l2a"} | ({"modis-mcd12c1"} if land_cover_installed() else set())
    links = json.loads(catalog.read_text()).get("links", [])
    return {Path(link["href"]).parent.name for link in links if link.get("rel") == "child"} == expected
