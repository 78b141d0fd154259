"""A live view of a local build: cells finished (with the time left) and shards written, read from the build's
state folder, which every worker writes to — so it works with any runner whose workers share the disk. A build
to an object store shows none: polling a bucket's listings twice a second would cost requests, not disk reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

POLL_S = 0.5


@contextmanager
def build_progress(samples_dir: Path, shards_dir: Path, cells: int, console: Console | None = None) -> Iterator[None]:
    """Shows progress until the block ends: ``cells`` records expected under ``samples_dir`` (state.py)."""
    started = time.time()
    columns = (TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
               TimeRemainingColumn(), TimeElapsedColumn())  # fmt: skip
    stop = threading.Event()
    with Progress(*columns, console=console, transient=False) as progress:
        finished = progress.add_task("cells", total=cells)
        written = progress.add_task("shards", total=None)

        def poll() -> None:
            while not stop.wait(POLL_S):
                progress.update(finished, completed=_cells(samples_dir))
                progress.update(written, completed=_count(shards_dir, "*/*.json", since=started))

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            progress.update(finished, completed=_cells(samples_dir))
            shards = _count(shards_dir, "*/*.json", since=started)
            progress.update(written, completed=shards, total=shards)


def _cells(samples_dir: Path) -> int:
    """Cells finished: a state file of rows A to B (``rows-AAAAAAAAA-BBBBBBBBB.json``) holds B - A of them."""
    try:
        spans = [path.stem.split("-")[1:] for path in samples_dir.glob("*/rows-*-*.json")]
    except FileNotFoundError:
        return 0
    return sum(int(stop) - int(first) for first, stop in spans)


def _count(folder: Path, pattern: str, since: float | None = None) -> int:
    try:
        return sum(1 for path in folder.glob(pattern) if since is None or path.stat().st_mtime >= since)
    except FileNotFoundError:  # renamed away between the listing and the stat
        return 0
