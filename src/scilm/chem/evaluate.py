"""Evaluate predictions of Text+Chem examples, per task, and score them one by one.

Molecule tasks get the molecule metrics, captions the caption metrics, paragraph-to-actions the
action metrics (see :mod:`scilm.chem.metrics`). Invalid SMILES never raise: they are invalid,
score 0 similarity and are counted. Retrosynthesis "roundtrip accuracy" needs a forward model
and is not computed here; its exact match is against the recorded reactants.
"""

from __future__ import annotations

from scilm.chem.metrics import (action_metrics, action_scores, caption_metrics, caption_scores,
                                molecule_metrics, molecule_scores)
from scilm.chem.tasks import MOLECULE_TASKS, TextChemExample
from scilm.errors import ScilmError

OTHER = "other"  # examples whose source has no known prompt: scored like actions (BLEU-2, exact)


def _group(examples: list[TextChemExample], predictions: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    if len(examples) != len(predictions):
        raise ScilmError(f"{len(examples)} examples but {len(predictions)} predictions")
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for example, prediction in zip(examples, predictions):
        targets, preds = groups.setdefault(example.task or OTHER, ([], []))
        targets.append(example.target)
        preds.append(prediction)
    return groups


def task_metrics(task: str, targets: list[str], predictions: list[str]) -> dict:
    """The metric family of ``task`` on aligned targets and predictions."""
    if task in MOLECULE_TASKS:
        return molecule_metrics(targets, predictions)
    if task == "smiles-to-caption":
        return caption_metrics(targets, predictions)
    return action_metrics(targets, predictions)


def evaluate_predictions(examples: list[TextChemExample], predictions: list[str]) -> dict:
    """``{task: {"n": count, metric: value, ...}}`` for every task present, in task order."""
    groups = _group(examples, predictions)
    return {task: {"n": len(targets), **task_metrics(task, targets, preds)}
            for task, (targets, preds) in groups.items()}


def score_example(example: TextChemExample, prediction: str) -> dict:
    """One row of a predictions file: the example, the prediction and its own scores."""
    task = example.task or OTHER
    if task in MOLECULE_TASKS:
        scores = molecule_scores(example.target, prediction)
        scores.pop("similarity_counted")
    elif task == "smiles-to-caption":
        scores = caption_scores(example.target, prediction)
    else:
        scores = action_scores(example.target, prediction)
    return {"task": task, "source": example.source, "target": example.target,
            "prediction": prediction, **scores}


def score_examples(examples: list[TextChemExample], predictions: list[str]) -> list[dict]:
    """Per-example rows (JSON-serialisable) for a predictions file."""
    if len(examples) != len(predictions):
        raise ScilmError(f"{len(examples)} examples but {len(predictions)} predictions")
    return [score_example(e, p) for e, p in zip(examples, predictions)]
