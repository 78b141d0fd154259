"""Grid definitions as data: one YAML file per grid in the repository's ``grids/`` folder."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from eo_etl.grid.majortom import MajorTomGrid


class GridDefinition(BaseModel):
    """What a grid file says: the grid family and the parameters it is built with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    family: Literal["majortom"]  # the implementation that builds it
    radius_km: float
    latitude_range: tuple[float, float]
    default_distance_km: float
    sample_margin_m: float
    utm_rule: Literal["bottom-left"]


def grids_dir() -> Path:
    """The grid files: shipped inside the wheel, or the repository's ``grids/`` in a source checkout."""
    packaged = Path(str(files("eo_etl"))) / "grids"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "grids"


@cache
def grid_definitions() -> dict[str, GridDefinition]:
    """All grid definitions by name."""
    found = {}
    for path in sorted(grids_dir().glob("*.yaml")):
        definition = GridDefinition.model_validate(yaml.safe_load(path.read_text()))
        found[definition.name] = definition
    return found


def grid_definition(name: str) -> GridDefinition:
    """The definition called ``name``; a ValueError that lists the known grids otherwise."""
    known = grid_definitions()
    if name not in known:
        raise ValueError(f"unknown grid {name!r}; allowed: {', '.join(known)}")
    return known[name]


@cache
def get_grid(name: str = "majortom", distance_km: float | None = None) -> MajorTomGrid:
    """The grid ``name`` at ``distance_km`` (its default when None); cached, grids are immutable."""
    definition = grid_definition(name)
    return MajorTomGrid(
        distance_km if distance_km is not None else definition.default_distance_km,
        radius_km=definition.radius_km,
        latitude_range=definition.latitude_range,
        margin_m=definition.sample_margin_m,
    )
