"""Classification and regression metrics (scikit-learn, scipy) and the measurement of peak memory."""

from __future__ import annotations

import resource
import sys
from collections import Counter

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy, F1 (positive class if binary, macro otherwise), MCC and, for binary, AUROC."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    predictions = logits.argmax(axis=-1)
    binary = logits.shape[-1] == 2
    metrics = {
        "accuracy": accuracy_score(labels, predictions),
        "f1": f1_score(labels, predictions, average="binary" if binary else "macro", zero_division=0),
        "mcc": matthews_corrcoef(labels, predictions),
    }
    if binary and len(np.unique(labels)) == 2:
        # rank by the logit gap: softmax(..)[:, 1] rounds to exactly 1.0 in float32 past a gap of ~17,
        # which ties confident predictions and lowers AUROC (same order, no rounding)
        scores = logits[:, 1].astype(np.float64) - logits[:, 0].astype(np.float64)
        metrics["auroc"] = roc_auc_score(labels, scores)
    return {name: float(value) for name, value in metrics.items()}


def regression_metrics(predicted: np.ndarray, observed: np.ndarray, train_mean: float | None) -> dict[str, float]:
    """Spearman and Pearson (scipy), MSE and R^2 (scikit-learn) of (N,) predictions against (N,) observations,
    in their own units, and (unless ``train_mean`` is None) ``baseline_mse``: the MSE of always predicting
    the training mean. Constant predictions have no correlation: reported as 0."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error, r2_score

    constant = float(np.std(predicted)) == 0.0  # correlation undefined: report 0, not NaN
    return {
        "spearman": 0.0 if constant else float(spearmanr(predicted, observed).statistic),
        "pearson": 0.0 if constant else float(pearsonr(predicted, observed).statistic),
        "mse": float(mean_squared_error(observed, predicted)),
        "r2": float(r2_score(observed, predicted)),
    } | ({} if train_mean is None else
         {"baseline_mse": float(mean_squared_error(observed, np.full_like(observed, train_mean)))})



def target_stats(y: np.ndarray) -> dict[str, float]:
    """n, mean, population sd, min and max of (N,) regression targets (a split's, in metrics.json)."""
    return {"n": len(y), "mean": float(np.mean(y)), "std": float(np.std(y)), "min": float(np.min(y)),
            "max": float(np.max(y))}


def class_counts(labels: list, names: list[str]) -> dict[str, int]:
    """Records per class, every class of ``names`` (the model's order) included, zeros too."""
    found = Counter(labels)
    return {label: int(found[label]) for label in names}


def reset_peak_memory() -> None:
    """Restart the peak-memory counters (CUDA's; on CPU the process's peak RSS cannot be reset)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[float, str]:
    """(peak MB, how it was measured): CUDA max allocated on a GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return peak / scale, "process_peak_rss"
