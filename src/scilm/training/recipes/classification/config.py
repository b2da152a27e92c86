"""Settings of the classification recipe (``--task membrane`` and ``--task localization``)."""

from __future__ import annotations

from dataclasses import dataclass

from scilm.errors import ScilmError, name
from scilm.training.settings import ProteinRecipeSettings, setting

CLASSIFICATION_TASKS = ("membrane", "localization")


@dataclass
class Config(ProteinRecipeSettings):
    """Fine-tune a protein LM to put one label on each protein."""

    label_column: str = setting("Membrane", "Table column with labels (membrane: 0/1 or names; localization "
                                            "reads the ten one-hot location columns instead).")
    class_weights: bool = setting(False, "Class-weighted loss (weights inversely proportional to class "
                                         "frequency).")

    def check_recipe(self) -> None:
        if self.task not in CLASSIFICATION_TASKS:
            raise ScilmError(f"{name('task')} {self.task!r}: this recipe trains {', '.join(CLASSIFICATION_TASKS)}")
