"""What a build has done so far, kept beside the dataset, so that a killed or repeated build does only the
missing work and a later time window becomes a new version of the same dataset.

    <dataset>/_build/
      series.json                          the recipe's series hash; another recipe starts the folder afresh
      versions/NNNN/window.json            a version's time window and recipe hash
      versions/NNNN/samples/<source>/<cell>.json   a finished cell: its record (status, reason, provenance)
      versions/NNNN/samples/<source>/<cell>.npy    its pixels, until a full shard holds them
      shards/<source>/shard-NNNNN.json     the samples a written shard holds, (version, cell) by position
      shards/<source>/shard-NNNNN.npz      their band statistics, merged into the dataset's at the end
      versions.json                        the finished versions, written with the dataset

Every file is written under a temporary name and renamed, so a file that exists is whole. Nothing here
holds a clock reading: two builds of the same inputs leave the same dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from eo_etl.recipe import Recipe
from eo_etl.sample import FAILED, OK, Sample
from eo_etl.store.zarr import BandStatistics

STATE_DIR = "_build"


@dataclass(frozen=True)
class ShardEntry:
    version: int
    cell: str


def write_atomic(path: Path, data: bytes) -> None:
    with _AtomicFile(path) as file:
        file.write(data)


def _json(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


class BuildState:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / STATE_DIR

    # ------------------------------------------------------------------------------------- versions
    def open_version(self, recipe: Recipe) -> int:
        """The version the recipe's time window builds: the one begun with the same window, else the next.
        A recipe of another series (other area, sources, outputs …) clears what earlier builds recorded."""
        series = recipe.series_fingerprint()
        marker = self.dir / "series.json"
        if marker.exists() and json.loads(marker.read_text())["series"] != series:
            shutil.rmtree(self.dir)
        write_atomic(marker, json.dumps({"series": series}).encode())
        window = {"start": recipe.time.start_utc.isoformat(), "end": recipe.time.end_exclusive_utc.isoformat()}
        known = sorted((self.dir / "versions").glob("*/window.json"))
        for path in known:
            begun = json.loads(path.read_text())
            if begun["start"] == window["start"] and begun["end"] == window["end"]:
                if begun["recipe_hash"] != recipe.fingerprint():
                    write_atomic(path, json.dumps(window | {"recipe_hash": recipe.fingerprint()}).encode())
                return int(path.parent.name)
        version = 1 + max((int(path.parent.name) for path in known), default=0)
        write_atomic(self._version_dir(version) / "window.json",
                     json.dumps(window | {"recipe_hash": recipe.fingerprint()}).encode())  # fmt: skip
        return version

    def versions(self) -> list[dict]:
        """The finished versions, oldest first: version, start, end (exclusive), samples."""
        path = self.dir / "versions.json"
        return json.loads(path.read_text()) if path.exists() else []

    def finish_versions(self, counts: dict[int, int]) -> list[dict]:
        """Record every version with cells finished, with how many samples each stored; also as the
        dataset's own ``versions.json``, for its users."""
        finished = []
        for version in sorted(counts):
            window = json.loads((self._version_dir(version) / "window.json").read_text())
            finished.append({"version": version, **window, "samples": counts[version]})
        text = json.dumps(finished, indent=2).encode() + b"\n"
        write_atomic(self.dir / "versions.json", text)
        write_atomic(self.root / "versions.json", text)
        return finished

    def _version_dir(self, version: int) -> Path:
        return self.dir / "versions" / f"{version:04d}"

    # -------------------------------------------------------------------------------------- samples
    def _sample_path(self, version: int, source: str, cell: str) -> Path:
        return self._version_dir(version) / "samples" / source / cell

    def done_cells(self, version: int, source: str) -> set[str]:
        """Cells of ``source`` this version has finished; failed ones are tried again."""
        done = set()
        for path in (self._version_dir(version) / "samples" / source).glob("*.json"):
            if json.loads(path.read_text())["status"] != FAILED:
                done.add(path.stem)
        return done

    def stage(self, version: int, sample: Sample, recipe_hash: str) -> int:
        """Record a finished cell (pixels first, then the record that says it is done); bytes written."""
        path = self._sample_path(version, sample.source, sample.cell)
        written = 0
        if sample.status == OK:
            self.save_pixels(version, sample.source, sample.cell, sample.pixels)
            written += sample.pixels.nbytes
        record = sample.record() | {"recipe_hash": recipe_hash, "version": version}
        write_atomic(path.with_suffix(".json"), json.dumps(record, default=_json).encode())
        return written

    def records(self) -> list[dict]:
        """Every finished cell's record, all versions, in version, source and cell order."""
        return [_read_record(path) for path in sorted((self.dir / "versions").glob("*/samples/*/*.json"))]

    def record(self, version: int, source: str, cell: str) -> dict:
        return _read_record(self._sample_path(version, source, cell).with_suffix(".json"))

    def load_pixels(self, version: int, source: str, cell: str) -> np.ndarray | None:
        path = self._sample_path(version, source, cell).with_suffix(".npy")
        return np.load(path, allow_pickle=False) if path.exists() else None

    def has_pixels(self, version: int, source: str, cell: str) -> bool:
        return self._sample_path(version, source, cell).with_suffix(".npy").exists()

    def save_pixels(self, version: int, source: str, cell: str, pixels: np.ndarray) -> None:
        with _AtomicFile(self._sample_path(version, source, cell).with_suffix(".npy")) as f:
            np.save(f, pixels, allow_pickle=False)

    def drop_pixels(self, entries: list[ShardEntry], source: str) -> None:
        for entry in entries:
            self._sample_path(entry.version, source, entry.cell).with_suffix(".npy").unlink(missing_ok=True)

    # --------------------------------------------------------------------------------------- shards
    def _shard_path(self, source: str, k: int) -> Path:
        return self.dir / "shards" / source / f"shard-{k:05d}"

    def shard_entries(self, source: str, k: int) -> list[ShardEntry] | None:
        """What shard ``k`` of ``source`` holds, if it was written."""
        path = self._shard_path(source, k).with_suffix(".json")
        if not path.exists():
            return None
        return [ShardEntry(version, cell) for version, cell in json.loads(path.read_text())["samples"]]

    def record_shard(self, source: str, k: int, entries: list[ShardEntry], statistics: BandStatistics) -> None:
        path = self._shard_path(source, k)
        with _AtomicFile(path.with_suffix(".npz")) as f:
            statistics.save(f)
        samples = [[entry.version, entry.cell] for entry in entries]
        write_atomic(path.with_suffix(".json"), json.dumps({"samples": samples}).encode())

    def shard_statistics(self, source: str, k: int, empty: BandStatistics) -> BandStatistics:
        return empty.load(self._shard_path(source, k).with_suffix(".npz"))

    def forget_shards_from(self, source: str, first: int) -> None:
        """Shard records past the end of a store that shrank."""
        for path in (self.dir / "shards" / source).glob("shard-*.*"):
            if int(path.name[6:11]) >= first:
                path.unlink(missing_ok=True)


def _read_record(path: Path) -> dict:
    record = json.loads(path.read_text())
    if record["timestamp"] is not None:
        record["timestamp"] = datetime.fromisoformat(record["timestamp"])
    return record


class _AtomicFile:
    """A file written under a temporary name and renamed into place when closed without error."""

    def __init__(self, path: Path):
        self.path = path
        self.partial = path.with_name(path.name + f".{os.getpid()}.partial")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.partial, "wb")  # noqa: SIM115 (closed in __exit__)
        return self.file

    def __exit__(self, kind, error, traceback):
        self.file.close()
        if kind is None:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)
