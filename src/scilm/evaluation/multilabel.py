"""Evaluation of a multi-label protein model (``--task multilabel``): a set of labels per protein.

The data's 0/1 label columns are the model's labels, named as in training (its ``id2label``: e.g.
DeepLoc-2's ``Nucleus``, ``Cytoplasm``); other columns are ignored. A label is predicted when its
sigmoid probability is at least its threshold: the ones tuned in training and saved with the model
(``scilm_thresholds``, what ``scilm predict`` applies), and, for comparison, 0.5 for every label
(``at_0.5``: training's ``eval_*`` metrics). Metrics are DeepLoc 2.0's
(:func:`scilm.training.recipes.multilabel.metrics.multilabel_metrics`: exact-set accuracy, Jaccard,
micro/macro F1, MCC per label), with per-label precision/recall/F1 and confusion counts from
scikit-learn, and the positives per label in the data. The PNG shows per-label F1 at both thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scilm.data import protein as pdata
from scilm.data.textio import data_suffix
from scilm.errors import ScilmError, name
from scilm.evaluation.classification import model_labels, probability_matrix
from scilm.evaluation.protein import EvaluationData, ProteinEvaluation


def label_sets(indicator: np.ndarray, labels: list[str]) -> list[str]:
    """(N, C) 0/1 rows -> the labels of each row joined by ``;`` (empty: none), as predict writes sets."""
    return [";".join(label for label, flag in zip(labels, row) if flag) for row in np.asarray(indicator)]


def _scores(predicted: np.ndarray, truth: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """DeepLoc 2.0's metrics of (N, C) 0/1 ``predicted`` against ``truth`` plus, per label, scikit-learn's
    precision/recall/F1 and the confusion counts (tp, fp, fn, tn)."""
    from sklearn.metrics import (
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    from scilm.training.recipes.multilabel.metrics import multilabel_metrics

    metrics: dict[str, Any] = multilabel_metrics(predicted, truth, labels)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0)
    confusion = multilabel_confusion_matrix(truth, predicted)  # (C, 2, 2): [[tn, fp], [fn, tp]]
    metrics["per_label"] = {
        label: {"precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
                "mcc": metrics[f"mcc_{label}"], "tp": int(confusion[j, 1, 1]), "fp": int(confusion[j, 0, 1]),
                "fn": int(confusion[j, 1, 0]), "tn": int(confusion[j, 0, 0])}
        for j, label in enumerate(labels)}
    return metrics


class MultiLabel(ProteinEvaluation):
    """A set of labels per protein: ``targets`` are (N, C) int 0/1 rows in the model's label order."""

    plot_file = "per_label_f1.png"

    def read(self, data: EvaluationData, config, counts):
        """The records and their (N, C) 0/1 targets; keeps the model's thresholds for :meth:`prediction_table`."""
        from scilm.inference.predict import multilabel_thresholds

        self.labels = labels = model_labels(config)
        self.thresholds = multilabel_thresholds(config)  # {label: threshold}
        if data_suffix(data.path) in pdata.FASTA_SUFFIXES:
            raise ScilmError(f"{data.path}: a multi-label model is evaluated on a CSV/TSV table with its 0/1 label "
                             f"columns ({', '.join(labels)}); this is a FASTA file")
        if data.label_column is not None:
            raise ScilmError(f"{name('label_column')} {data.label_column!r}: a multi-label model reads its 0/1 label "
                             f"columns by their training names ({', '.join(labels)}); give none")
        columns = pdata.table_columns(data.path)
        missing = [label for label in labels if label not in columns]
        if missing:
            raise ScilmError(f"{data.path}: no column {missing[0]!r} (this model's 0/1 label columns, named as in "
                             f"training, are {', '.join(labels)}); columns are: {', '.join(columns)}")
        records = pdata.read_proteins(data.path, task=None, sequence_column=data.sequence_column, label_column=None,
                                      id_column=data.id_column, unique_ids=False, counts=counts,
                                      label_columns=labels)
        return records, np.array([[int(v) for v in r.label.split(",")] for r in records],
                                 dtype=np.int64).reshape(-1, len(labels))

    def metrics(self, outputs, targets: np.ndarray, config) -> dict[str, Any]:
        from scilm.inference.predict import multilabel_thresholds
        from scilm.training.recipes.multilabel.metrics import apply_thresholds

        labels = model_labels(config)
        probabilities = probability_matrix(outputs, labels)
        thresholds = multilabel_thresholds(config)
        predicted = apply_thresholds(probabilities, [thresholds[label] for label in labels])
        at_half = apply_thresholds(probabilities, [0.5] * len(labels))
        return {**_scores(predicted, targets, labels), "thresholds": thresholds,
                "at_0.5": _scores(at_half, targets, labels), "labels": labels,
                "counts": {label: int(n) for label, n in zip(labels, targets.sum(axis=0))},
                "n_predicted": {label: int(n) for label, n in zip(labels, predicted.sum(axis=0))}}

    def prediction_table(self, records, outputs, targets):
        """``id``, the data's ``labels`` (``;``-joined), then ``scilm predict``'s columns for the same model
        (``predicted_labels`` at the saved thresholds, ``prob_<label>`` at full precision)."""
        from scilm.inference.predict import _header, _row

        labels, thresholds = self.labels, self.thresholds
        truth = label_sets(targets, labels)
        header = _header(labels, False, thresholds)
        rows = [[record.id, true, *_row(record.id, values, labels, False, thresholds)[1:]]
                for record, values, true in zip(records, outputs, truth, strict=True)]
        return [header[0], "labels", *header[1:]], rows

    def plot(self, metrics, outputs, targets, config, path: Path) -> None:
        """Per-label F1 bars at the saved thresholds and at 0.5, with each label's positives in the data."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = metrics["labels"]
        x = np.arange(len(labels))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(labels) + 2.5), 4.5))
        ax.bar(x - 0.2, [metrics["per_label"][label]["f1"] for label in labels], 0.4, label="saved thresholds")
        ax.bar(x + 0.2, [metrics["at_0.5"]["per_label"][label]["f1"] for label in labels], 0.4, label="0.5")
        ax.set_xticks(x, [f"{label}\n(n={metrics['counts'][label]})" for label in labels],
                      rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("F1")
        ax.legend(fontsize=8)
        ax.set_title(f"n={metrics['n']}, exact set {metrics['subset_accuracy']:.3f}, micro F1 "
                     f"{metrics['micro_f1']:.3f}, macro F1 {metrics['macro_f1']:.3f}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)
