"""Evaluation of a per-residue model (``--task residue``): one label per residue.

The data are read as training reads them (:func:`scilm.data.residue.read_residues`: a table with a
label-string column, default ``label``, and optionally a 0/1 mask column; or a SignalP-6 3-line
FASTA), and every label character must be one of the model's classes. Predictions are
``scilm predict``'s (:func:`scilm.inference.residue.predict_residues`). A residue counts only when
it is scored (mask 1) and predicted (within the residues fed, ``truncate``): masked residues and
residues past the cut never count, as in training; how many were left out is reported.

Metrics are the recipe's (:func:`scilm.training.recipes.residue.recipe.residue_metrics`: accuracy,
macro F1, MCC, per-class F1 on the flattened counted residues; the share of proteins whose every
counted residue is right; for SignalP-6 FASTA the protein type derived from the labels), plus
per-class precision/recall and counts in the data and among the predictions, and the confusion
matrix (rows: data labels, columns: predictions, in the model's class order), drawn as the PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scilm.data.protein import FASTA_SUFFIXES
from scilm.data.textio import data_suffix
from scilm.errors import ScilmError, name
from scilm.evaluation.classification import model_labels
from scilm.evaluation.protein import EvaluationData, ProteinEvaluation
from scilm.training.losses import IGNORE

DEFAULT_LABEL_COLUMN = "label"  # the residue recipe's label_column default


def residue_ids(records, predicted: list[str], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted ids (N, T), data ids (N, T)) padded to the longest record with -100; a data id is -100
    where the residue is masked (mask 0), not predicted (``.``, past the cut) or padding."""
    from scilm.data.residue import NOT_PREDICTED

    index = {label: i for i, label in enumerate(classes)}
    width = max((len(r.sequence) for r in records), default=0)
    truth = np.full((len(records), width), IGNORE, dtype=np.int64)
    guess = np.full((len(records), width), IGNORE, dtype=np.int64)
    for row, (record, labels) in enumerate(zip(records, predicted, strict=True)):
        mask = record.mask or "1" * len(record.label)
        for i, (true, pred, m) in enumerate(zip(record.label, labels, mask, strict=True)):
            if pred != NOT_PREDICTED:
                guess[row, i] = index[pred]
                if m == "1":
                    truth[row, i] = index[true]
    return guess, truth


class Residue(ProteinEvaluation):
    """One label per residue: ``targets`` are the records themselves (labels, masks); ``outputs`` the
    predicted label strings of :func:`~scilm.inference.residue.predict_residues` (``.`` past the cut)."""

    plot_file = "confusion_matrix.png"
    reads_mask = True

    def read(self, data: EvaluationData, config, counts):
        from scilm.data.residue import check_alphabet, read_residues
        from scilm.training.recipes.residue.recipe import SIGNALP_HEADER_TYPES

        if data_suffix(data.path) in FASTA_SUFFIXES:
            given = [key for key in ("label_column", "mask_column") if getattr(data, key) is not None]
            if given:
                raise ScilmError(f"{data.path}: {', '.join(name(key) for key in given)} name table columns, but this "
                                 "is a 3-line FASTA file (header, sequence, labels)")
        records = read_residues(data.path, sequence_column=data.sequence_column,
                                label_column=data.label_column or DEFAULT_LABEL_COLUMN, mask_column=data.mask_column,
                                id_column=data.id_column, counts=counts)
        self.classes = model_labels(config)
        check_alphabet(records, self.classes, data.path)
        self.signal_types = all(r.kind in SIGNALP_HEADER_TYPES for r in records)
        return records, records

    def predict(self, net, tokenizer, sequences, batch_size, truncate) -> list[str]:
        """Per sequence its predicted label string (``scilm predict``'s, ``.`` past ``truncate``)."""
        from scilm.inference.residue import predict_residues

        return predict_residues(net, tokenizer, sequences, batch_size, truncate)

    def metrics(self, outputs: list[str], targets, config) -> dict[str, Any]:
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        from scilm.training.recipes.residue.recipe import residue_metrics

        classes = self.classes
        guess, truth = residue_ids(targets, outputs, classes)
        counted = truth != IGNORE
        if not counted.any():
            raise ScilmError("no residue to score: every residue is masked or past the cut "
                             f"({name('truncate')}); nothing to evaluate")
        metrics: dict[str, Any] = residue_metrics(guess, truth, classes, majority=0, signal_types=self.signal_types)
        del metrics["baseline_accuracy"]  # the training majority is not known here
        y_true, y_pred = truth[counted], guess[counted]
        ids = list(range(len(classes)))
        precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
        n_residues = sum(len(r.sequence) for r in targets)
        masked = sum((r.mask or "").count("0") for r in targets)
        metrics.update(
            labels=classes, n_residues=n_residues, n_scored=int(counted.sum()), n_masked=masked,
            n_scored_not_predicted=n_residues - masked - int(counted.sum()),  # past the cut, mask 1
            n_proteins_scored=int(counted.any(axis=1).sum()),
            counts={label: int(support[i]) for i, label in enumerate(classes)},
            per_class={label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                               "n": int(support[i]), "n_predicted": int((y_pred == i).sum())}
                       for i, label in enumerate(classes)},
            confusion_matrix=confusion_matrix(y_true, y_pred, labels=ids).tolist())
        return metrics

    def prediction_table(self, records, outputs, targets):
        """``scilm predict``'s columns (id, residues, predicted, labels), then the data's ``data_labels``
        and ``mask`` (all 1 when the data have none)."""
        from scilm.data.residue import NOT_PREDICTED

        rows = [[r.id, len(r.sequence), len(labels.rstrip(NOT_PREDICTED)), labels, r.label,
                 r.mask or "1" * len(r.label)] for r, labels in zip(records, outputs, strict=True)]
        return ["id", "residues", "predicted", "labels", "data_labels", "mask"], rows

    def plot(self, metrics, outputs, targets, config, path: Path) -> None:
        """The confusion matrix over residue classes (counted residues; rows: data, columns: predictions)."""
        from scilm.evaluation.classification import draw_confusion

        draw_confusion(metrics["confusion_matrix"], metrics["labels"],
                       f"{metrics['n_scored']} residues of {metrics['n']} proteins: accuracy {metrics['accuracy']:.3f}, "
                       f"macro F1 {metrics['f1']:.3f}, MCC {metrics['mcc']:.3f}", path)
