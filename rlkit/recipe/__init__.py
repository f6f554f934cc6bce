"""Recipes: the typed schema (:mod:`.schema`) and YAML loading with overrides (:mod:`.loader`)."""

from rlkit.recipe.loader import RecipeError, load_recipe
from rlkit.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe"]
