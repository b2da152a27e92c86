"""Settings of the multi-label recipe (``--task multilabel``)."""

from __future__ import annotations

from dataclasses import dataclass

from scilm.errors import ScilmError, name
from scilm.training.settings import ProteinRecipeSettings, setting


@dataclass
class Config(ProteinRecipeSettings):
    """Fine-tune a protein LM to predict a set of labels per protein (DeepLoc-2's locations: one or more)."""

    task: str = setting("multilabel", "What to train (this recipe: multilabel).")
    label_columns: str | None = setting(None, "Comma-separated table columns of 0/1 labels, e.g. "
                                              "'Nucleus,Cytoplasm' (none: the DeepLoc-2 location columns the "
                                              "training table has).")

    @property
    def label_column_list(self) -> list[str] | None:
        """``label_columns`` as a list of column names (None: not given, the DeepLoc-2 location columns)."""
        if self.label_columns is None:
            return None
        return [column.strip() for column in self.label_columns.split(",")]

    def check_recipe(self) -> None:
        if self.task != "multilabel":
            raise ScilmError(f"{name('task')} {self.task!r}: this recipe trains multilabel")
        columns = self.label_column_list
        if columns is None:
            return
        if any(not column for column in columns):
            raise ScilmError(f"{name('label_columns')} {self.label_columns!r}: an empty column name")
        repeated = sorted({column for column in columns if columns.count(column) > 1})
        if repeated:
            raise ScilmError(f"{name('label_columns')}: {', '.join(map(repr, repeated))} given more than once")
        if any(";" in column for column in columns):  # predict joins the predicted labels with ';'
            raise ScilmError(f"{name('label_columns')}: a column name with ';' cannot be told apart in predictions")
        if len(columns) < 2:
            raise ScilmError(f"{name('label_columns')} {self.label_columns!r}: a multi-label task needs at least "
                             f"two label columns (one 0/1 column is the membrane task's {name('label_column')})")
