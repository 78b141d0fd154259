"""Template captions: sentences filled from a sample's facts, deterministic and offline.

The templates are data (``templates/<version>.yaml`` beside this module, or a file a recipe names): variants
of sentences with ``{word}`` slots. ``words(facts)`` turns the facts into those words (percentages as the
facts hold them, OSM tags as nouns from ``templates/tags.yaml``, names quoted); a sentence whose words the
facts lack is left out, never filled with a guess. Where a sentence offers several phrasings, one is chosen
by the facts' hash, so the same facts give the same bytes on every run and machine.
"""

from __future__ import annotations

import functools
import hashlib
import string
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from eo_etl.captions.facts import facts_hash

WORDS = ("sensor", "date", "month", "year", "season", "place", "town", "country", "cloud_percent", "land_cover",
         "top_class", "top_percent", "osm")  # fmt: skip
MAX_LIST = 4  # items named in one list of land cover or features


class TemplateError(ValueError):
    """A template file that cannot be used: the message names the file and the slot or field."""


@functools.cache
def load_templates(source: str = "v1") -> dict:
    """The templates of a built-in version ("v1") or of a YAML file (a path), checked: every slot a known
    word, with no attribute, index or format spec (a template is data, not code)."""
    builtin = files("eo_etl.captions") / "templates" / f"{source}.yaml"
    path = builtin if builtin.is_file() else Path(source)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise TemplateError(f"captions.template: {source!r} cannot be read ({type(error).__name__})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("variants"), dict) or not spec.get("version"):
        raise TemplateError(f"captions.template: {source!r} needs 'version' and a mapping 'variants'")
    for name, sentences in spec["variants"].items():
        if not isinstance(sentences, list):
            raise TemplateError(f"captions.template: variant {name!r} must be a list of sentences")
        for sentence in sentences:
            for phrasing in sentence if isinstance(sentence, list) else [sentence]:
                for _, field, format_spec, conversion in string.Formatter().parse(str(phrasing)):
                    if field is not None and (field not in WORDS or format_spec or conversion):
                        raise TemplateError(f"captions.template: variant {name!r}: slot {{{field}}} is not one of "
                                            f"{', '.join(WORDS)}")  # fmt: skip
    return spec


@functools.cache
def _tag_nouns() -> dict[str, str]:
    return yaml.safe_load((files("eo_etl.captions") / "templates" / "tags.yaml").read_text())


def noun(tag: str) -> str:
    """What a caption calls an OSM tag: ``natural=water`` → "water", unknown → "farmland landuse"."""
    nouns = _tag_nouns()
    key, _, value = tag.partition("=")
    if tag in nouns or f"{key}=*" in nouns:
        return nouns.get(tag) or nouns[f"{key}=*"]
    return f"{value} {key}".replace("_", " ").strip()


def _listed(items: list[str]) -> str:
    items = items[:MAX_LIST]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _feature_words(feature: Mapping[str, Any]) -> str:
    text = noun(feature["tag"])
    if feature.get("name"):
        text += f' named "{feature["name"]}"'
    amounts = []
    if "percent" in feature:
        amounts.append(f"{feature['percent']}% of the patch")
    if "length_m" in feature:
        amounts.append(f"about {feature['length_m'] / 1000:g} km")
    if "count" in feature:
        amounts.append(f"{feature['count']} mapped")
    if amounts:
        text += f" ({', '.join(amounts)})"
    if feature.get("where"):
        where = feature["where"]
        text += f" {where}" if where == "across the patch" else f" in the {where}"
    return text


def words(facts: Mapping[str, Any]) -> dict[str, str]:
    """The facts as the words templates fill in; a fact that is absent has no word."""
    out: dict[str, str] = {}
    for key in ("sensor", "date", "month", "season"):
        if facts.get(key):
            out[key] = str(facts[key])
    if facts.get("year") is not None:
        out["year"] = str(facts["year"])
    if facts.get("cloud_percent") is not None:
        out["cloud_percent"] = str(facts["cloud_percent"])
    place = facts.get("place") or {}
    if place.get("name"):
        out["town"] = place["name"]
        out["place"] = ", ".join(place[key] for key in ("name", "region", "country") if place.get(key))
    if place.get("country"):
        out["country"] = place["country"]
    classes = facts.get("land_cover") or []
    if classes:
        # class names mid-sentence: "grasslands", not "Grasslands" (the sentence's first letter is raised)
        out["land_cover"] = _listed([f"{item['class'].lower()} ({item['percent']}%)" for item in classes])
        out["top_class"], out["top_percent"] = classes[0]["class"].lower(), str(classes[0]["percent"])
    features = facts.get("osm") or []
    if features:
        out["osm"] = _listed([_feature_words(feature) for feature in features])
    return out


def template_captions(facts: Mapping[str, Any], source: str = "v1") -> list[tuple[str, str]]:
    """(variant, caption) for each variant the facts fill; the same facts give the same bytes."""
    spec = load_templates(source)
    filled = words(facts)
    seed = facts_hash(facts)
    captions = []
    for name, sentences in spec["variants"].items():
        said = []
        for position, sentence in enumerate(sentences):
            phrasings = [p for p in (sentence if isinstance(sentence, list) else [sentence]) if _fillable(p, filled)]
            if phrasings:
                pick = int(hashlib.sha256(f"{seed}:{name}:{position}".encode()).hexdigest(), 16) % len(phrasings)
                text = phrasings[pick].format_map(filled)
                said.append(text[:1].upper() + text[1:])
        if said:
            captions.append((name, " ".join(said)))
    return captions


def _fillable(phrasing: str, filled: Mapping[str, str]) -> bool:
    return all(field in filled for _, field, _, _ in string.Formatter().parse(phrasing) if field is not None)
