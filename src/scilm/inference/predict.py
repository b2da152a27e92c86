"""Class probabilities for proteins from a trained classifier, batched by length, streamed from a file."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from scilm.data.protein import ProteinRecord, iter_proteins
from scilm.inference.batching import chunked, encode_proteins, length_sorted_batches
from scilm.inference.policy import ResiduePolicy, head_policy
from scilm.inference.progress import progress_bar
from scilm.io import atomic_output
from scilm.models.protein import max_residues

log = logging.getLogger(__name__)

PREDICT_CHUNK = 1024  # records read, predicted and written at a time


@torch.inference_mode()
def predict_proteins(
    model, tokenizer, sequences: list[str], batch_size: int = 32, truncate: int | None = None, *,
    policy: ResiduePolicy | None = None,
) -> list[dict[str, float]]:
    """For each sequence, ``{label: probability}`` (softmax over all classes), in input order.

    ``sequences`` are validated residues (:func:`scilm.data.protein.normalize_sequence`). ``policy``
    chooses the residues fed (:mod:`scilm.inference.policy`); by default the first ``truncate``,
    by default the length the model was trained with (:func:`scilm.models.protein.max_residues`);
    the number cut is logged at DEBUG (the CLI reports it). The result does not depend on
    ``batch_size`` or on the order of ``sequences`` (padding is masked), beyond float rounding.
    """
    if policy is None:
        policy = head_policy(truncate if truncate is not None else max_residues(model.config, tokenizer))
    fed = [policy(s) for s in sequences]
    n_cut = sum(len(f) < len(s) for f, s in zip(fed, sequences))
    if n_cut:
        log.debug("%d of %d sequences cut by %s", n_cut, len(sequences), policy)  # the CLI reports it
    device = next(model.parameters()).device
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    results: list[dict[str, float]] = [{} for _ in fed]
    for batch in length_sorted_batches([len(s) for s in fed], batch_size):
        encoded = encode_proteins(tokenizer, [fed[i] for i in batch]).to(device)
        probabilities = model(**encoded).logits.float().softmax(dim=-1).cpu()  # (B, num_labels)
        for row, i in enumerate(batch):
            results[i] = dict(zip(labels, probabilities[row].tolist()))
    return results


def _header(labels: list[str]) -> list[str]:
    return ["id", "predicted_label", *[f"prob_{label}" for label in labels]]


def _row(record_id: str, probs: dict[str, float], labels: list[str]) -> list[str]:
    best = max(probs, key=probs.get)
    return [record_id, best, *[f"{probs[label]:.6f}" for label in labels]]


def write_predictions(records: list[ProteinRecord], probabilities: list[dict[str, float]], out: Path,
                      inputs: tuple = ()) -> None:
    """CSV: id, predicted_label, probability per class (``prob_<label>``), written whole or not at all.

    One row per record, in input order: a repeated id gets one row per occurrence. Raises
    ScilmError when ``out`` is a directory or one of ``inputs`` (see :func:`scilm.io.atomic_output`).
    """
    labels = list(probabilities[0]) if probabilities else []
    with atomic_output(out, inputs) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_header(labels))
        for record, probs in zip(records, probabilities, strict=True):
            writer.writerow(_row(record.id, probs, labels))


def predict_file(model, tokenizer, data: str | Path, out: str | Path, *, policy: ResiduePolicy,
                 batch_size: int = 32, sequence_column: str = "Sequence", id_column: str | None = None,
                 progress: bool = True, n_records: int | None = None) -> tuple[int, int]:
    """:func:`predict_proteins` over a file of any size, into the CSV of :func:`write_predictions`.

    Records are read, predicted and written :data:`PREDICT_CHUNK` at a time (memory does not grow
    with the file); ``out`` appears whole at the end, or not at all. A progress bar (proteins/s,
    stderr, TTY only) runs unless ``progress`` is False; ``n_records`` is its total. Returns
    (records written, records cut by ``policy``). Raises ScilmError for bad input or output.
    """
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    n = n_cut = 0
    with atomic_output(out, [data]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle, \
            progress_bar(n_records, "predict", progress) as bar:
        writer = csv.writer(handle)
        writer.writerow(_header(labels))
        for chunk in chunked(iter_proteins(data, sequence_column, id_column), PREDICT_CHUNK):
            fed = [policy(r.sequence) for r in chunk]
            n_cut += sum(len(f) < len(r.sequence) for f, r in zip(fed, chunk))
            probabilities = predict_proteins(model, tokenizer, fed, batch_size, policy=lambda s: s)
            writer.writerows(_row(r.id, p, labels) for r, p in zip(chunk, probabilities, strict=True))
            n += len(chunk)
            bar.update(len(chunk))
    return n, n_cut
