"""The ``captions`` stage: several captions per sample, each with its provenance, in ``captions.parquet``.

One row per sample (keyed by ``sample_id`` by the stage mechanism, eo_etl/stages/); captions describe imagery, so
the samples of a label-only source (every band a class map, such as aligned land cover) have none (an empty list,
no facts):

- ``captions``: a list, one entry per caption: ``variant`` (a template variant, or ``llm-<n>``), ``text``
  (null when flagged), ``flag`` (why no text: ``rejected: …`` by the checks), ``model`` ("template" or the
  LLM's name), ``prompt_version`` (the templates' or the prompt's version), ``parameters`` (JSON) and
  ``created`` (UTC time the model answered; null for templates, which hold no clock reading, so two builds
  write the same bytes);
- ``facts``: the facts the captions were made from (canonical JSON), so every caption can be checked;
- ``attribution``: the data a caption names that asks for credit (GeoNames, for the nearest town).

The facts come from the sample's index row and its rows in the earlier stages' tables (``reads``), never
from their modules. LLM captions go through the caption cache (``<dataset>/_build/captions-cache`` unless
``captions.cache`` names another), so a rerun, a resumed build or a new version asks the model only for
facts it has not seen. A caption that could not be had because the service failed past its retries fails
the batch (it is not recorded), after every caption that could be had is cached: a rerun asks only for
the missing ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from eo_etl.captions import place
from eo_etl.captions.cache import CACHE_DIR, CaptionCache
from eo_etl.captions.facts import canonical, make_facts
from eo_etl.captions.llm import CaptionError, LlmCaptioner
from eo_etl.captions.templates import load_templates, template_captions
from eo_etl.pipeline.state import STATE_DIR
from eo_etl.sources.profile import find_profile
from eo_etl.stages.core import Item, Output, Stage
from eo_etl.store.location import Location

TRANSIENT = "transient: "


def facts_of(item: Item, sensors: dict[str, str], with_place: bool) -> dict:
    """The facts of one sample as the stage sees it (its index row, its landcover and osm rows)."""
    row = item.row
    lat, lon = row.get("centre_lat"), row.get("centre_lon")
    town = place.nearest_place(lat, lon) if with_place and lat is not None and lon is not None else None
    return make_facts(row, item.tables.get("landcover"), item.tables.get("osm"), sensor=sensors.get(row["source"]),
                      place=town)  # fmt: skip


def label_sources(recipe) -> set[str]:
    """The recipe's sources that are labels, not imagery: every band a class map (its profile's role ``classes``,
    such as land cover aligned to the imagery). Captions describe imagery, so these samples get none."""
    return {source.name for source in recipe.sources
            if all(find_profile(source.profile).bands[band].role == "classes" for band in source.bands)}  # fmt: skip


def open_captioner(settings, recipe):
    """The stage's function: per batch of samples, their captions (none for a label-only source's samples)."""
    sensors = {source.name: source.collection for source in recipe.sources}
    with_place = settings.place and place.available()
    attribution = place.ATTRIBUTION if with_place else None
    if settings.kind == "template":
        caption = _template_captioner(settings, sensors, with_place, attribution)
    else:
        caption = _model_captioner(settings, recipe, sensors, with_place, attribution)
    labels = label_sources(recipe)

    def imagery_only(items: Sequence[Item]) -> list[Output]:
        imagery = [item for item in items if item.row["source"] not in labels]
        captioned = iter(caption(imagery) if imagery else [])
        return [_uncaptioned() if item.row["source"] in labels else next(captioned) for item in items]

    return imagery_only


def _template_captioner(settings, sensors: dict[str, str], with_place: bool, attribution: str | None):
    """Captions from the recipe's templates: no model, no clock, so two builds write the same bytes."""
    source = settings.template or "v1"
    version = load_templates(source)["version"]  # a bad template file fails here, once, with one line

    def caption(items: Sequence[Item]) -> list[Output]:
        outputs = []
        for item in items:
            facts = facts_of(item, sensors, with_place)
            captions = [
                {"variant": variant, "text": text, "flag": None, "model": "template", "prompt_version": version,
                 "parameters": "{}", "created": None}
                for variant, text in template_captions(facts, source)
            ]  # fmt: skip
            outputs.append(Output(_row(captions, facts, attribution if "place" in facts else None)))
        return outputs

    return caption


def _model_captioner(settings, recipe, sensors: dict[str, str], with_place: bool, attribution: str | None):
    """Captions from a language model (in-process or a service), through the caption cache."""
    folder = Location(settings.cache) if settings.cache else Location.of(recipe.output_path) / STATE_DIR / CACHE_DIR
    if settings.kind == "local":  # in-process on this worker: the RunInference handler, called per batch
        from eo_etl.captions.local import LocalCaptionHandler  # imports Beam: only where captions run locally

        handler = LocalCaptionHandler.from_settings(settings, CaptionCache(folder))
        caption_all = lambda all_facts: [result.inference for result in handler.run_inference(all_facts)]  # noqa: E731
    else:
        caption_all = LlmCaptioner.from_settings(settings, CaptionCache(folder)).caption_all

    def caption(items: Sequence[Item]) -> list[Output]:
        all_facts = [facts_of(item, sensors, with_place) for item in items]
        results = caption_all(all_facts)
        missing = [r for rs in results for r in rs if (r["flag"] or "").startswith(TRANSIENT)]
        if missing:
            raise CaptionError(f"{len(missing)} of {sum(map(len, results))} captions could not be had "
                               f"({missing[0]['flag']}); the others are cached: rerun to ask for the rest")  # fmt: skip
        outputs = []
        for facts, answers in zip(all_facts, results):
            captions = [
                {"variant": f"llm-{number}", "text": answer["caption"], "flag": answer["flag"],
                 "model": answer["model"], "prompt_version": answer["prompt_version"],
                 "parameters": canonical(answer["parameters"]), "created": answer["created"]}
                for number, answer in enumerate(answers)
            ]  # fmt: skip
            outputs.append(Output(_row(captions, facts, attribution if "place" in facts else None)))
        return outputs

    return caption


def _uncaptioned() -> Output:
    """A label-only source's sample: no captions, no facts."""
    return Output({"captions": [], "facts": None, "attribution": None})


def _row(captions: list[dict], facts: dict, attribution: str | None) -> dict:
    return {"captions": captions, "facts": json.dumps(facts, sort_keys=True, ensure_ascii=False),
            "attribution": attribution}  # fmt: skip


CAPTION = pa.struct([
    ("variant", pa.string()), ("text", pa.string()), ("flag", pa.string()), ("model", pa.string()),
    ("prompt_version", pa.string()), ("parameters", pa.string()), ("created", pa.string()),
])  # fmt: skip
STAGE = Stage(
    name="captions",
    group="captions",
    section="captions",
    open=open_captioner,
    columns=pa.schema(
        [
            pa.field("captions", pa.list_(CAPTION)),  # several per sample, each with its provenance
            pa.field("facts", pa.string()),  # JSON: what the captions may say
            pa.field("attribution", pa.string()),  # credit the data named in the captions asks for
        ]
    ),  # fmt: skip
    reads=("landcover", "osm"),  # their tables, never their modules
    version="2",  # 2: no captions for label-only sources
    batch_size=16,  # an LLM batch is seconds to minutes of requests: a small unit of resuming
)
