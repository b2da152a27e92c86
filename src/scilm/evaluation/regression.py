"""Evaluation of a regression model (``--task regression``): one number per protein.

Metrics in the targets' own units (the model's standardisation undone by ``scilm predict``'s output
function): Spearman (``spearman``) and Pearson (scipy), MSE and R^2 (scikit-learn), the one
definition training reports (:func:`scilm.training.metrics.regression_metrics`), with the data's
target statistics. The PNG is a scatter of predicted against observed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scilm.data import protein as pdata
from scilm.errors import ScilmError, name
from scilm.evaluation.protein import EvaluationData, ProteinEvaluation


def target_name(config) -> str:
    """The model's one target (its ``id2label``: the training label column, e.g. ``target``)."""
    if config.num_labels != 1:
        raise ScilmError(f"{name('model')}: a regression model with {config.num_labels} outputs; scilm evaluate "
                         "scores one target per protein")
    return config.id2label[0]


class Regression(ProteinEvaluation):
    """One number per protein: ``targets`` are (N,) float64 observations."""

    plot_file = "scatter.png"

    def read(self, data: EvaluationData, config, counts):
        from scilm.training.recipes.regression.recipe import parse_targets

        column = data.label_column or target_name(config)
        records = pdata.read_proteins(data.path, task=None, sequence_column=data.sequence_column, label_column=column,
                                      id_column=data.id_column, unique_ids=False, counts=counts)
        return records, parse_targets(records, data.path, column)

    def metrics(self, outputs, targets: np.ndarray, config) -> dict[str, Any]:
        from scilm.training.metrics import regression_metrics, target_stats

        target = target_name(config)
        predicted = np.array([row[target] for row in outputs], dtype=np.float64)
        return {**regression_metrics(predicted, targets, None), "target": {"name": target, **target_stats(targets)}}

    def prediction_table(self, records, outputs, targets):
        (target,) = list(outputs[0]) if outputs else [""]
        rows = [[record.id, repr(float(y)), repr(float(values[target]))]
                for record, values, y in zip(records, outputs, targets, strict=True)]
        return ["id", "observed", "predicted"], rows

    def plot(self, metrics, outputs, targets, config, path: Path) -> None:
        """Predicted (x) against observed (y), the identity line dashed."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        target = metrics["target"]["name"]
        predicted = np.array([row[target] for row in outputs], dtype=np.float64)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(predicted, targets, s=8, alpha=0.5, linewidths=0)
        low, high = float(min(predicted.min(), targets.min())), float(max(predicted.max(), targets.max()))
        ax.plot([low, high], [low, high], "k--", linewidth=0.8)
        ax.set_xlabel(f"predicted {target}")
        ax.set_ylabel(f"observed {target}")
        ax.set_title(f"n={metrics['n']}, Spearman {metrics['spearman']:.3f}, Pearson {metrics['pearson']:.3f}, "
                     f"R² {metrics['r2']:.3f}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)
