"""Which evaluation a protein model gets, keyed by its problem type (one line per kind of model).

A model's key is :func:`problem_type_of` its config: ``token_classification`` for a per-residue
model (``*ForTokenClassification``), else ``config.problem_type`` (``regression``,
``multi_label_classification``), else ``single_label_classification``. A value names a
:class:`~scilm.evaluation.protein.ProteinEvaluation` subclass as ``module:Class`` (imported only when used).
"""

from __future__ import annotations

import importlib

from scilm.errors import ScilmError, name

EVALUATIONS: dict[str, str] = {
    "single_label_classification": "scilm.evaluation.classification:Classification",
    "regression": "scilm.evaluation.regression:Regression",
}


def problem_type_of(config) -> str:
    """The registry key of a model's ``config`` (a transformers PretrainedConfig); see the module docstring."""
    if any(arch.endswith("ForTokenClassification") for arch in getattr(config, "architectures", None) or ()):
        return "token_classification"
    return getattr(config, "problem_type", None) or "single_label_classification"


def evaluation_for(config, model: str):
    """An instance of the evaluation registered for ``config``'s problem type.

    Raises ScilmError naming ``model`` and the problem type when none is registered.
    """
    key = problem_type_of(config)
    if key not in EVALUATIONS:
        raise ScilmError(f"{name('model')} {model}: scilm evaluate has no evaluation for problem type {key!r} "
                         f"(it evaluates {', '.join(EVALUATIONS)})")
    module, cls = EVALUATIONS[key].split(":")
    return getattr(importlib.import_module(module), cls)()
