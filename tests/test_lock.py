"""One writer per dataset (eo_etl/pipeline/lock.py): a held lock refuses a second writer and names the holder;
a lock whose process is gone, or whose heartbeat stopped, is taken over; the lock goes when its build ends, also
by an error. On S3 (moto's server on loopback) the marker is created with a conditional PUT."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from eo_etl.pipeline.lock import LOCK_NAME, DatasetLock, DatasetLocked
from eo_etl.store.location import Location
from tests.test_object_store import s3  # noqa: F401 (a fixture)


def test_a_held_lock_refuses_a_second_writer_naming_the_holder_and_goes_at_the_end(tmp_path):
    root = Location(tmp_path)
    with DatasetLock(root):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(DatasetLocked, match=f"build pid {os.getpid()} on {socket.gethostname()}, started "):
            DatasetLock(root).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError), DatasetLock(root):
        raise RuntimeError("a build that fails")
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: no process has this pid now
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "token": "old"}))
    with DatasetLock(Location(tmp_path)) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.owner["token"]


def test_another_hosts_lock_holds_while_it_beats_and_is_taken_over_when_it_stops(tmp_path):
    marker = tmp_path / LOCK_NAME
    marker.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(DatasetLocked, match="build pid 1 on elsewhere"):
        DatasetLock(Location(tmp_path), stale_after_s=60).acquire()
    os.utime(marker, (time.time() - 61, time.time() - 61))  # its last heartbeat, a minute ago
    with DatasetLock(Location(tmp_path), stale_after_s=60):
        assert json.loads(marker.read_text())["host"] == socket.gethostname()


def test_a_lock_its_writer_never_filled_holds_until_it_is_stale(tmp_path):
    marker = tmp_path / LOCK_NAME
    marker.touch()  # killed between creating the file and writing its owner
    with pytest.raises(DatasetLocked, match="a build that is starting"):
        DatasetLock(Location(tmp_path), stale_after_s=60).acquire()
    os.utime(marker, (time.time() - 61, time.time() - 61))
    with DatasetLock(Location(tmp_path), stale_after_s=60) as lock:
        assert json.loads(marker.read_text())["token"] == lock.owner["token"]


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path):
    marker = tmp_path / LOCK_NAME
    with DatasetLock(Location(tmp_path), heartbeat_s=0.05):
        os.utime(marker, (time.time() - 30, time.time() - 30))
        time.sleep(0.3)
        assert time.time() - marker.stat().st_mtime < 5


def test_on_s3_the_marker_is_created_conditionally(s3):  # noqa: F811
    root = Location("s3://bucket/demo")
    with DatasetLock(root) as lock:
        assert json.loads(s3.cat_file(f"bucket/demo/{LOCK_NAME}"))["token"] == lock.owner["token"]
        with pytest.raises(DatasetLocked, match=f"build pid {os.getpid()} on "):
            DatasetLock(Location("s3://bucket/demo")).acquire()
        # the create itself is conditional (If-None-Match: *), not a check before a write
        with pytest.raises(FileExistsError):
            s3.pipe_file(f"bucket/demo/{LOCK_NAME}", b"{}", mode="create")
    assert not s3.exists(f"bucket/demo/{LOCK_NAME}")
