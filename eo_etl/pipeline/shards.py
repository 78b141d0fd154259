"""Where each stored sample goes: a position per source in plan order, version after version, and the
shards of ``outputs.shard_size`` positions those fill. Decided from the finished cells alone, so every
process (and every rerun) that asks gets the same answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from eo_etl.pipeline.state import ShardEntry, staged_name
from eo_etl.recipe import Recipe
from eo_etl.sample import OK, REJECTED
from eo_etl.sources.patch import NO_SCENE, NO_SCENE_IN_SLICE

NOTHING_NEW = (NO_SCENE, NO_SCENE_IN_SLICE)  # a later version's rejections that are no gap: nothing was acquired


@dataclass(frozen=True)
class ShardTask:
    source: str
    k: int
    entries: tuple[ShardEntry, ...]  # by position
    records: tuple[dict, ...] = ()  # their records (as the build's state holds them), so no writer reads them again


@dataclass
class Assignment:
    records: list[dict]  # every finished cell's record; stored ones say where their pixels are
    tasks: list[ShardTask]
    counts: dict[str, int] = field(default_factory=dict)  # stored samples per source
    added: dict[int, int] = field(default_factory=dict)  # stored samples per version
    unstored: list[tuple[str, ShardEntry]] = field(default_factory=list)  # ok cells not stored (repeats)


def assign_positions(records: list[dict], recipe: Recipe, cell_order: dict[str, int]) -> Assignment:
    """Positions for the ok samples of ``records``: by source, then version, then the cell's place in the
    plan. A scene a cell already has from an earlier version (overlapping windows) is not stored again:
    its record becomes a rejection saying so."""
    size = recipe.outputs.shard_size
    video = "video" in recipe.outputs.formats
    order = sorted(
        range(len(records)),
        key=lambda i: (
            records[i]["source"], records[i]["version"], cell_order.get(records[i]["grid_cell"], -1),
            records[i].get("sample_id") or "",  # a cell's time slices in time order, one after the other
        ),
    )  # fmt: skip
    out = list(records)
    assignment = Assignment(out, [])
    entries: dict[str, list[tuple[ShardEntry, dict]]] = {}
    first_version: dict[tuple, int] = {}
    for i in order:
        record = records[i]
        source, version, cell, name = record["source"], record["version"], record["grid_cell"], staged_name(record)
        assignment.added.setdefault(version, 0)
        if record["status"] != OK:
            continue
        scene = (source, cell, record["timestamp"])
        if scene in first_version:
            out[i] = record | {"status": REJECTED, "reason": f"the same scene is in version {first_version[scene]}"}
            assignment.unstored.append((source, ShardEntry(version, name)))
            continue
        first_version[scene] = version
        position = assignment.counts.get(source, 0)
        assignment.counts[source] = position + 1
        assignment.added[version] += 1
        out[i] = record | {"zarr_group": source, "zarr_index": position}
        if video:
            out[i] |= {"video_path": f"video/{source}/shard-{position // size:05d}", "video_frame": position % size}
        entries.setdefault(source, []).append((ShardEntry(version, name), record))
    for source, stored in entries.items():
        for k, start in enumerate(range(0, len(stored), size)):
            part = stored[start : start + size]
            assignment.tasks.append(ShardTask(source, k, tuple(e for e, _ in part), tuple(r for _, r in part)))
    return assignment


def index_records(records: list[dict]) -> list[dict]:
    """The records the index lists: every outcome of the first version; of later versions, every cell that
    had something in its window. A later window with no scene over a cell is nothing new, not a gap: left
    out, a daily ``--since LAST`` does not add a row per cell per day (nor per time slice)."""
    first = min((record["version"] for record in records), default=None)
    return [
        record
        for record in records
        if record["version"] == first or record["status"] != REJECTED or record["reason"] not in NOTHING_NEW
    ]
