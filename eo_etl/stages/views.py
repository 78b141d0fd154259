"""Running a view (a stage over the whole dataset at once: dedup, balance), without Beam: the same fingerprints as
a stage's, for the view as a whole instead of per batch.

    <dataset>/<view's table>           its one file, written atomically by the view
    <dataset>/_build/stages/<view>/
      settings.json    the fingerprint of the view's settings (and version)
      done.json        the settings and inputs fingerprints of the file as last written

Its inputs are the stored samples' index rows (less ``recipe_hash``, as a stage's) and the bytes of every table
it reads that exists (what the view reads is what is hashed). So a rerun with nothing changed does nothing and
leaves the file as it was, new settings rerun that view only, and a changed upstream table (new embeddings, a
changed dedup) reruns the views that read it. A killed view leaves the file it had (or none): it is rerun whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pydantic import BaseModel

from eo_etl.recipe import Recipe
from eo_etl.stages.core import View
from eo_etl.stages.run import StageState, _digest, _inputs_fingerprint, _opened, _records, read_stored_rows
from eo_etl.store.location import Location

ABSENT = "absent"
CHUNK = 1 << 24  # bytes hashed at a time: a large embed table is never held whole for its digest


@dataclass
class ViewPlan:
    view: View
    settings: BaseModel
    fingerprint: str  # of the settings
    inputs: str  # of the index rows and the tables read
    up_to_date: bool  # its file is there, written with these settings from these inputs: nothing to do


def inputs_fingerprint(view: View, root: Location) -> str:
    """The digest of what the view reads: the stored samples' index rows, then each table it reads (or absent)."""
    root = Location.of(root)
    rows = "".join(f"{r['sample_id']}:{_inputs_fingerprint(r, {})}\n" for r in _records(read_stored_rows(root)))
    parts = [_digest(rows.encode())]
    for name in view.reads:
        parts.append(f"{name}:{_file_digest(root / _table_name(name))}")
    return _digest("\n".join(parts).encode())


def plan_view(view: View, recipe: Recipe, root: Location, *, redo: bool = False) -> ViewPlan | None:
    """Whether the view needs writing; None when the recipe does not configure it. ``redo`` forgets its record."""
    opened = _opened(view, recipe, root, redo)
    if opened is None:
        return None
    root = Location.of(root)
    settings, state, fingerprint, _ = opened
    inputs = inputs_fingerprint(view, root)
    done = state.done() == {"settings": fingerprint, "inputs": inputs} and (root / view.table_name).exists()
    return ViewPlan(view, settings, fingerprint, inputs, done)


def write_view(plan: ViewPlan, recipe: Recipe, root: Location) -> None:
    """Write the view's file (the view writes it atomically), then record what it was written from."""
    root = Location.of(root)
    plan.view.write(recipe, root)
    done = {"settings": plan.fingerprint, "inputs": plan.inputs}
    (StageState(root, plan.view).dir / "done.json").write_text(json.dumps(done))


def run_view(view: View, recipe: Recipe, root: Location, *, redo: bool = False) -> ViewPlan | None:
    """Plan and, unless up to date, write ``view``: the plan (None when the recipe does not configure it)."""
    plan = plan_view(view, recipe, root, redo=redo)
    if plan is not None and not plan.up_to_date:
        write_view(plan, recipe, root)
    return plan


def _table_name(name: str) -> str:
    from eo_etl.stages.registry import STAGES  # the registry lists the stage modules: not imported by them

    found = next((stage for stage in STAGES if stage.name == name), None)
    if found is None:
        raise ValueError(f"a view reads the table of {name!r}, which is not a stage")
    return found.table_name


def _file_digest(path: Location) -> str:
    if not path.exists():
        return ABSENT
    digest = hashlib.sha256()
    with path.fs.open(path.path, "rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()[:32]
