"""Classification metrics and the measurement of peak memory."""

from __future__ import annotations

import resource
import sys

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
