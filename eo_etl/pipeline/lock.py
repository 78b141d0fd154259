"""One writer per dataset: a build holds the dataset's lock from before it touches the folder until it ends.

    <dataset>/_build.lock    JSON: host, pid, start time and a random token of the build that holds it

Guarantees:

- **Local disk**: the lock file is created with ``O_CREAT | O_EXCL``, so of two builds that start together
  exactly one gets it. The holder's heartbeat thread touches the file's mtime every ``HEARTBEAT_S`` seconds.
- **Object stores** (``s3://``, ``gs://``, …): the lock is a marker object created conditionally (fsspec's
  ``pipe_file(mode="create")``, an ``If-None-Match: *`` PUT on S3, atomic there). On a store whose fsspec
  backend has no conditional PUT, fsspec checks for the object before writing it: builds started within the
  same second may both get the lock, so keep to one writer by hand there. The heartbeat rewrites the marker
  with the time.
- **A lock left by a killed build** is stale, and taken over, when its holder ran on this host and its process
  is gone, or when its heartbeat is older than ``STALE_AFTER_S`` (any host: a build on another machine is
  only known by its heartbeat). Locally, contenders take a stale lock over one at a time (an ``flock`` on
  the dataset folder), so of two only one removes it and creates its own.
- **Release**: at the end of the build, also when it fails, the lock is removed if it is still this build's.
  A lock lost meanwhile (taken over after a heartbeat stopped for ``STALE_AFTER_S``) is left to its new holder.

A second build is refused with :class:`DatasetLocked`, whose one-line message names the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from eo_etl.store.location import Location

LOCK_NAME = "_build.lock"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0  # a dozen missed heartbeats: the holder is gone (or hung)


class DatasetLocked(ValueError):
    """Another build holds the dataset. A ValueError: the command line reports it as bad input, in one line."""


class DatasetLock:
    """The lock of the dataset at ``root``: ``acquire()`` (or ``with``) takes it or raises DatasetLocked."""

    def __init__(self, root: Location, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
        self.root = root
        self.marker = root / LOCK_NAME
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
        }
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ---------------------------------------------------------------------------------- taking it
    def acquire(self) -> DatasetLock:
        if self.root.local:
            with _serialised(self.root.local_path):
                if not self._create_local():
                    holder, age = self._holder()
                    if not self._stale(holder, age):
                        raise DatasetLocked(self._refusal(holder, age))
                    self.marker.local_path.unlink(missing_ok=True)
                    if not self._create_local():
                        raise DatasetLocked(self._refusal(*self._holder()))
        elif not self._create_remote():
            holder, age = self._holder()
            if not self._stale(holder, age):
                raise DatasetLocked(self._refusal(holder, age))
            if self._holder()[0] == holder:  # still the stale one: remove it, then race for a fresh create
                self.marker.remove()
            if not self._create_remote():
                raise DatasetLocked(self._refusal(*self._holder()))
        self._beat = threading.Thread(target=self._heartbeat, name="eo-etl dataset lock", daemon=True)
        self._beat.start()
        return self

    def _create_local(self) -> bool:
        try:
            fd = os.open(self.marker.local_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as file:
            json.dump(self.owner, file)
        return True

    def _create_remote(self) -> bool:
        try:
            self.marker.fs.pipe_file(self.marker.path, self._contents(), mode="create")
        except FileExistsError:
            return False
        return True

    def _contents(self) -> bytes:
        return json.dumps(self.owner | {"heartbeat": datetime.now(UTC).isoformat()}).encode()

    # ---------------------------------------------------------------------------------- the holder
    def _holder(self) -> tuple[dict, float]:
        """Who holds the lock and how many seconds ago it last beat; ({}, 0) when the lock is gone, ({}, its age)
        when it cannot be read."""
        try:
            text = self.marker.read_bytes()
            mtime = self.marker.local_path.stat().st_mtime if self.root.local else None
            holder = json.loads(text)
        except FileNotFoundError:
            return {}, 0.0
        except ValueError:  # being written (held), or its writer died before writing it (stale in time)
            with suppress(OSError, NotImplementedError):
                mtime = mtime or self.marker.fs.modified(self.marker.path).timestamp()
            return {}, 0.0 if mtime is None else max(0.0, time.time() - mtime)
        if mtime is None:
            beat = holder.get("heartbeat") or holder.get("started")
            mtime = datetime.fromisoformat(beat).timestamp() if beat else time.time()
        return holder, max(0.0, time.time() - mtime)

    def _stale(self, holder: dict, age: float) -> bool:
        if age > self.stale_after_s:
            return True
        return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0)))

    def _refusal(self, holder: dict, age: float) -> str:
        who = (
            f"build pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
            f"last heartbeat {age:.0f} s ago"
            if holder
            else "a build that is starting"
        )
        return (
            f"{self.root}: another build is writing this dataset ({who}); wait for it to end, or remove "
            f"{self.marker} if that build is gone"
        )

    def _mine(self) -> bool:
        return self._holder()[0].get("token") == self.owner["token"]

    # ------------------------------------------------------------------------------ while holding it
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._mine():
                    return  # taken over after this process stopped beating: never write over the new holder
                if self.root.local:
                    os.utime(self.marker.local_path)
                else:
                    self.marker.fs.pipe_file(self.marker.path, self._contents())
            except OSError:
                continue  # a passing failure of the disk or the store: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._mine():
            self.marker.remove()

    def __enter__(self) -> DatasetLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextmanager
def _serialised(folder: Path):
    """Contenders for a local lock one at a time: an flock on the dataset folder (released if the process dies)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with suppress(OSError):  # a disk without flock: the O_EXCL create alone decides, takeovers may race
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
