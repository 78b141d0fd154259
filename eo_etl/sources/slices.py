"""Time slices: a recipe's window (``time:``) cut into slices, each giving its own samples per cell and source.

``time.slices.every``:
- ``season``: meteorological seasons, Dec-Feb, Mar-May, Jun-Aug, Sep-Nov (named by months, not by hemisphere);
- ``month``: calendar months;
- ``days``: ``days``-long slices from the window's start;
- ``scene``: one slice per acquisition, a UTC day (a pass; neighbouring tiles of that day fill its gaps).
Every slice is clipped to the window and ends where the next begins (ends exclusive), so a scene falls in
exactly one slice.

``time.slices.pick`` chooses each slice's samples by the acquisition rule (least cloud over the cell, then
nearest the slice's middle, then item id): ``best`` makes one sample a slice; ``all`` one sample per
acquisition day in the slice; ``k_best`` the ``k`` best days.

Identity (``SampleId.start``): a slice's start for ``best`` (``every: scene`` included, whose slices are days);
the acquisition day (00:00 UTC, or the slice's start when that is later) for ``all`` and ``k_best``, so each
of a slice's samples has its own id. The index keeps the slice in ``slice_start`` and ``slice_end``.

Never a silent gap: a slice with no scene over the cell, or none clear enough, is a rejected sample with the
reason (start: the slice's); ``all`` records each rejected day; ``k_best`` keeps up to ``k`` (fewer when fewer
days pass), and a rejected sample when none does. ``every: scene`` with no scene at all records one rejected
sample for the window. The patch grid is chosen once per cell from the whole window's scenes, so a cell's
slices stack pixel on pixel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eo_etl.recipe.models import TimeSlices

SEASON_STARTS = (3, 6, 9, 12)  # meteorological seasons begin in March, June, September and December


@dataclass(frozen=True, order=True)
class TimeSlice:
    start: datetime
    end: datetime  # exclusive

    @property
    def middle(self) -> datetime:
        """What ranking aims at within the slice."""
        return self.start + (self.end - self.start) / 2

    def holds(self, when: datetime) -> bool:
        return self.start <= when < self.end


def window_slices(spec: TimeSlices, start: datetime, end: datetime, times: Iterable[datetime] = ()) -> list[TimeSlice]:
    """The slices of the window [start, end) in order; for ``every: scene``, the UTC days of ``times`` (the
    acquisitions over a cell) in the window, or the whole window when there are none."""
    if spec.every == "scene":
        days = sorted({_midnight(when) for when in times if start <= when < end})
        slices = [TimeSlice(max(day, start), min(day + timedelta(days=1), end)) for day in days]
        return slices or [TimeSlice(start, end)]
    bounds = [start]
    while bounds[-1] < end:
        bounds.append(_next_bound(spec, bounds[-1], start))
    bounds[-1] = end
    return [TimeSlice(a, b) for a, b in zip(bounds, bounds[1:])]


def day_start(when: datetime, within: TimeSlice) -> datetime:
    """The id start of an ``all``/``k_best`` sample acquired at ``when``: its UTC day, inside its slice."""
    return max(_midnight(when), within.start)


def _next_bound(spec: TimeSlices, after: datetime, origin: datetime) -> datetime:
    if spec.every == "days":
        return origin + timedelta(days=spec.days) * ((after - origin) // timedelta(days=spec.days) + 1)
    month = after.month + 1 if spec.every == "month" else next((m for m in SEASON_STARTS if m > after.month), 15)
    year, month = after.year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def _midnight(when: datetime) -> datetime:
    when = when.astimezone(UTC)
    return datetime(when.year, when.month, when.day, tzinfo=UTC)
