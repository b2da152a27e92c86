"""Per-residue predictions of a token-classification model (``--task residue``): one label per input residue."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from scilm.data.protein import ProteinRecord
from scilm.data.residue import NOT_PREDICTED
from scilm.errors import ScilmError
from scilm.inference.batching import encode_proteins, inference_batches
from scilm.inference.policy import ResiduePolicy, head_policy
from scilm.io import atomic_output
from scilm.models.protein import max_residues


@torch.inference_mode()
def predict_residues(model, tokenizer, sequences: list[str], batch_size: int = 32,
                     truncate: int | None = None, *, policy: ResiduePolicy | None = None) -> list[str]:
    """For each sequence, its predicted labels: a string of the same length as the sequence, in input order.

    Residue i's label is the argmax of the logits at token i + 1 (after ``<cls>``; ESM-2 has one token
    per residue). ``policy`` chooses the residues fed (:mod:`scilm.inference.policy`; default: the first
    ``truncate``, by default the length the model was trained with, :func:`scilm.models.protein.max_residues`);
    residues it leaves out are marked :data:`~scilm.data.residue.NOT_PREDICTED` (``.``), never guessed.
    Padding is masked, so the result does not depend on ``batch_size`` or on the order of ``sequences``.

    Raises ScilmError for a policy that feeds anything but a head of the sequence (labels would not align).
    """
    if policy is None:
        policy = head_policy(truncate if truncate is not None else max_residues(model.config, tokenizer))
    kept = [policy(s) for s in sequences]
    if any(not s.startswith(k) for s, k in zip(sequences, kept)):
        raise ScilmError(f"per-residue prediction aligns labels to a head of each sequence; policy {policy} "
                         "feeds other residues")
    device = next(model.parameters()).device
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if any(len(label) != 1 or label == NOT_PREDICTED for label in labels):
        raise ScilmError(f"this per-residue model's labels are {', '.join(map(repr, labels))}; a label string "
                         f"needs one character per class, not {NOT_PREDICTED!r} (models of --task residue)")
    results = [""] * len(sequences)
    for batch in inference_batches([len(s) for s in kept], batch_size, device):
        encoded = encode_proteins(tokenizer, [kept[i] for i in batch]).to(device)
        ids = residue_logits(model, encoded).argmax(dim=-1).cpu()  # (B, T)
        for row, i in enumerate(batch):
            predicted = "".join(labels[c] for c in ids[row, 1:len(kept[i]) + 1].tolist())
            results[i] = predicted + NOT_PREDICTED * (len(sequences[i]) - len(kept[i]))
    return results


@torch.inference_mode()
def residue_logits(model, encoded, control=None) -> torch.Tensor:
    """Per-residue logits (B, T, C) float32 of one encoded batch (``input_ids``/``attention_mask`` (B, T)).
    A model in a reduced precision with an :class:`~scilm.inference.precision.Fp32Fallback` answers fp32's
    logits for each protein with a residue near a decision boundary (:func:`~scilm.inference.precision
    .fp32_near_boundary`), so its labels are fp32's. ``control`` (a server's) is checked before that
    second forward. The one forward of ``predict`` and the server."""
    from scilm.inference.precision import fp32_near_boundary

    def rerun(reference, rows: list[int]) -> torch.Tensor:
        if control is not None:
            control.check()
        return reference(**{k: v[rows] for k, v in encoded.items()}).logits.float()

    return fp32_near_boundary(model, model(**encoded).logits.float(), rerun, encoded["attention_mask"])


def write_residue_predictions(records: list[ProteinRecord], predicted: list[str], out: Path,
                              inputs: tuple = ()) -> None:
    """CSV: id, residues (sequence length), predicted (residues the model saw), labels (one per residue,
    ``.`` past the cut), one row per record in input order, written whole or not at all."""
    with atomic_output(out, inputs) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "residues", "predicted", "labels"])
        for record, labels in zip(records, predicted, strict=True):
            writer.writerow([record.id, len(record.sequence), len(labels.rstrip(NOT_PREDICTED)), labels])
