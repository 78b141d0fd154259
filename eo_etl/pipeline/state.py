"""What a build has done so far, kept beside the dataset, so that a killed or repeated build does only the
missing work and a later time window becomes a new version of the same dataset.

    <dataset>/_build/
      series.json                          the recipe's series hash; another recipe starts the folder afresh
      versions/NNNN/window.json            a version's time window and recipe hash
      versions/NNNN/samples/<source>/rows-AAAAAAAAA-BBBBBBBBB.json   finished cells: the records (status,
                                           reason, provenance) of plan rows A to B (exclusive), one file per
                                           range of rows (plan_rows.py), written once all its cells are done
      versions/NNNN/samples/<source>/rows-AAAAAAAAA-BBBBBBBBB.npz    the ok cells' pixels of that range (one
                                           array per cell, by name), written before its records, kept until
                                           full shards hold every sample of the range (a rerun that moved samples
                                           whose range was let go adds them again, read back from the store)
      index/<source>/rows-AAAAAAAAA-BBBBBBBBB.parquet   a part of the index: its rows of those plan rows, every
                                           version, written by a worker; the closing step merges the parts
      shards/<source>/shard-NNNNN.json     the samples a written shard holds, (version, cell) by position
      shards/<source>/shard-NNNNN.npz      their band statistics, merged into the dataset's at the end
      versions.json                        the finished versions, written with the dataset

The folder may be local or in an object store (store/location.py): either way a file that exists is whole
(renamed into place, or one PUT). Nothing here holds a clock reading: two builds of the same inputs leave
the same dataset.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from eo_etl.recipe import Recipe
from eo_etl.sample import OK, Sample
from eo_etl.store.index_row import STAGED_COLUMNS, IndexRow
from eo_etl.store.location import Location, read_each
from eo_etl.store.zarr import BandStatistics

STATE_DIR = "_build"
PixelSink = Callable[[str, np.ndarray], None]  # (staged name, pixels): stage one sample's pixels
Range = tuple[int, int]  # (first, stop): a range of plan rows (plan_rows.py), the unit of staging and resuming
RANGE_PREFIX = "rows-"


@dataclass(frozen=True)
class ShardEntry:
    version: int
    cell: str  # the sample's staged name (staged_name): its cell, with time slices its cell and slice stamp


def staged_name(row: IndexRow) -> str:
    """The name a sample's pixels are staged and listed in shards under: its cell; with time slices, where a cell
    has several samples, ``CELL.STAMP`` (its sample_id without the source, which the folder already names)."""
    if row.slice_start is None:
        return row.grid_cell
    cell, _, stamp = row.sample_id.split(".")
    return f"{cell}.{stamp}"


def _json(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


class BuildState:
    def __init__(self, root: Location | Path | str):
        self.root = Location.of(root)
        self.dir = self.root / STATE_DIR

    # ------------------------------------------------------------------------------------- versions
    def open_version(self, recipe: Recipe) -> int:
        """The version the recipe's time window builds: the one begun with the same window, else the next.
        A recipe of another series (other area, sources, outputs …) clears what earlier builds recorded."""
        series = recipe.series_fingerprint()
        marker = self.dir / "series.json"
        if marker.exists() and json.loads(marker.read_text())["series"] != series:
            self.dir.remove(recursive=True)
        marker.write_bytes(json.dumps({"series": series}).encode())
        window = {"start": recipe.time.start_utc.isoformat(), "end": recipe.time.end_exclusive_utc.isoformat()}
        known = (self.dir / "versions").glob("*/window.json")
        for path in known:
            begun = json.loads(path.read_text())
            if begun["start"] == window["start"] and begun["end"] == window["end"]:
                if begun["recipe_hash"] != recipe.fingerprint():
                    path.write_bytes(json.dumps(window | {"recipe_hash": recipe.fingerprint()}).encode())
                return int(path.parent.name)
        version = 1 + max((int(path.parent.name) for path in known), default=0)
        (self._version_dir(version) / "window.json").write_bytes(
            json.dumps(window | {"recipe_hash": recipe.fingerprint()}).encode()
        )
        return version

    def versions(self) -> list[dict]:
        """The finished versions, oldest first: version, start, end (exclusive), samples."""
        try:
            return json.loads((self.dir / "versions.json").read_text())
        except FileNotFoundError:
            return []

    def finish_versions(self, counts: dict[int, int]) -> list[dict]:
        """Record every version with cells finished, with how many samples each stored; also as the
        dataset's own ``versions.json``, for its users."""
        finished = []
        for version in sorted(counts):
            window = json.loads((self._version_dir(version) / "window.json").read_text())
            finished.append({"version": version, **window, "samples": counts[version]})
        text = json.dumps(finished, indent=2).encode() + b"\n"
        (self.dir / "versions.json").write_bytes(text)
        (self.root / "versions.json").write_bytes(text)
        return finished

    def _version_dir(self, version: int) -> Location:
        return self.dir / "versions" / f"{version:04d}"

    def samples_dir(self, version: int) -> Location:
        """Where a version's finished ranges are recorded (what a progress view counts)."""
        return self._version_dir(version) / "samples"

    @property
    def shards_dir(self) -> Location:
        """Where written shards are recorded (what a progress view counts)."""
        return self.dir / "shards"

    # -------------------------------------------------------------------------------------- samples
    def _range(self, version: int, source: str, first: int, stop: int, suffix: str = ".json") -> Location:
        return self._version_dir(version) / "samples" / source / f"{RANGE_PREFIX}{first:09d}-{stop:09d}{suffix}"

    def range_records(self, version: int, source: str, first: int, stop: int) -> list[IndexRow]:
        """The records of plan rows ``first`` to ``stop`` (a range, plan_rows.py) of ``source`` finished so far in
        this version, failed ones included; none when the range was never finished."""
        try:
            return _parse_records(self._range(version, source, first, stop).read_bytes())
        except FileNotFoundError:
            return []

    @contextmanager
    def staging(self, version: int, source: str, first: int, stop: int, *, keep: set[str]) -> Iterator[PixelSink]:
        """Stage a range's pixels as they come, one array at a time into one file (after those staged before that
        ``keep`` names: a rerun's, less the samples of cells it acquires again, or all when it adds samples read back
        from the store), so that a worker holds one cell's pixels at a time; the file is put in place when the block
        ends. :meth:`stage_range` then records the range."""
        target = self._range(version, source, first, stop, ".npz")
        with target.staged_file() as path, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:

            def add(cell: str, pixels: np.ndarray) -> None:
                with archive.open(f"{cell}.npy", "w", force_zip64=True) as member:  # as np.savez writes them
                    np.lib.format.write_array(member, np.asanyarray(pixels), allow_pickle=False)

            if keep:
                with self.range_pixels(version, source, first, stop) as staged:
                    for cell in staged:
                        if cell in keep:
                            add(cell, staged[cell])
            yield add

    def stage_samples(
        self,
        version: int,
        source: str,
        samples: Iterable[Sample],
        part_of: Mapping[str, Range],
        kept: Mapping[Range, list[IndexRow]],
        recipe_hash: str,
    ) -> dict[Range, list[IndexRow]]:
        """Stage ``samples`` of ``source``, which come in any order, and record their ranges (``part_of``: each cell's
        range of plan rows): an ok sample's pixels go into its range's file as it comes (:meth:`staging`, after the
        pixels of the range's ``kept`` records, finished before), so that one sample's pixels are held at a time;
        then each range's records, ``kept`` and the new ones, which say it is done (:meth:`stage_range`). Those
        records, by range."""
        new: dict[Range, list[IndexRow]] = {}
        with ExitStack() as files:
            sinks: dict[Range, PixelSink] = {}
            for sample in samples:
                part = part_of[sample.cell]
                record = sample.row(version, recipe_hash)
                new.setdefault(part, []).append(record)
                if sample.status == OK:
                    if part not in sinks:
                        keep = {staged_name(r) for r in kept.get(part, ()) if r.status == OK}
                        sinks[part] = files.enter_context(self.staging(version, source, *part, keep=keep))
                    sinks[part](staged_name(record), sample.pixels)
        recorded = {part: [*kept.get(part, ()), *records] for part, records in new.items()}
        for part, records in recorded.items():  # once every pixel is in place
            self.stage_range(version, source, *part, records)
        return recorded

    def stage_range(self, version: int, source: str, first: int, stop: int, records: list[IndexRow]) -> None:
        """Record a range of cells as finished, once its ok cells' pixels are staged (:meth:`staging`): one file
        with the records of every cell of the range (those finished before, then the new ones), which says the
        range is done. A record holds its row's columns up to ``version`` (``STAGED_COLUMNS``)."""
        text = json.dumps([record.to_dict(STAGED_COLUMNS) for record in records], default=_json)
        self._range(version, source, first, stop).write_bytes(text.encode())

    @contextmanager
    def range_pixels(self, version: int, source: str, first: int, stop: int) -> Iterator[Mapping[str, np.ndarray]]:
        """The pixels staged for a range, by cell, read one array at a time (ranged reads in an object store);
        empty when none are."""
        target = self._range(version, source, first, stop, ".npz")
        try:
            handle = target.fs.open(target.path, "rb")
        except FileNotFoundError:
            yield {}
            return
        with handle, np.load(handle, allow_pickle=False) as arrays:
            yield arrays

    def drop_range_pixels(self, version: int, source: str, first: int, stop: int) -> None:
        self._range(version, source, first, stop, ".npz").remove()

    def version_numbers(self) -> list[int]:
        """Every version begun, oldest first."""
        return sorted(int(path.parent.name) for path in (self.dir / "versions").glob("*/window.json"))

    def index_part(self, source: str, first: int, stop: int) -> Location:
        return self.dir / "index" / source / f"{RANGE_PREFIX}{first:09d}-{stop:09d}.parquet"

    def remove_index_parts(self) -> None:
        (self.dir / "index").remove(recursive=True)

    def records(self) -> list[IndexRow]:
        """Every finished cell's record, all versions, in version, source and plan order (one read per range): the
        whole state read back, for tests and inspection; the build reads it a range at a time (``range_records``)."""
        paths = (self.dir / "versions").glob(f"*/samples/*/{RANGE_PREFIX}*.json")
        return [record for data in read_each(paths) for record in _parse_records(data)]

    # --------------------------------------------------------------------------------------- shards
    def _shard(self, source: str, k: int, suffix: str) -> Location:
        return self.dir / "shards" / source / f"shard-{k:05d}{suffix}"

    def shard_entries(self, source: str, k: int) -> list[ShardEntry] | None:
        """What shard ``k`` of ``source`` holds, if it was written."""
        try:
            samples = json.loads(self._shard(source, k, ".json").read_text())["samples"]
        except FileNotFoundError:
            return None
        return [ShardEntry(version, cell) for version, cell in samples]

    def record_shard(self, source: str, k: int, entries: list[ShardEntry], statistics: BandStatistics) -> None:
        buffer = io.BytesIO()
        statistics.save(buffer)
        self._shard(source, k, ".npz").write_bytes(buffer.getvalue())
        samples = [[entry.version, entry.cell] for entry in entries]
        self._shard(source, k, ".json").write_bytes(json.dumps({"samples": samples}).encode())

    def shard_statistics(self, source: str, k: int, empty: BandStatistics) -> BandStatistics:
        return empty.load(io.BytesIO(self._shard(source, k, ".npz").read_bytes()))

    def forget_shards_from(self, source: str, first: int) -> None:
        """Shard records past the end of a store that shrank."""
        for path in (self.dir / "shards" / source).glob("shard-*.*"):
            if int(path.name[6:11]) >= first:
                path.remove()


def _parse_records(data: bytes) -> list[IndexRow]:
    return [IndexRow.from_dict(record) for record in json.loads(data)]
