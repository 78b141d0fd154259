"""A dataset folder, local or in an object store (``s3://…``, ``gs://…``): the one place that knows which.

Runners whose workers share no disk (Dataflow, Spark, Flink) can only deliver a dataset to an object store,
so every writer of a build goes through a :class:`Location`. The promise callers rely on is the same in
both: an object that exists is whole. A local file is written under a temporary name and renamed into
place, so a killed writer leaves no half file; an object store's PUT (or completed multipart upload) is
whole by itself. A local path stays a plain path, so a local dataset's layout is what it always was.

Credentials and endpoints come from the environment, as fsspec's backends find them (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, … for s3fs; Application Default Credentials for gcsfs). Listings are never cached:
other processes write the same folder, and a cached listing would hide what they wrote.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import cached_property
from pathlib import Path

import fsspec
from fsspec.utils import get_protocol

from eo_etl.text import shown

LOCAL_PROTOCOLS = ("file", "local")
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))  # kernel interfaces, not disks


class OutsideError(ValueError):
    """A name that would lead out of the folder it is joined to (``..``)."""


def is_url(target: str | Path) -> bool:
    """Whether ``target`` names a place other than the local disk (``s3://b/x``, ``gs://b/x``, ``memory://x``)."""
    return not isinstance(target, Path) and get_protocol(str(target)) not in LOCAL_PROTOCOLS


class Location:
    """A file or folder: a local path (made absolute) or a URL fsspec opens. Picklable, for Beam workers."""

    def __init__(self, target: str | Path, storage_options: dict | None = None):
        self.local = not is_url(target)
        if self.local:
            text = str(target)
            for protocol in LOCAL_PROTOCOLS:
                text = text.removeprefix(f"{protocol}://")
            self.url = str(Path(text).absolute())
        else:
            self.url = str(target).rstrip("/")
        self.options = dict(storage_options or {})

    @classmethod
    def of(cls, target: Location | str | Path, storage_options: dict | None = None) -> Location:
        return target if isinstance(target, Location) else cls(target, storage_options)

    # ----------------------------------------------------------------------------------- naming
    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    def join(self, *parts: str) -> Location:
        """The file or folder at ``parts`` under this one; never above it: a ``..`` that climbs out is refused
        (names reach here from recipes and catalogues; the recipe's checks are the first line, this the last)."""
        relative = "/".join(str(p).strip("/") for p in parts)
        if posixpath.normpath(relative).split("/")[0] == "..":
            raise OutsideError(f"{shown(relative)} leads out of {self.url}")
        joined = Location.__new__(Location)
        joined.local, joined.options = self.local, self.options
        joined.url = "/".join([self.url.rstrip("/"), relative])
        return joined

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        parent = Location.__new__(Location)
        parent.local, parent.options, parent.url = self.local, self.options, self.url.rsplit("/", 1)[0]
        return parent

    @property
    def local_path(self) -> Path | None:
        return Path(self.url) if self.local else None

    @property
    def native(self) -> Path | str:
        """A path where local, the URL elsewhere: what to show people and hand to tools of their own."""
        return Path(self.url) if self.local else self.url

    @property
    def storage_options(self) -> dict | None:
        """For libraries that open the URL themselves (zarr, pandas, geopandas, xarray); None where local."""
        return None if self.local else {"use_listings_cache": False, **self.options}

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and (self.url, self.options) == (other.url, other.options)

    def __hash__(self) -> int:
        return hash(self.url)

    # ------------------------------------------------------------------------------- the store
    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))[0]

    @cached_property
    def path(self) -> str:
        """The path within ``fs`` (``bucket/key`` in an object store)."""
        return self.url if self.local else self.fs._strip_protocol(self.url)

    def __getstate__(self) -> dict:
        return {"local": self.local, "url": self.url, "options": self.options}  # not the client: it reopens

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _at(self, path: str) -> Location:
        """The Location of ``path``, a path of this location's ``fs``."""
        found = Location.__new__(Location)
        found.local, found.options = self.local, self.options
        found.url = path if self.local else self.fs.unstrip_protocol(path)
        return found

    # ---------------------------------------------------------------------------------- reading
    def exists(self) -> bool:
        return Path(self.url).exists() if self.local else self.fs.exists(self.path)

    def read_bytes(self) -> bytes:
        """The whole file; FileNotFoundError when there is none."""
        return Path(self.url).read_bytes() if self.local else self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def glob(self, pattern: str) -> list[Location]:
        """Files (and folders) under this folder matching ``pattern`` (``*`` stays within a name), sorted."""
        if self.local:
            found = [Location(path) for path in map(str, Path(self.url).glob(pattern))]
        else:
            found = [self._at(path) for path in self.fs.glob(f"{self.path}/{pattern}")]
        return sorted(found, key=lambda location: location.url.split("/"))  # by name at each level, as pathlib

    # ---------------------------------------------------------------------------------- writing
    def mkdir(self) -> None:
        """The folder, on a local disk; an object store has no folders to make."""
        if self.local:
            Path(self.url).mkdir(parents=True, exist_ok=True)

    def write_bytes(self, data: bytes) -> None:
        """The file, whole or not at all."""
        if self.local:
            with self.staged_file() as partial:
                partial.write_bytes(data)
        else:
            self.fs.pipe_file(self.path, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    @contextmanager
    def staged_file(self) -> Iterator[Path]:
        """A local path to write this file at, for writers that want a path (pyarrow, GDAL): put in place once
        the block ends without error. Local: ``<name>.<pid>.partial`` beside it, then renamed; remote: a
        temporary file, then uploaded."""
        if self.local:
            target = Path(self.url)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            try:
                yield partial
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
            return
        with tempfile.TemporaryDirectory(prefix="eo-etl-") as scratch:
            staged = Path(scratch) / self.name
            yield staged
            self.fs.put_file(str(staged), self.path)

    @contextmanager
    def staged_folder(self, last: Sequence[str] = ()) -> Iterator[Path]:
        """A local path to write this folder at, for writers of whole folders (video cubes, TACO).

        Local: the folder itself (those writers build it beside and rename it). Remote: a temporary folder,
        uploaded once the block ends without error. Its entries named in ``last`` (a file or folder name at the
        top) are what says the folder is complete: they are removed first and uploaded after everything else,
        and objects the new folder no longer has are removed at the end."""
        if self.local:
            yield Path(self.url)
            return
        with tempfile.TemporaryDirectory(prefix="eo-etl-") as scratch:
            staged = Path(scratch) / self.name
            yield staged
            self._upload(staged, last)

    def _upload(self, folder: Path, last: Sequence[str]) -> None:
        files = sorted(str(path.relative_to(folder).as_posix()) for path in folder.rglob("*") if path.is_file())
        is_last = {name: name.split("/", 1)[0] in last for name in files}
        for name in last:
            (self / name).remove(recursive=True)
        before = set(self._relative(self.fs.find(self.path)))
        for batch in ([n for n in files if not is_last[n]], [n for n in files if is_last[n]]):
            if batch:
                self.fs.put([str(folder / n) for n in batch], [f"{self.path}/{n}" for n in batch])
        stale = sorted(before - set(files))
        if stale:
            self.fs.rm([f"{self.path}/{name}" for name in stale])

    def _relative(self, paths: list[str]) -> list[str]:
        return [path[len(self.path) + 1 :] for path in paths if path.startswith(self.path + "/")]

    def remove_partial_files(self) -> int:
        """What killed writers left under this folder (``*.partial`` files and folders); how many. Only on a
        local disk: an object store's PUT is whole. Call it when no writer is at work in the folder."""
        if not self.local:
            return 0
        leftovers = sorted(Path(self.url).rglob("*.partial"), key=lambda path: len(path.parts), reverse=True)
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(leftovers)

    def remove(self, recursive: bool = False) -> None:
        """The file (or, ``recursive``, the folder and all under it); nothing when there is none."""
        if self.local:
            path = Path(self.url)
            if path.is_dir() and recursive:
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            return
        with suppress(FileNotFoundError):
            self.fs.rm(self.path, recursive=recursive)


def local_folder_problem(path: Path) -> str | None:
    """Why a dataset folder cannot be made or written at the local ``path``, or None: it is a file, it lies under
    a file or in a kernel interface (/proc, /sys, /dev), or the nearest folder that exists is not writable."""
    path = Path(path).absolute()
    if any(path == folder or folder in path.parents for folder in SYSTEM_FOLDERS):
        return f"{path} is in {next(f for f in SYSTEM_FOLDERS if f == path or f in path.parents)}, not on a disk"
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if existing.is_dir():
            return None if os.access(existing, os.W_OK) else f"{existing} is not writable"
    except OSError as error:
        return f"cannot use {path}: {error.strerror}"
    return f"{path} is a file, not a folder" if existing == path else f"{path} is under the file {existing}"


def local_file_problem(path: Path) -> str | None:
    """Why a file cannot be written at the local ``path``, or None (an existing file is replaced)."""
    path = Path(path).absolute()
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return local_folder_problem(path.parent if path.is_file() else path)


def read_each(locations: Sequence[Location]) -> list[bytes]:
    """The bytes of each file, in order; an object store's are fetched concurrently (one request each)."""
    if not locations or locations[0].local:
        return [location.read_bytes() for location in locations]
    fs = locations[0].fs
    found = fs.cat([location.path for location in locations])
    return [found[location.path] for location in locations]
