"""Class probabilities for proteins from a trained classifier, batched by length."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from scilm.data.protein import ProteinRecord
from scilm.inference.batching import length_sorted_batches


@torch.inference_mode()
def predict_proteins(
    model, tokenizer, sequences: list[str], batch_size: int = 32, truncate: int = 1022
) -> list[dict[str, float]]:
    """For each sequence, ``{label: probability}`` (softmax over all classes), in input order."""
    device = next(model.parameters()).device
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    results: list[dict[str, float]] = [{} for _ in sequences]
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        encoded = tokenizer([sequences[i] for i in batch], padding=True, truncation=True,
                            max_length=truncate + 2, return_tensors="pt").to(device)
        probabilities = model(**encoded).logits.float().softmax(dim=-1).cpu()
        for row, i in enumerate(batch):
            results[i] = dict(zip(labels, probabilities[row].tolist()))
    return results


def write_predictions(records: list[ProteinRecord], probabilities: list[dict[str, float]], out: Path) -> None:
    """CSV: id, predicted_label, probability per class (``prob_<label>``), written atomically."""
    labels = list(probabilities[0]) if probabilities else []
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "predicted_label", *[f"prob_{label}" for label in labels]])
        for record, probs in zip(records, probabilities):
            best = max(probs, key=probs.get)
            writer.writerow([record.id, best, *[f"{probs[label]:.6f}" for label in labels]])
    os.replace(tmp, out)
