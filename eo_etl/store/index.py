"""The sample index: one row per (cell, source) with the Major TOM columns, provenance and status,
failures included, as Parquet. Written atomically."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd


def index_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Sample records (``Sample.record()``) as a table in a stable order."""
    frame = pd.DataFrame(list(records))
    if not frame.empty:
        frame["hrefs"] = frame["hrefs"].map(json.dumps)  # band -> hrefs; bands vary by source
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
        frame = frame.sort_values(["source", "grid_cell"], kind="stable", ignore_index=True)
    return frame


def write_index(records: Iterable[dict], path: Path) -> Path:
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    index_frame(records).to_parquet(partial, index=False)
    return partial.replace(path)
