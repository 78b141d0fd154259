"""Collection profiles: what the pipeline knows of a collection (bands, native resolutions), as data.

One YAML file per collection in ``profiles/``; a recipe names a profile by its name or by any of its
aliases (the collection id at a provider, an Earth Engine asset id).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Band(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution_m: float = Field(gt=0)
    common_name: str | None = None
    # classes: a class map (land cover): its values are codes, so it is cut with nearest, never scaled, kept lossless
    role: Literal["data", "mask", "classes", "auxiliary"] = "data"

    @property
    def categorical(self) -> bool:
        """Whether the values are codes (a mask, a class map): resampled by nearest, never averaged or scaled."""
        return self.role in ("mask", "classes")


class QualityRule(BaseModel):
    """How a collection's mask band marks cloud and missing pixels: by class value or by bit flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    band: str
    cloud_values: tuple[int, ...] = ()
    nodata_values: tuple[int, ...] = ()
    cloud_bits: tuple[int, ...] = ()
    nodata_bits: tuple[int, ...] = ()
    shadow_values: tuple[int, ...] = ()  # the part of cloud that is cloud shadow (quality scores report it apart)
    shadow_bits: tuple[int, ...] = ()


class EarthEngineNames(BaseModel):
    """How Earth Engine's catalogue names this collection's bands and properties, and scales its pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bands: dict[str, str]  # our band id -> Earth Engine band name
    cloud_property: str | None = None
    baseline_property: str | None = None
    scale: float = 1.0  # of the data bands; mask bands are never scaled
    offset: float = 0.0


class CollectionProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    aliases: tuple[str, ...] = ()
    default_bands: tuple[str, ...]
    default_resolution_m: float = Field(gt=0)
    bands: dict[str, Band]
    nodata: float | None = Field(None, description="Nodata of the assets when neither the item nor the file says.")
    dtype: Literal["uint8", "uint16", "int16", "float32"] = Field(
        "uint16", description="The assets' pixel type (the synthetic source makes its pixels in it)."
    )
    quality: QualityRule | None = None
    cloud_property: str | None = Field(
        "eo:cloud_cover", description="The items' cloud cover property; null for collections without (radar, DEM)."
    )
    baseline_properties: tuple[str, ...] = ("processing:version",)
    earth_engine: EarthEngineNames | None = None
    license: str = Field("other", description="The data's licence (a dataset card's source list names it).")
    license_url: str | None = None

    @model_validator(mode="after")
    def _bands_exist(self) -> CollectionProfile:
        named = [*self.default_bands, *([self.quality.band] if self.quality else [])]
        named += list(self.earth_engine.bands) if self.earth_engine else []
        unknown = [band for band in named if band not in self.bands]
        if unknown:
            raise ValueError(f"{self.name}: bands {unknown} are named but not listed under bands")
        if self.nodata is not None and np.dtype(self.dtype).kind in "iu":
            info = np.iinfo(self.dtype)
            if not (self.nodata.is_integer() and info.min <= self.nodata <= info.max):
                raise ValueError(f"{self.name}: nodata {self.nodata:g} is not a value of {self.dtype}")
        return self

    def asset_keys(self, band: str) -> tuple[str, ...]:
        """Asset keys a provider may use for ``band``: the id, in lower case, or its common name."""
        common = self.bands[band].common_name
        return tuple(dict.fromkeys(k for k in (band, band.lower(), common) if k))


@cache
def collection_profiles() -> dict[str, CollectionProfile]:
    """All profiles by name."""
    profiles = {}
    for path in sorted(files("eo_etl.sources").joinpath("profiles").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            profile = CollectionProfile.model_validate(yaml.safe_load(path.read_text()))
            profiles[profile.name] = profile
    return profiles


def find_profile(name: str) -> CollectionProfile | None:
    """The profile called ``name`` or aliased so; None when there is none."""
    profiles = collection_profiles()
    if name in profiles:
        return profiles[name]
    return next((p for p in profiles.values() if name in p.aliases), None)
