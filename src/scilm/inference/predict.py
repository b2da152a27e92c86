"""Class probabilities for proteins from a trained classifier, batched by length."""

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
    results: list[dict[str, float]] = [{} for _ in sequences]
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        encoded = encode_proteins(tokenizer, [sequences[i] for i in batch]).to(device)
        probabilities = model(**encoded).logits.float().softmax(dim=-1).cpu()  # (B, num_labels)
        for row, i in enumerate(batch):
            results[i] = dict(zip(labels, probabilities[row].tolist()))
    return results


def write_predictions(records: list[ProteinRecord], probabilities: list[dict[str, float]], out: Path,
                      inputs: tuple = ()) -> None:
    """CSV: id, predicted_label, probability per class (``prob_<label>``), written whole or not at all.

    One row per record, in input order: a repeated id gets one row per occurrence. Raises
    ScilmError when ``out`` is a directory or one of ``inputs`` (see :func:`scilm.io.atomic_output`).
    """
    labels = list(probabilities[0]) if probabilities else []
    with atomic_output(out, inputs) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "predicted_label", *[f"prob_{label}" for label in labels]])
        for record, probs in zip(records, probabilities, strict=True):
            best = max(probs, key=probs.get)
            writer.writerow([record.id, best, *[f"{probs[label]:.6f}" for label in labels]])
