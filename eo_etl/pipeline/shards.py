"""Where each stored sample goes: a position per source in plan order, version after version, and the
shards of ``outputs.shard_size`` positions those fill. Decided by the pipeline from counts alone: each range of
plan rows is settled on its own (its records of every version read together, a scene repeated from an earlier
version turned into a rejection), the stored samples counted per (source, version, range), and the positions
are the prefix sums of those counts in that order (``Positions``), handed to every worker. So no process reads
every record, and every process (and every rerun) that asks gets the same answer."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from eo_etl.pipeline.state import BuildState, ShardEntry, staged_name
from eo_etl.sample import OK, REJECTED
from eo_etl.sources.patch import NO_SCENE, NO_SCENE_IN_SLICE
from eo_etl.store.index_row import IndexRow
from eo_etl.store.zarr import BandStatistics

NOTHING_NEW = (NO_SCENE, NO_SCENE_IN_SLICE)  # a later version's rejections that are no gap: nothing was acquired

# (source, version, first, stop): one range of plan rows (plan_rows.py) of one source in one version
RangeKey = tuple[str, int, int, int]


@dataclass
class Settled:
    """One range of one source in one version, settled: its records in plan order (a scene an earlier
    version of the range already has turned into a rejection) and which of them are stored, in position order."""

    version: int
    records: list[IndexRow]
    stored: list[int] = field(default_factory=list)  # indexes into records
    repeats: list[str] = field(default_factory=list)  # ok samples not stored (staged names): scene of a version before


def settle(by_version: dict[int, list[IndexRow]], order: dict[str, int]) -> list[Settled]:
    """The records of one range of one source, every version's (``by_version``), settled version by version;
    ``order``: each cell's place in the plan."""
    first_version: dict[tuple, int] = {}
    settled = []
    for version in sorted(by_version):
        part = Settled(version, [])
        # plan order; a cell's time slices in time order, one after the other
        in_order = sorted(by_version[version], key=lambda r: (order.get(r.grid_cell, -1), r.sample_id or ""))
        for record in in_order:
            if record.status == OK:
                scene = (record.grid_cell, record.timestamp)
                if scene in first_version:
                    reason = f"the same scene is in version {first_version[scene]}"
                    record = replace(record, status=REJECTED, reason=reason)
                    part.repeats.append(staged_name(record))
                else:
                    first_version[scene] = version
                    part.stored.append(len(part.records))
            part.records.append(record)
        settled.append(part)
    return settled


@dataclass(frozen=True)
class Positions:
    """Every (source, version, range)'s first position and count of stored samples: prefix sums of the counts in
    (source, version, plan order). Small: one entry per range and version, not per cell."""

    starts: dict[RangeKey, tuple[int, int]]  # key → (first position, samples stored)
    counts: dict[str, int]  # stored samples per source
    added: dict[int, int]  # stored samples per version (every version with a record, 0 included)

    @classmethod
    def of(cls, counts: dict[RangeKey, int]) -> Positions:
        starts, totals, added = {}, {}, {}
        for key in sorted(counts):
            source, version = key[0], key[1]
            starts[key] = (totals.get(source, 0), counts[key])
            totals[source] = totals.get(source, 0) + counts[key]
            added[version] = added.get(version, 0) + counts[key]
        return cls(starts, {s: n for s, n in totals.items() if n}, added)

    @property
    def first_version(self) -> int | None:
        return min(self.added, default=None)

    def place(self, source: str, first: int, stop: int, part: Settled, recipe) -> list[IndexRow]:
        """``part``'s records with where their pixels are (stored ones)."""
        size, video = recipe.outputs.shard_size, "video" in recipe.outputs.formats
        start, _ = self.starts.get((source, part.version, first, stop), (0, 0))
        out = list(part.records)
        for offset, i in enumerate(part.stored):
            position = start + offset
            where = {"video_path": f"video/{source}/shard-{position // size:05d}", "video_frame": position % size}
            out[i] = replace(out[i], zarr_group=source, zarr_index=position, **(where if video else {}))
        return out

    def shard_slices(self, source: str, size: int) -> list[list[tuple[RangeKey, int, int]]]:
        """Per shard of ``source``: the (range, lo, hi) whose stored samples lo to hi (exclusive) fill it, in
        position order."""
        keys = [key for key in self.starts if key[0] == source and self.starts[key][1]]  # sorted already
        begins = [self.starts[key][0] for key in keys]
        shards = []
        for low in range(0, self.counts.get(source, 0), size):
            high = min(low + size, self.counts[source])
            slices = []
            for j in range(max(0, bisect.bisect_right(begins, low) - 1), len(keys)):
                begin, n = self.starts[keys[j]]
                if begin >= high:
                    break
                if begin + n > low:
                    slices.append((keys[j], max(low, begin) - begin, min(high, begin + n) - begin))
            shards.append(slices)
        return shards

    def ranges_in_full_shards(self, size: int) -> list[RangeKey]:
        """The ranges whose stored samples all lie in full shards of ``size`` positions: their staged pixels can
        go. A partial last shard keeps its ranges' pixels, for the next version to rewrite it with more."""
        return [
            key for key, (start, n) in self.starts.items() if start + n <= self.counts.get(key[0], 0) // size * size
        ]


@dataclass(frozen=True)
class ShardTask:
    source: str
    k: int
    slices: tuple[tuple[RangeKey, int, int], ...]  # where its samples' records are (Positions.shard_slices)


def shard_members(task: ShardTask, settled_of) -> tuple[list[ShardEntry], list[IndexRow]]:
    """The entries and records of a shard, by position; ``settled_of(key)`` settles the range ``key``."""
    entries, records = [], []
    for key, lo, hi in task.slices:
        part = settled_of(key)
        for i in part.stored[lo:hi]:
            entries.append(ShardEntry(part.version, staged_name(part.records[i])))
            records.append(part.records[i])
    return entries, records


def stored_statistics(state: BuildState, source: str, count: int, size: int,
                      empty: Callable[[], BandStatistics]) -> BandStatistics:  # fmt: skip
    """The band statistics of ``source``'s ``count`` stored samples, merged from those its shards of ``size`` recorded
    (``empty()``: statistics with nothing counted); a shard missing, or not holding the samples assigned to it,
    fails the build."""
    statistics = empty()
    for k in range(-(-count // size)):
        entries = state.shard_entries(source, k)
        if entries is None or len(entries) != min(size, count - k * size):
            raise RuntimeError(f"shard {k} of {source} was not written as assigned")
        statistics.merge(state.shard_statistics(source, k, empty()))
    return statistics


def index_records(records: list[IndexRow], first: int | None) -> list[IndexRow]:
    """The records the index lists: every outcome of the first version (``first``); of later versions, every cell
    that had something in its window. A later window with no scene over a cell is nothing new, not a gap: left
    out, a daily ``--since LAST`` does not add a row per cell per day (nor per time slice)."""
    return [
        record
        for record in records
        if record.version == first or record.status != REJECTED or record.reason not in NOTHING_NEW
    ]
