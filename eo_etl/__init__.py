"""eo-etl: build and curate ML-ready Earth observation corpora from the open archive.

The public API (the README's "The library" section lists it too)::

    recipe = eo_etl.load_recipe("pipelines/demo.yaml")     # or parse_recipe(dict); a Recipe (pydantic)
    report = eo_etl.build(recipe)                          # plan, acquire, store, stages after the store
    ds = eo_etl.open_dataset("out/demo", stages=["landcover"])   # lazy xarray, stage columns per sample
    index = eo_etl.read_index("out/demo")                  # one row per sample, keyed by sample_id
    for sample in eo_etl.read_samples("out/demo", "s2l2a"): ...  # Samples with pixels, in store order
    sid = eo_etl.SampleId.parse(index.sample_id[0])        # cell, source, window start
    data = eo_etl.SampleDataset("out/demo", transforms=fn) # PyTorch (extra ``torch``)
    grid = eo_etl.get_grid("majortom", 10)                 # the Major TOM grid

Composable Beam transforms of the build's steps are in :mod:`eo_etl.beam`. Everything else is private by
convention. Names are imported when first used, so ``import eo_etl`` loads neither Beam nor PyTorch, and it
leaves global logging as it is. ``eo_etl.build`` is the function; its module is ``sys.modules["eo_etl.build"]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eo-etl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# Public name -> the module that defines it; imported on first use (module __getattr__, PEP 562).
_PUBLIC = {
    "Recipe": "eo_etl.recipe.models",
    "RecipeError": "eo_etl.recipe.load",
    "load_recipe": "eo_etl.recipe.load",
    "parse_recipe": "eo_etl.recipe.load",
    "build": "eo_etl.build",
    "BuildReport": "eo_etl.build",
    "open_dataset": "eo_etl.store.read",
    "sample_array": "eo_etl.store.read",
    "read_index": "eo_etl.store.read",
    "read_samples": "eo_etl.store.read",
    "Sample": "eo_etl.sample",
    "SampleId": "eo_etl.sample",
    "SampleDataset": "eo_etl.store.torch_dataset",
    "MajorTomGrid": "eo_etl.grid.majortom",
    "get_grid": "eo_etl.grid.definitions",
}

# SampleDataset needs PyTorch (extra ``torch``): listed where it is installed, so ``from eo_etl import *`` works
# everywhere.
_TORCH = importlib.util.find_spec("torch") is not None
__all__ = sorted(name for name in _PUBLIC if name != "SampleDataset" or _TORCH)


def __getattr__(name: str):
    """The public name ``name``, imported from its module on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'eo_etl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Every public name (``help(eo_etl)`` documents them); ``SampleDataset`` only where PyTorch is installed."""
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package, whose ``build`` stays the function when the submodule ``eo_etl.build`` is imported (the
    import system would otherwise set the package's attribute of that name to the module)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return  # a submodule named as a public name: reached through sys.modules, not as an attribute
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
