"""Evaluation of a single-label protein classifier (``--task membrane`` / ``localization`` / any label column).

Metrics are scikit-learn's on the predicted class (the highest probability) against the data's
labels, mapped to the model's classes by name (``id2label``): accuracy, macro F1, MCC, per-class
precision/recall/F1 with the counts of each class in the data and among the predictions, the
confusion matrix (rows: data labels, columns: predictions, in the model's class order), and for a
binary model AUROC ranked by log p(positive) - log p(negative) (the logit gap training ranks by;
saturated probabilities would tie). ``f1`` is training's ``eval_f1`` (the positive class for a
binary model, else macro), so an evaluation of the validation file reproduces the run's metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scilm.data import protein as pdata
from scilm.data.textio import data_suffix
from scilm.errors import ScilmError
from scilm.evaluation.protein import EvaluationData, ProteinEvaluation, unknown_label_error


def model_labels(config) -> list[str]:
    """The model's class names in output order (``id2label``)."""
    return [config.id2label[i] for i in range(config.num_labels)]


def probability_matrix(outputs: list[dict[str, float]], labels: list[str]) -> np.ndarray:
    """(N, C) float64 probabilities in the model's class order."""
    return np.array([[row[label] for label in labels] for row in outputs], dtype=np.float64).reshape(-1, len(labels))


class Classification(ProteinEvaluation):
    """One label per protein: ``targets`` are (N,) class indices into the model's labels."""

    plot_file = "confusion_matrix.png"

    def read(self, data: EvaluationData, config, counts):
        labels = model_labels(config)
        membrane, location = set(labels) <= set(pdata.MEMBRANE_LABELS), set(labels) <= set(pdata.LOCALIZATION_LABELS)
        if data_suffix(data.path) in pdata.FASTA_SUFFIXES:  # DeepLoc header codes: membrane or location
            if not (membrane or location):
                raise ScilmError(f"{data.path}: a FASTA file's labels are DeepLoc header codes, but this model's "
                                 f"labels are {', '.join(labels)}; give a table with a label column")
            task, column, field = ("membrane" if membrane else "localization"), data.label_column, "header label"
        elif location and data.label_column is None:  # a DeepLoc-2 table: the one-hot location columns
            task, column, field = "localization", None, "location columns"
        else:
            column = data.label_column or pdata.DEFAULT_LABEL_COLUMN
            task, field = None, f"column {column!r}"
        records = pdata.read_proteins(data.path, task=task, sequence_column=data.sequence_column,
                                      label_column=column, id_column=data.id_column, unique_ids=False, counts=counts)
        index = {label: i for i, label in enumerate(labels)}
        for record in records:
            if record.label not in index:
                raise unknown_label_error(record, data.path, field, labels)
        return records, np.array([index[r.label] for r in records], dtype=np.int64)

    def metrics(self, outputs, targets: np.ndarray, config) -> dict[str, Any]:
        from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

        from scilm.training.metrics import classification_metrics

        labels = model_labels(config)
        probabilities = probability_matrix(outputs, labels)
        # log-probabilities differ from the logits by a per-row constant: the same argmax and logit gap
        scores = np.log(np.maximum(probabilities, np.finfo(np.float64).tiny))
        metrics = classification_metrics(scores, targets)
        predicted = probabilities.argmax(axis=1)
        classes = np.arange(len(labels))
        metrics["f1_macro"] = float(f1_score(targets, predicted, labels=classes, average="macro", zero_division=0))
        precision, recall, f1, support = precision_recall_fscore_support(targets, predicted, labels=classes,
                                                                         zero_division=0)
        metrics["per_class"] = {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "n": int(support[i]), "n_predicted": int((predicted == i).sum())}
            for i, label in enumerate(labels)}
        metrics["counts"] = {label: int(support[i]) for i, label in enumerate(labels)}
        metrics["labels"] = labels
        metrics["confusion_matrix"] = confusion_matrix(targets, predicted, labels=classes).tolist()
        return metrics

    def prediction_table(self, records, outputs, targets):
        labels = list(outputs[0]) if outputs else []
        header = ["id", "label", "predicted_label", *[f"prob_{label}" for label in labels]]
        rows = []
        for record, probs in zip(records, outputs, strict=True):
            best = max(probs, key=probs.get)  # as scilm predict picks it
            rows.append([record.id, record.label, best, *[repr(float(probs[label])) for label in labels]])
        return header, rows

    def plot(self, metrics, outputs, targets, config, path: Path) -> None:
        """The confusion matrix (counts; rows: data labels, columns: predictions) with scikit-learn's display."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import ConfusionMatrixDisplay

        labels = metrics["labels"]
        size = max(4.5, 0.6 * len(labels) + 2.5)
        fig, ax = plt.subplots(figsize=(size, size))
        ConfusionMatrixDisplay(np.array(metrics["confusion_matrix"]), display_labels=labels).plot(
            ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if len(labels) > 3 else "horizontal")
        ax.set_title(f"n={metrics['n']}, accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['f1_macro']:.3f}, "
                     f"MCC {metrics['mcc']:.3f}", fontsize=9)
        ax.set_xlabel("predicted label")
        ax.set_ylabel("data label")
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)
