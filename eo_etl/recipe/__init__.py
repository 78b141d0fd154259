"""Dataset recipes: the pydantic models and the loader that turns YAML into a validated recipe."""

from eo_etl.recipe.load import RecipeError, load_recipe, parse_recipe
from eo_etl.recipe.models import Recipe, Source

__all__ = ["Recipe", "RecipeError", "Source", "load_recipe", "parse_recipe"]
