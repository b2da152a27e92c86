"""Settings of the regression recipe (``--task regression``)."""

from __future__ import annotations

from dataclasses import dataclass

from scilm.errors import ScilmError, name
from scilm.training.settings import ProteinRecipeSettings, setting


@dataclass
class Config(ProteinRecipeSettings):
    """Fine-tune a protein LM to predict one number per protein (FLIP GB1 fitness, stability)."""

    task: str = setting("regression", "What to train (this recipe: regression).")
    label_column: str = setting("target", "Table column with the number to predict (FLIP: target).")
    standardize: bool = setting(True, "Train on (y - mean) / sd of the training targets (stored with the model, "
                                      "undone at prediction): the loss is then a scaled MSE whatever the units.")

    def check_recipe(self) -> None:
        if self.task != "regression":
            raise ScilmError(f"{name('task')} {self.task!r}: this recipe trains regression")
