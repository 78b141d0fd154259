"""Reading a recipe file: YAML in, a validated :class:`Recipe` out, or one line per problem."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from eo_etl.extras import missing_extras
from eo_etl.recipe.models import Recipe
from eo_etl.text import shown

MAX_RECIPE_BYTES = 16 << 20  # a recipe is a page of YAML; a list of cells may make it a few MB
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when PyYAML has it: ~10× faster

FIELD_PREFIX = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: ")


class RecipeError(ValueError):
    """An invalid recipe. ``problems`` holds one line per problem, each naming the field."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {problem}" for problem in problems))


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate the recipe at ``path`` (YAML, at most 16 MB; relative input paths are relative to
    its folder); raises :class:`RecipeError`, one line per problem, each naming its field."""
    path = Path(path)
    try:
        with path.open("rb") as file:  # read at most the limit: the path may be /dev/zero or a pipe
            raw = file.read(MAX_RECIPE_BYTES + 1)
    except OSError as error:
        raise RecipeError(path, [f"cannot read the recipe: {error.strerror}"]) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(path, [f"the recipe is larger than {MAX_RECIPE_BYTES >> 20} MB; is it a recipe?"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        problem = f"line {line}: not UTF-8 text (byte {raw[error.start]:#04x}); save it as UTF-8"
        raise RecipeError(path, [problem]) from None
    try:
        data = yaml.load(text, Loader=SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(path, [f"{where}not valid YAML: {problem}"]) from None
    return parse_recipe(data, path, base_dir=path.parent)


def parse_recipe(data: object, source: Path | str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe data already read (a mapping); raises :class:`RecipeError`. A setting whose extra is
    not installed (``formats: [zarr, taco]`` without ``eo-etl[taco]``) is a problem too.

    Args:
        data: the recipe as plain data (what YAML or JSON gives).
        source: where it came from, to name in errors.
        base_dir: the folder that relative input paths (``aoi.file``, a local catalogue) are relative to.
    """
    if not isinstance(data, dict):
        raise RecipeError(source, ["a recipe is a YAML mapping of fields (name, aoi, time, sources, …)"])
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise RecipeError(source, [_describe(e) for e in error.errors(include_url=False)]) from None
    missing = missing_extras(recipe)
    if missing:
        raise RecipeError(source, missing)
    return recipe


def parse_section(model: type[BaseModel], data: object, source: str, field: str) -> BaseModel:
    """Validate one recipe section (``field``) on its own, e.g. the runner with a kind from the command line;
    raises :class:`RecipeError`."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = [_describe({**e, "loc": (field, *e["loc"])}) for e in error.errors(include_url=False)]
        raise RecipeError(source, problems) from None


def _describe(error: dict) -> str:
    """One line for one pydantic error: ``field.path[0]: what is wrong (got …)``."""
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    elif error["type"] == "missing":
        message = "required field is missing"
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
        if not isinstance(error.get("input"), (dict, list)):
            message += f" (got {shown(error['input'])})"
    field = _field_path(error["loc"])
    if not field and FIELD_PREFIX.match(message):  # a whole-recipe check that names its own field
        return message
    return f"{field or 'recipe'}: {message}"


def _field_path(loc: tuple) -> str:
    """('sources', 0, 'bands') -> 'sources[0].bands'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
