"""What a stage is: a name, its settings from the recipe, what it reads, and a plain function over samples.

A stage runs after the pixel store and the index exist. Its function sees a batch of samples (each an index
row, the rows of the earlier stage tables it reads, and its pixels when it needs them) and answers one output
per sample: a row of its table and, optionally, per-pixel masks on the sample's pixel grid. Everything else
(which samples need work, batches, fingerprints, where the outputs go, Beam) is the mechanism's
(``eo_etl.stages.run``, ``eo_etl.pipeline.stages``): a stage module imports neither Beam nor another stage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

if TYPE_CHECKING:
    from eo_etl.recipe import Recipe

STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a table's file name and a prefix of mask arrays
MAX_BATCH = 4096


@dataclass
class Item:
    """One sample as a stage sees it."""

    sample_id: str
    row: dict[str, Any]  # its index row (eo_etl.store.index.INDEX_SCHEMA; geometry as WKB bytes)
    tables: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # earlier stage → its row (None: none)
    pixels: np.ndarray | None = None  # (band, y, x) as stored, when the stage needs pixels


@dataclass
class Output:
    """What a stage makes of one sample."""

    row: dict[str, Any]  # the stage table's columns (``sample_id`` is added by the mechanism)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # mask name → uint8 (height, width) on the pixel grid


# The function a stage's ``open`` returns: called per batch, one Output per Item, in the same order.
Labeller = Callable[[Sequence[Item]], list[Output]]


@dataclass(frozen=True)
class ModelStep:
    """A stage whose batch is read (pixels, CPU), run through a model (an accelerator's work), then made into
    outputs. In Beam the model is a step of its own (``RunInference`` with ``handler``), so a GPU is not held
    while batches are read and written; without Beam the stage's ``open`` function does the three in turn.

    ``prepare(settings, items)`` → (layout, model input) of a batch; ``finish(settings, layout, result, model)``
    → its outputs, one per item, from the model's result and its name. ``handler`` names the Beam ``ModelHandler``
    (``"package.module:Class"``, built as ``Class(settings)``; its ``run_inference`` answers the result for each
    model input): only the Beam wrapper imports it, so the stage's module stays free of Beam.
    """

    prepare: Callable[[BaseModel, Sequence[Item]], tuple[Any, Any]]
    finish: Callable[[BaseModel, Any, Any, str], list[Output]]
    handler: str


@dataclass(frozen=True)
class Stage:
    """A stage after the store. Register it in ``eo_etl.stages.registry.STAGES`` (one entry, in pipeline order).

    ``section`` is where the recipe configures it (``labels.landcover``; unset there: not configured); the
    fingerprint hashes that section's JSON with ``version`` (raise ``version`` when the function's output
    changes for the same settings). ``open(settings, recipe)`` runs once per worker (open rasters, read a
    region) and returns the function called per batch. ``columns`` is the table's schema without
    ``sample_id``; ``masks(settings)`` names the masks (uint8, ``name → fill value``) it writes into the
    sample's Zarr group as ``<stage>.<name>``.
    """

    name: str
    group: str  # the name that selects it with others (``--stages labels``)
    section: str  # the recipe's attribute path of its settings
    open: Callable[[BaseModel, Recipe], Labeller]
    columns: pa.Schema
    reads: tuple[str, ...] = ()  # earlier stages whose tables it reads (by name, never by import)
    needs_pixels: bool = False
    masks: Callable[[BaseModel], dict[str, int]] = lambda settings: {}
    version: str = "1"
    batch_size: int = 64
    model: ModelStep | None = None  # its model as a step of its own in Beam (embeddings)

    def __post_init__(self):
        if not STAGE_NAME.fullmatch(self.name):
            raise ValueError(f"stage name {self.name!r}: 1 to 32 of a-z, 0-9 and _, starting with a letter")
        if "sample_id" in self.columns.names:
            raise ValueError(f"stage {self.name}: sample_id is added by the mechanism; leave it out of columns")
        if not 0 < self.batch_size <= MAX_BATCH:
            raise ValueError(f"stage {self.name}: batch_size {self.batch_size}; 1 to {MAX_BATCH}")

    @property
    def table_name(self) -> str:
        return f"{self.name}.parquet"

    @property
    def schema(self) -> pa.Schema:
        """The table's Arrow schema: ``sample_id`` first."""
        return pa.schema([pa.field("sample_id", pa.string(), nullable=False), *self.columns])

    def mask_array(self, mask: str) -> str:
        """The Zarr array (in the sample's source group) of one of its masks."""
        return f"{self.name}.{mask}"


@dataclass(frozen=True)
class View:
    """A stage over the whole dataset at once (dedup, balance: a sample's row depends on every other sample), run
    by the same mechanism as a whole (``eo_etl.stages.views``): rerun only when its settings (``section``, with
    ``version``) or its inputs (the stored samples' index rows and the tables named in ``reads``) changed.

    ``write(recipe, root)`` writes its one file ``table`` beside the index, atomically (``Location.staged_file``),
    from the index and the earlier tables; it imports neither Beam nor another stage's module (it reads files).
    """

    name: str
    group: str
    section: str
    write: Callable[[Recipe, Any], object]
    table: str  # the file it writes beside the index
    reads: tuple[str, ...] = ()  # the stages and views whose tables it reads (by name)
    version: str = "1"

    def __post_init__(self):
        if not STAGE_NAME.fullmatch(self.name):
            raise ValueError(f"view name {self.name!r}: 1 to 32 of a-z, 0-9 and _, starting with a letter")

    @property
    def table_name(self) -> str:
        return self.table


def stage_settings(stage: Stage | View, recipe: Recipe) -> BaseModel | None:
    """The stage's section of the recipe (``labels.landcover``), None where it is not configured."""
    try:
        return attrgetter(stage.section)(recipe)
    except AttributeError:  # a parent section (labels) is unset
        return None
