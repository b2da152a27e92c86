"""Training recipes: one folder each (``config.py``: its typed settings; ``recipe.py``: ``run``).

The registry (:data:`RECIPES`) names them; ``scilm train --task NAME`` runs one. Adding a recipe is
one folder plus one line in :mod:`scilm.training.recipes.registry`.
"""

from scilm.training.recipes.registry import RECIPES, Recipe, recipe_for

__all__ = ["RECIPES", "Recipe", "recipe_for"]
