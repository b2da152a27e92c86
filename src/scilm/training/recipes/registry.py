"""Which recipes exist: a name (``--task``), the package holding its ``config.py`` and ``recipe.py``.

A config module only imports dataclasses (the CLI builds its options from every recipe's config at
start-up); a recipe module imports torch and transformers, and is imported only to run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from scilm.errors import ScilmError, name

_PACKAGE = "scilm.training.recipes"


@dataclass(frozen=True)
class Recipe:
    """One trainable task: ``config`` (its settings class) and ``run(config) -> metrics``."""

    name: str
    package: str
    summary: str

    @property
    def config(self) -> type:
        """The recipe's settings dataclass (``<package>.config.Config``)."""
        return importlib.import_module(f"{_PACKAGE}.{self.package}.config").Config

    def run(self, config: Any) -> dict[str, Any]:
        """Train with ``config`` (an instance of :attr:`config`); the metrics written to metrics.json."""
        return importlib.import_module(f"{_PACKAGE}.{self.package}.recipe").run(config)


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("membrane", "classification", "membrane vs soluble, one label per protein (DeepLoc FASTA headers, or "
                                         "a table's Membrane column or any --label-column)"),
    Recipe("localization", "classification", "10 subcellular locations, one label per protein (DeepLoc FASTA "
                                             "headers or a DeepLoc-2 table's one-hot location columns)"),
    Recipe("regression", "regression", "a number per protein (fitness, stability): standardised MSE; "
                                       "Spearman, Pearson, MSE, R^2"),
    Recipe("multilabel", "multilabel", "a set of labels per protein (DeepLoc-2's 0/1 location columns): BCE, "
                                       "per-label MCC-tuned thresholds; exact-set accuracy, Jaccard, F1, MCC"),
    Recipe("residue", "residue", "a label per residue (signal peptides, secondary structure, binding sites): "
                                 "token cross-entropy; accuracy, macro F1, MCC, per-protein"),
    Recipe("seq2seq", "seq2seq", "Text+Chem T5 on source/target JSONL: the five chemistry-language tasks"),
    Recipe("mlm", "mlm", "masked-LM (continued) pre-training of ESM-2 on unlabelled sequences (scilm pretrain)"),
)}


def recipe_for(task: str | None, data: str | None = None) -> Recipe:
    """The recipe for ``task``; without one, seq2seq for JSONL ``data`` and membrane otherwise.

    Raises ScilmError for an unknown task, naming the tasks there are.
    """
    if task is None:
        from scilm.data.textio import data_suffix

        task = "seq2seq" if data and data_suffix(data) == ".jsonl" else "membrane"
    if task not in RECIPES:
        raise ScilmError(f"{name('task')} {task!r} is not a task; the tasks are: {', '.join(RECIPES)}")
    return RECIPES[task]
