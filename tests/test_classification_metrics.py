"""Classification metrics on fixed vectors: equal to scikit-learn's and to hand counts, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

from scilm.training.metrics import classification_metrics


def binary_logits(margins: list[float]) -> np.ndarray:
    """(N, 2) float32 logits whose positive-minus-negative margin is ``margins``, as the Trainer passes them."""
    return np.stack([np.zeros(len(margins)), np.asarray(margins)], axis=1).astype(np.float32)


def auroc_by_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney: share of (positive, negative) pairs ranked right, ties counted one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def binary_by_hand(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    tp = int(((predictions == 1) & (labels == 1)).sum())
    tn = int(((predictions == 0) & (labels == 0)).sum())
    fp = int(((predictions == 1) & (labels == 0)).sum())
    fn = int(((predictions == 0) & (labels == 1)).sum())
    denominator = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return {"accuracy": (tp + tn) / len(labels),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
            "mcc": (tp * tn - fp * fn) / denominator if denominator else 0.0}


BINARY_CASES = {
    # margins (positive logit minus negative logit) and labels
    "mixed": ([2.0, -1.0, 0.5, -0.2, 3.0, -2.5, 0.1, -0.1], [1, 0, 0, 1, 1, 0, 1, 0]),
    "one class never predicted": ([-1.0, -2.0, -0.5, -3.0, -0.1], [1, 0, 1, 0, 0]),
    "every prediction positive": ([1.0, 2.0, 0.5, 3.0], [1, 0, 1, 0]),
    "tied scores across classes": ([0.5, 0.5, 0.5, -1.0, 2.0, 2.0], [1, 0, 0, 0, 1, 0]),
    "equal logits predict class 0": ([0.0, 0.0, 1.0, -1.0], [1, 0, 1, 0]),
}


@pytest.mark.parametrize("case", BINARY_CASES)
def test_binary_metrics_equal_sklearn_and_hand_counts(case):
    margins, labels = BINARY_CASES[case]
    labels = np.asarray(labels)
    logits = binary_logits(margins)
    predictions = logits.argmax(axis=-1)  # ties go to the first class, as torch.argmax and sklearn do
    ours = classification_metrics(logits, labels)
    assert set(ours) == {"accuracy", "f1", "mcc", "auroc"}
    assert all(type(value) is float for value in ours.values())
    reference = {"accuracy": accuracy_score(labels, predictions), "f1": f1_score(labels, predictions, zero_division=0),
                 "mcc": matthews_corrcoef(labels, predictions),
                 "auroc": roc_auc_score(labels, np.asarray(margins))}
    hand = {**binary_by_hand(labels, predictions), "auroc": auroc_by_pairs(labels, np.asarray(margins))}
    for name in reference:
        assert ours[name] == pytest.approx(reference[name], abs=1e-12), name
        assert ours[name] == pytest.approx(hand[name], abs=1e-12), name


def test_pinned_binary_values():
    margins, labels = BINARY_CASES["mixed"]
    ours = classification_metrics(binary_logits(margins), np.asarray(labels))
    # predictions 1 0 1 0 1 0 1 0 against labels 1 0 0 1 1 0 1 0: tp 3, tn 3, fp 1, fn 1
    assert ours["accuracy"] == 0.75 and ours["f1"] == 0.75 and ours["mcc"] == pytest.approx(0.5)
    # 3 of 16 (positive, negative) pairs ranked wrong: -0.2 < 0.5, -0.2 < -0.1, 0.1 < 0.5
    assert ours["auroc"] == pytest.approx(13 / 16)


def test_one_class_never_predicted_gives_zero_f1_and_mcc():
    margins, labels = BINARY_CASES["one class never predicted"]
    ours = classification_metrics(binary_logits(margins), np.asarray(labels))
    assert ours["f1"] == 0.0 and ours["mcc"] == 0.0 and ours["accuracy"] == 0.6


def test_single_class_labels_have_no_auroc():
    ours = classification_metrics(binary_logits([0.3, -0.2, 1.0]), np.array([1, 1, 1]))
    assert "auroc" not in ours and ours["accuracy"] == pytest.approx(2 / 3)


def test_auroc_is_not_changed_by_saturated_probabilities():
    margins, labels = [40.0, 30.0, 50.0, 20.0, -1.0], np.array([1, 0, 1, 0, 0])
    assert classification_metrics(binary_logits(margins), labels)["auroc"] == 1.0  # a perfect ranking


def test_multiclass_metrics_equal_sklearn_with_a_class_absent():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 10)).astype(np.float32)
    logits[:, 7] -= 100  # class 7 is never predicted
    labels = rng.integers(0, 10, size=40)
    labels[labels == 9] = 8  # class 9 never occurs in the labels
    predictions = logits.argmax(axis=-1)
    ours = classification_metrics(logits, labels)
    assert set(ours) == {"accuracy", "f1", "mcc"}
    assert ours["accuracy"] == pytest.approx(float((predictions == labels).mean()), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0), abs=1e-12)
    assert ours["mcc"] == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-12)
    # macro F1 averages over the classes seen in labels or predictions: class 7 counts as 0, class 9 only
    # if predicted
    seen = sorted(set(labels) | set(predictions))
    per_class = [binary_by_hand((labels == c).astype(int), (predictions == c).astype(int))["f1"] for c in seen]
    assert ours["f1"] == pytest.approx(np.mean(per_class), abs=1e-12)
