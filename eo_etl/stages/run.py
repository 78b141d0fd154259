"""Running a stage over a built dataset, without Beam: which samples need work, the work in batches, the table.

    <dataset>/<stage>.parquet                       the stage's table: one row per stored sample, by sample_id,
                                                    in index order (written atomically, last)
    <dataset>/pixels.zarr/<source>/<stage>.<mask>   its masks: uint8 (sample, y, x), aligned with ``pixels``
    <dataset>/_build/stages/<stage>/
      settings.json          the fingerprint of the stage's settings (and version) its recorded work was done with
      batches/<digest>.parquet   a finished batch: its rows, each with the fingerprint of its inputs (``_input``)
      done.json              the settings and inputs fingerprints of the table as last written

A sample's inputs are its index row (less ``recipe_hash``) and its rows in the tables the stage reads. Work is
done for a sample whose (sample_id, inputs) no batch holds, so a rerun with nothing changed does nothing, a new
version (``--since``) labels its new samples only, a killed run resumes from its finished batches, and other
settings start the stage afresh (acquisition is never involved). A batch's masks are written before its
rows, so a recorded batch is whole. The same inputs give the same table, whatever the batches were.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from pydantic import BaseModel

from eo_etl.recipe import Recipe
from eo_etl.stages.core import Item, Stage, View, stage_settings
from eo_etl.store.index import INDEX_NAME
from eo_etl.store.location import Location
from eo_etl.store.zarr import STORE_NAME, quiet_consolidated

STAGES_DIR = "_build/stages"
INPUT = "_input"  # a batch row's inputs fingerprint
IGNORED_INPUTS = ("recipe_hash", "bbox")  # index columns that do not change what a stage sees of a sample


def settings_fingerprint(stage: Stage, settings: BaseModel) -> str:
    content = {"stage": stage.name, "version": stage.version, "settings": settings.model_dump(mode="json")}
    return _digest(json.dumps(content, sort_keys=True).encode())


@dataclass
class Work:
    """One sample to run a stage on: what the batch function gets, with its inputs' fingerprint."""

    sample_id: str
    inputs: str
    row: dict
    tables: dict[str, dict | None] = field(default_factory=dict)


@dataclass
class StagePlan:
    stage: Stage
    settings: BaseModel
    fingerprint: str
    order: list[str]  # the stored samples' ids, in index order
    inputs: dict[str, str]  # sample_id → inputs fingerprint
    batches: list[list[Work]]  # what is left to do
    up_to_date: bool  # the table is there and matches settings and inputs: nothing to do

    @property
    def todo(self) -> int:
        return sum(map(len, self.batches))

    @property
    def inputs_fingerprint(self) -> str:
        return _digest("".join(f"{sid}:{self.inputs[sid]}\n" for sid in self.order).encode())


class StageState:
    """A stage's recorded work in the build's state folder."""

    def __init__(self, root: Location, stage: Stage):
        self.root, self.stage = Location.of(root), stage
        self.dir = self.root.join(*STAGES_DIR.split("/"), stage.name)

    def settings(self) -> str | None:
        try:
            return json.loads((self.dir / "settings.json").read_text())["fingerprint"]
        except FileNotFoundError:
            return None

    def start(self, fingerprint: str) -> bool:
        """Keep the recorded work if it was done with these settings, else forget it; whether it was forgotten."""
        if self.settings() == fingerprint:
            return False
        self.dir.remove(recursive=True)
        (self.dir / "settings.json").write_text(json.dumps({"fingerprint": fingerprint}))
        return True

    def done(self) -> dict | None:
        try:
            return json.loads((self.dir / "done.json").read_text())
        except FileNotFoundError:
            return None

    def batch_files(self) -> list[Location]:
        return (self.dir / "batches").glob("*.parquet")

    def recorded(self) -> set[tuple[str, str]]:
        """(sample_id, inputs) of every sample a finished batch holds."""
        found = set()
        for path in self.batch_files():
            table = _read_parquet(path, columns=["sample_id", INPUT])
            found.update(zip(table["sample_id"].to_pylist(), table[INPUT].to_pylist()))
        return found

    def record_batch(self, table: pa.Table) -> Location:
        pairs = zip(table["sample_id"].to_pylist(), table[INPUT].to_pylist())
        keys = "".join(f"{sid}:{inputs}\n" for sid, inputs in pairs)
        path = self.dir / "batches" / f"{_digest(keys.encode())}.parquet"
        with path.staged_file() as partial:
            pq.write_table(table, partial)
        return path


def read_stored_rows(root: Location) -> pd.DataFrame:
    """The index rows of the stored samples (those with pixels), in index order."""
    index = Location.of(root) / INDEX_NAME
    frame = pd.read_parquet(index.url, storage_options=index.storage_options)
    return frame[frame["zarr_index"].notna()].reset_index(drop=True)


def read_table(root: Location, name: str) -> pd.DataFrame:
    """A stage's table (FileNotFoundError when the stage has not written it)."""
    path = Location.of(root) / f"{name}.parquet"
    return _read_parquet(path).to_pandas()


def plan_stage(stage: Stage, recipe: Recipe, root: Location, *, redo: bool = False) -> StagePlan | None:
    """What running ``stage`` on the dataset at ``root`` takes; None when the recipe does not configure it.
    ``redo`` forgets the stage's recorded work first."""
    opened = _opened(stage, recipe, root, redo)
    if opened is None:
        return None
    root = Location.of(root)
    settings, state, fingerprint, forgotten = opened
    rows = read_stored_rows(root)
    upstream = {name: _upstream_table(root, recipe, name) for name in stage.reads}
    work = []
    for record in _records(rows):
        tables = {name: _row_or_none(table, record["sample_id"]) for name, table in upstream.items()}
        inputs = _inputs_fingerprint(record, tables)
        work.append(Work(record["sample_id"], inputs, record, tables))
    order = [w.sample_id for w in work]
    plan = StagePlan(stage, settings, fingerprint, order, {w.sample_id: w.inputs for w in work}, [], False)
    done = state.done()
    table = root / stage.table_name
    if not forgotten and done == {"settings": fingerprint, "inputs": plan.inputs_fingerprint} and table.exists():
        plan.up_to_date = True
        return plan
    recorded = set() if forgotten else state.recorded()
    todo = [w for w in work if (w.sample_id, w.inputs) not in recorded]
    plan.batches = [todo[i : i + stage.batch_size] for i in range(0, len(todo), stage.batch_size)]
    if forgotten:
        _remove_masks(root, stage, rows["source"].unique())
    prepare_masks(root, stage, settings, rows)
    return plan


def _opened(stage: Stage | View, recipe: Recipe, root: Location, redo: bool):
    """A stage (or view) opened to plan: its settings, state, settings fingerprint and whether its recorded work
    was forgotten (``redo``, or other settings); None when the recipe does not configure it."""
    settings = stage_settings(stage, recipe)
    if settings is None:
        return None
    state = StageState(root, stage)
    fingerprint = settings_fingerprint(stage, settings)
    if redo:
        state.dir.remove(recursive=True)
    return settings, state, fingerprint, state.start(fingerprint)


class BatchRunner:
    """Runs a stage's batches in one process (a Beam worker, or a plain loop): its function opened once."""

    def __init__(self, stage: Stage, recipe: Recipe, root: Location):
        self.stage, self.root = stage, Location.of(root)
        self.settings = stage_settings(stage, recipe)
        self.state = StageState(self.root, stage)
        # the recipe as this build runs it: its output is this dataset (a --out may have moved it)
        self.recipe = recipe.model_copy(update={"outputs": recipe.outputs.model_copy(update={"path": self.root.url})})
        self._labeller = None
        self.arrays: dict[str, zarr.Array] = {}

    @property
    def labeller(self):
        """The stage's function, opened when first needed (a Beam step that only reads or records opens none)."""
        if self._labeller is None:
            self._labeller = self.stage.open(self.settings, self.recipe)
        return self._labeller

    def run(self, batch: Sequence[Work]) -> int:
        """Run the stage on ``batch``, write its masks, then record its rows; how many samples."""
        return self.record(batch, self.labeller(self.items(batch)))

    def items(self, batch: Sequence[Work]) -> list[Item]:
        """What the stage's function gets of ``batch``: with its pixels, read here, when it needs them."""
        return [Item(w.sample_id, w.row, w.tables, self._pixels(w.row) if self.stage.needs_pixels else None)
                for w in batch]  # fmt: skip

    def record(self, batch: Sequence[Work], outputs: Sequence) -> int:
        """Write the masks of ``batch``'s outputs, then record its rows; how many samples."""
        if len(outputs) != len(batch):
            raise RuntimeError(f"stage {self.stage.name}: {len(outputs)} outputs for {len(batch)} samples")
        expected = self.stage.masks(self.settings)
        for work, output in zip(batch, outputs):
            for name, mask in output.masks.items():
                if name not in expected:
                    raise RuntimeError(f"stage {self.stage.name}: mask {name!r} is not declared ({sorted(expected)})")
                array = self._array(work.row["source"], self.stage.mask_array(name))
                if mask.shape != array.shape[1:]:
                    raise RuntimeError(f"stage {self.stage.name}: mask {name} of {work.sample_id} is {mask.shape}, "
                                       f"the pixels {array.shape[1:]}")  # fmt: skip
                array[int(work.row["zarr_index"])] = mask.astype(np.uint8)
        rows = [{"sample_id": w.sample_id, **o.row} for w, o in zip(batch, outputs)]
        table = pa.Table.from_pylist(rows, schema=self.stage.schema)
        table = table.append_column(INPUT, pa.array([w.inputs for w in batch], pa.string()))
        self.state.record_batch(table)
        return len(batch)

    def _array(self, source: str, name: str) -> zarr.Array:
        key = f"{source}/{name}"
        if key not in self.arrays:
            store = self.root / STORE_NAME
            self.arrays[key] = zarr.open_array(store.url, path=key, mode="r+", storage_options=store.storage_options)
        return self.arrays[key]

    def _pixels(self, row: dict) -> np.ndarray:
        return self._array(row["source"], "pixels")[int(row["zarr_index"])]


def assemble(plan: StagePlan, root: Location) -> pa.Table:
    """The stage's table from its recorded batches (the current inputs of every stored sample), written
    beside the index; the batches no sample needs any more are removed."""
    root = Location.of(root)
    state = StageState(root, plan.stage)
    found: dict[str, pa.Table] = {}
    stale = []
    for path in state.batch_files():
        table = _read_parquet(path)
        current = [plan.inputs.get(sid) == inputs for sid, inputs in zip(table["sample_id"].to_pylist(),
                                                                           table[INPUT].to_pylist())]  # fmt: skip
        if not any(current):
            stale.append(path)
            continue
        table = table.filter(pa.array(current))
        for i, sid in enumerate(table["sample_id"].to_pylist()):
            found.setdefault(sid, table.slice(i, 1))
    missing = [sid for sid in plan.order if sid not in found]
    if missing:
        raise RuntimeError(f"stage {plan.stage.name}: {len(missing)} samples have no recorded output ({missing[0]}, …)")
    parts = [found[sid].drop_columns([INPUT]).cast(plan.stage.schema) for sid in plan.order]
    table = pa.concat_tables(parts) if parts else plan.stage.schema.empty_table()
    with (root / plan.stage.table_name).staged_file() as partial:
        pq.write_table(table, partial)
    (state.dir / "done.json").write_text(json.dumps({"settings": plan.fingerprint, "inputs": plan.inputs_fingerprint}))
    for path in stale:
        path.remove()
    return table


def run_stage(stage: Stage, recipe: Recipe, root: Location, *, redo: bool = False) -> StagePlan | None:
    """Plan, run and assemble ``stage`` in this process (tests, small datasets): the plan, None when the
    recipe does not configure the stage."""
    plan = plan_stage(stage, recipe, root, redo=redo)
    if plan is None or plan.up_to_date:
        return plan
    if plan.batches:
        runner = BatchRunner(stage, recipe, root)
        for batch in plan.batches:
            runner.run(batch)
    assemble(plan, root)
    return plan


# ------------------------------------------------------------------------------------------ masks
def prepare_masks(root: Location, stage: Stage, settings: BaseModel, rows: pd.DataFrame) -> None:
    """Every declared mask as an array in each source's group, as long as its pixels (created before any
    worker writes, so workers only write chunks: one per sample)."""
    masks = stage.masks(settings)
    if not masks or rows.empty:
        return
    store = Location.of(root) / STORE_NAME
    group = zarr.open_group(store.url, mode="a", use_consolidated=False, storage_options=store.storage_options)
    for source in rows["source"].unique():
        pixels = group[source]["pixels"]
        count, _, height, width = pixels.shape
        for name, fill in masks.items():
            array_name = stage.mask_array(name)
            existing = group[source].get(array_name)
            if existing is not None and existing.shape[1:] == (height, width) and existing.fill_value == fill:
                if existing.shape[0] != count:
                    existing.resize((count, height, width))
                continue
            group[source].create_array(
                array_name, shape=(count, height, width), dtype="uint8", chunks=(1, height, width),
                fill_value=fill, dimension_names=("sample", "y", "x"), overwrite=True,
                attributes={"long_name": f"{stage.name} mask {name}", "stage": stage.name, "fill_value": fill},
            )  # fmt: skip
    with quiet_consolidated():
        zarr.consolidate_metadata(group.store)  # open_dataset reads the consolidated metadata


def _remove_masks(root: Location, stage: Stage, sources) -> None:
    """The stage's mask arrays, from a run with other settings."""
    store = Location.of(root) / STORE_NAME
    try:
        group = zarr.open_group(store.url, mode="a", use_consolidated=False, storage_options=store.storage_options)
    except FileNotFoundError:
        return
    for source in sources:
        if source not in group:
            continue
        for name, _ in list(group[source].arrays()):
            if name.startswith(f"{stage.name}."):
                del group[source][name]


# ------------------------------------------------------------------------------------------ helpers
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _read_parquet(path: Location, columns: list[str] | None = None) -> pa.Table:
    if path.local:
        return pq.read_table(path.url, columns=columns)
    return pq.read_table(io.BytesIO(path.read_bytes()), columns=columns)


def _records(rows: pd.DataFrame) -> Iterator[dict]:
    for record in rows.to_dict("records"):
        yield {key: _plain(value) for key, value in record.items()}


def _plain(value):
    """A value of a pandas row as plain Python (lists, None for missing), the same however it was read."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value


def _upstream_table(root: Location, recipe: Recipe, name: str) -> pd.DataFrame | None:
    """An earlier stage's table by sample_id; None where the recipe does not configure that stage (a table
    left by an earlier recipe is not read) or it has not written one."""
    from eo_etl.stages.registry import STAGES  # the registry lists the stage modules: not imported by them

    stage = next((stage for stage in STAGES if stage.name == name), None)
    if stage is None:
        raise ValueError(f"a stage reads the table of {name!r}, which is not a stage")
    if stage_settings(stage, recipe) is None:
        return None
    try:
        return read_table(root, name).set_index("sample_id")
    except FileNotFoundError:
        return None


def _row_or_none(table: pd.DataFrame | None, sample_id: str) -> dict | None:
    if table is None or sample_id not in table.index:
        return None
    return {key: _plain(value) for key, value in table.loc[sample_id].to_dict().items()}


def _json(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _inputs_fingerprint(record: dict, tables: dict) -> str:
    row = {key: value for key, value in record.items() if key not in IGNORED_INPUTS}
    return _digest(json.dumps([row, tables], sort_keys=True, default=_json).encode())
