"""DeepLoc 2.0's multi-label metrics and its per-label decision thresholds, on scikit-learn.

Source: DeepLoc 2.0 (Thumuluri et al., NAR 2022, doi:10.1093/nar/gkac278) and its code
(github.com/TviNet/DeepLoc-2.0, ``src/metrics.py``: ``calculate_sl_metrics_fold`` reports the
exact-set accuracy, Jaccard (``average="samples"``), micro and macro F1 and one MCC per location;
``get_best_threshold_mcc`` picks each location's threshold that maximises its MCC on validation).
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_THRESHOLD = 0.5  # a label whose MCC cannot be tuned (no positive or no negative) keeps it


def multilabel_metrics(predicted: np.ndarray, truth: np.ndarray, labels: list[str]) -> dict[str, float]:
    """DeepLoc 2.0's metrics of 0/1 predictions (N, C) against 0/1 truth (N, C), labels naming the C columns.

    ``subset_accuracy``: share of proteins whose predicted set equals the true set (scikit-learn's
    ``accuracy_score`` on indicator arrays); ``jaccard``: mean over proteins of |P & T| / |P | T|
    (``jaccard_score(average="samples")``; a protein with no true and no predicted label scores 1);
    ``micro_f1``/``macro_f1`` (a label never true nor predicted has F1 0 in the macro mean, scikit-learn's
    default); ``mcc_<label>`` per label (0 when undefined, as scikit-learn). All floats.
    """
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score, matthews_corrcoef

    predicted, truth = np.asarray(predicted, dtype=int), np.asarray(truth, dtype=int)
    metrics = {
        "subset_accuracy": accuracy_score(truth, predicted),
        "jaccard": jaccard_score(truth, predicted, average="samples", zero_division=1.0),
        "micro_f1": f1_score(truth, predicted, average="micro", zero_division=0.0),
        "macro_f1": f1_score(truth, predicted, average="macro", zero_division=0.0),
    }
    with warnings.catch_warnings():  # a label all 0 in truth and prediction: MCC 0 (scikit-learn's value; its warning is noise)
        warnings.simplefilter("ignore", UserWarning)
        for j, label in enumerate(labels):
            metrics[f"mcc_{label}"] = matthews_corrcoef(truth[:, j], predicted[:, j])
    return {key: float(value) for key, value in metrics.items()}


def _mcc(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Matthews correlation of confusion counts (arrays of one shape); 0 where undefined, as scikit-learn."""
    tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), 0.0)


def best_mcc_threshold(probabilities: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    """(threshold, tuned) for one label: predicting ``p >= threshold`` maximises the MCC on (N,) probabilities
    against (N,) 0/1 truth (DeepLoc 2.0's rule, ``get_best_threshold_mcc``).

    Candidates are the midpoints between consecutive distinct probabilities (and all / none positive), so
    the decision does not hinge on float rounding at a probability; among equally good ones the closest
    to 0.5 wins. Without a positive or a negative the MCC is undefined: ``(0.5, False)``.
    """
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(truth, dtype=int)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return DEFAULT_THRESHOLD, False
    values = np.unique(p)
    # all positive, each midpoint, none positive (just above the largest: a probability may be exactly 1)
    candidates = np.concatenate([values[:1], (values[:-1] + values[1:]) / 2, [np.nextafter(values[-1], np.inf)]])
    # predicted positive for candidate k: every probability >= candidates[k]
    order = np.sort(p)
    above = len(p) - np.searchsorted(order, candidates, side="left")
    positive_p = np.sort(p[y == 1])
    tp = positives - np.searchsorted(positive_p, candidates, side="left")
    fp = above - tp
    fn = positives - tp
    tn = len(p) - positives - fp
    mcc = _mcc(tp, fp, fn, tn)
    best = np.flatnonzero(mcc >= mcc.max() - 1e-12)
    chosen = best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]
    return float(candidates[chosen]), True


def tune_thresholds(probabilities: np.ndarray, truth: np.ndarray, labels: list[str]) -> tuple[dict[str, float],
                                                                                              list[str]]:
    """({label: threshold}, labels left at 0.5 because validation has no positive or no negative) for
    (N, C) probabilities and (N, C) 0/1 truth: :func:`best_mcc_threshold` per label."""
    thresholds, untuned = {}, []
    for j, label in enumerate(labels):
        thresholds[label], tuned = best_mcc_threshold(probabilities[:, j], truth[:, j])
        if not tuned:
            untuned.append(label)
    return thresholds, untuned


def apply_thresholds(probabilities: np.ndarray, thresholds: list[float] | np.ndarray) -> np.ndarray:
    """(N, C) 0/1 predictions: ``probability >= threshold`` per label (C,) (the rule predict applies)."""
    return (np.asarray(probabilities, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)).astype(int)


def most_frequent_set(truth: np.ndarray) -> np.ndarray:
    """(C,) the label set (0/1 row) most frequent among the (N, C) training rows; ties: the first seen."""
    rows, first, counts = np.unique(np.asarray(truth, dtype=int), axis=0, return_index=True, return_counts=True)
    best = np.flatnonzero(counts == counts.max())
    return rows[best[np.argmin(first[best])]]
