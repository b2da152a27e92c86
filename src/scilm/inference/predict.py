"""Per-protein predictions of a trained model, batched by length: class probabilities, or the predicted
number of a regression model (in the targets' own units)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from scilm.data.protein import ProteinRecord
from scilm.inference.batching import encode_proteins, length_sorted_batches
from scilm.io import atomic_output
from scilm.models.protein import max_residues, truncate_sequences

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_proteins(
    model, tokenizer, sequences: list[str], batch_size: int = 32, truncate: int | None = None
) -> list[dict[str, float]]:
    """For each sequence, ``{label: probability}`` (softmax over all classes), in input order.

    ``sequences`` are validated residues (:func:`scilm.data.protein.normalize_sequence`). Each is cut
    to ``truncate`` residues, by default the length the model was trained with
    (:func:`scilm.models.protein.max_residues`); the number cut is logged at DEBUG (the CLI reports
    it). The result does not depend on ``batch_size`` or on the order of ``sequences`` (padding is
    masked), beyond float rounding.
    """
    limit = truncate if truncate is not None else max_residues(model.config, tokenizer)
    sequences, n_cut = truncate_sequences(sequences, limit)
    if n_cut:
        log.debug("%d of %d sequences cut to %d residues", n_cut, len(sequences), limit)  # the CLI reports it
    device = next(model.parameters()).device
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    to_output = output_function(model.config)
    results: list[dict[str, float]] = [{} for _ in sequences]
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        encoded = encode_proteins(tokenizer, [sequences[i] for i in batch]).to(device)
        outputs = to_output(model(**encoded).logits.float()).cpu()  # (B, num_labels)
        for row, i in enumerate(batch):
            results[i] = dict(zip(labels, outputs[row].tolist()))
    return results


def is_regression(config) -> bool:
    """A model trained by the regression recipe (one output per target, ``problem_type: regression``)."""
    return getattr(config, "problem_type", None) == "regression"


def output_function(config):
    """logits (B, C) -> what predict reports: softmax probabilities, sigmoid ones for a multi-label model,
    or for a regression model the output in the targets' units (the training standardisation undone:
    ``y = output * scilm_target_std + scilm_target_mean``)."""
    if is_regression(config):
        mean, std = getattr(config, "scilm_target_mean", 0.0), getattr(config, "scilm_target_std", 1.0)
        return lambda logits: logits * std + mean
    if getattr(config, "problem_type", None) == "multi_label_classification":
        return torch.sigmoid
    return lambda logits: logits.softmax(dim=-1)


def write_predictions(records: list[ProteinRecord], probabilities: list[dict[str, float]], out: Path,
                      inputs: tuple = (), regression: bool = False) -> None:
    """CSV: id, predicted_label, probability per class (``prob_<label>``), written whole or not at all;
    for a regression model (``regression``) id and the predicted value per target, full precision.

    One row per record, in input order: a repeated id gets one row per occurrence. Raises
    ScilmError when ``out`` is a directory or one of ``inputs`` (see :func:`scilm.io.atomic_output`).
    """
    labels = list(probabilities[0]) if probabilities else []
    with atomic_output(out, inputs) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if regression:  # one column per target, named as in training (e.g. target)
            writer.writerow(["id", *labels])
            for record, values in zip(records, probabilities, strict=True):
                writer.writerow([record.id, *[repr(float(values[label])) for label in labels]])
            return
        writer.writerow(["id", "predicted_label", *[f"prob_{label}" for label in labels]])
        for record, probs in zip(records, probabilities, strict=True):
            best = max(probs, key=probs.get)
            writer.writerow([record.id, best, *[f"{probs[label]:.6f}" for label in labels]])
