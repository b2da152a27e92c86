"""Per-protein predictions of a trained model, batched by length, streamed from a file: class
probabilities, or the predicted number of a regression model (in the targets' own units)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from scilm.data.protein import ProteinRecord, iter_proteins
from scilm.errors import ScilmError
from scilm.inference.batching import chunked, encode_proteins, inference_batches
from scilm.inference.policy import ResiduePolicy, cuts, model_policy, split
from scilm.inference.progress import progress_bar
from scilm.io import atomic_output
from scilm.models.cls_only import cls_only_last_layer
from scilm.models.protein import is_per_residue

log = logging.getLogger(__name__)

PREDICT_CHUNK = 1024  # records read, predicted and written at a time


@torch.inference_mode()
def predict_proteins(
    model, tokenizer, sequences: list[str], batch_size: int = 32, truncate: int | None = None, *,
    policy: ResiduePolicy | None = None,
) -> list[dict[str, float]]:
    """For each sequence, ``{label: value}`` in input order: softmax probabilities over all classes,
    sigmoid ones for a multi-label model, the predicted number for a regression model (see
    :func:`output_function`).

    ``sequences`` are validated residues (:func:`scilm.data.protein.normalize_sequence`). ``policy``
    chooses the residues fed (:mod:`scilm.inference.policy`); by default the model's training policy
    (``head`` when none is recorded) at ``truncate`` residues, by default the length the model was
    trained with (:func:`scilm.models.protein.max_residues`).
    A protein fed in several windows (``window``) gets the output of the mean of its windows' logits
    (:func:`policy_logits`). The result does not depend on ``batch_size`` or on the order of
    ``sequences`` (padding is masked), beyond float rounding.
    """
    if is_per_residue(model.config):  # (B, T, C) logits: one row per protein would be wrong
        raise ScilmError("this is a per-residue model (--task residue): its predictions are labels per residue "
                         "(scilm.inference.residue.predict_residues)")
    if policy is None:
        policy = model_policy(model.config, tokenizer, truncate=truncate)  # the model's policy, else head
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    outputs = output_function(model.config)(policy_logits(model, tokenizer, sequences, policy, batch_size))
    return [dict(zip(labels, row)) for row in outputs.tolist()]


@torch.inference_mode()
def policy_logits(model, tokenizer, sequences: list[str], policy: ResiduePolicy, batch_size: int | None = 32,
                  control=None) -> torch.Tensor:
    """Logits (N, num_labels) float32 of ``sequences`` under a long-protein ``policy``: each piece fed
    (:func:`scilm.inference.policy.split`) is run once, and a protein's logits are the mean of its
    pieces' logits (one piece: its logits unchanged; ``window``: the mean over its windows, before
    softmax/sigmoid/unscaling, so a regression model's value is the mean of the windows' values).

    Pieces run in :func:`scilm.inference.batching.inference_batches` of at most ``batch_size`` (None: no
    count bound). ``control`` (a server's, with ``check()``) is checked before each forward. A model in a
    reduced precision with an :class:`~scilm.inference.precision.Fp32Fallback` answers fp32's logits for
    the proteins whose mean logits lie near a decision boundary (:func:`~scilm.inference.precision
    .fp32_near_boundary`), so its predicted labels are fp32's. The one path of ``predict`` and the server.
    """
    from scilm.inference.precision import fp32_near_boundary

    device = next(model.parameters()).device
    owners: list[int] = []
    fed: list[str] = []
    for i, sequence in enumerate(sequences):
        strings, _ = split(policy, sequence)
        owners.extend([i] * len(strings))
        fed.extend(strings)
    total = torch.zeros(len(sequences), model.config.num_labels, dtype=torch.float64)
    count = torch.zeros(len(sequences), dtype=torch.float64)
    for batch in inference_batches([len(s) for s in fed], batch_size, device):
        if control is not None:
            control.check()
        encoded = encode_proteins(tokenizer, [fed[i] for i in batch]).to(device)
        with cls_only_last_layer(model):  # logits alone are read: the last layer at <cls> only
            logits = model(**encoded).logits.float().cpu()  # (B, num_labels)
        index = torch.tensor([owners[i] for i in batch])
        total.index_add_(0, index, logits.double())
        count.index_add_(0, index, torch.ones(len(batch), dtype=torch.float64))
    logits = (total / count.clamp(min=1)[:, None]).float()
    return fp32_near_boundary(model, logits, lambda reference, rows: policy_logits(
        reference, tokenizer, [sequences[i] for i in rows], policy, batch_size, control))


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


def multilabel_thresholds(config) -> dict[str, float] | None:
    """A multi-label model's decision threshold per label: ``scilm_thresholds`` saved by the multilabel
    recipe (tuned on validation), else 0.5 each; None for any other model."""
    if getattr(config, "problem_type", None) != "multi_label_classification":
        return None
    saved = getattr(config, "scilm_thresholds", None) or {}
    return {label: float(saved.get(label, 0.5)) for label in config.id2label.values()}


def _header(labels: list[str], regression: bool, thresholds: dict[str, float] | None = None) -> list[str]:
    if regression:  # one column per target, named as in training (e.g. target)
        return ["id", *labels]
    if thresholds is not None:
        return ["id", "predicted_labels", *[f"prob_{label}" for label in labels]]
    return ["id", "predicted_label", *[f"prob_{label}" for label in labels]]


def _row(record_id: str, values: dict[str, float], labels: list[str], regression: bool,
         thresholds: dict[str, float] | None = None) -> list[str]:
    if regression:  # full precision: a regression value is the answer, not a rounded display
        return [record_id, *[repr(float(values[label])) for label in labels]]
    if thresholds is not None:  # full precision: the set can be recomputed from the probabilities exactly
        chosen = ";".join(label for label in labels if values[label] >= thresholds[label])
        return [record_id, chosen, *[repr(float(values[label])) for label in labels]]
    best = max(values, key=values.get)
    return [record_id, best, *[f"{values[label]:.6f}" for label in labels]]


def write_predictions(records: list[ProteinRecord], probabilities: list[dict[str, float]], out: Path,
                      inputs: tuple = (), regression: bool = False,
                      thresholds: dict[str, float] | None = None) -> None:
    """CSV: id, predicted_label, probability per class (``prob_<label>``), written whole or not at all;
    for a regression model (``regression``) id and the predicted value per target, full precision; for a
    multi-label model (``thresholds``: :func:`multilabel_thresholds`) id, ``predicted_labels`` (every label
    whose probability is at least its threshold, joined by ``;``, empty for none) and each label's
    sigmoid probability, full precision (the set can be recomputed from them exactly).

    One row per record, in input order: a repeated id gets one row per occurrence. Raises
    ScilmError when ``out`` is a directory or one of ``inputs`` (see :func:`scilm.io.atomic_output`).
    """
    labels = list(probabilities[0]) if probabilities else []
    with atomic_output(out, inputs) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_header(labels, regression, thresholds))
        for record, probs in zip(records, probabilities, strict=True):
            writer.writerow(_row(record.id, probs, labels, regression, thresholds))


def predict_file(model, tokenizer, data: str | Path, out: str | Path, *, policy: ResiduePolicy,
                 batch_size: int = 32, sequence_column: str = "Sequence", id_column: str | None = None,
                 progress: bool = True, n_records: int | None = None) -> tuple[int, int]:
    """:func:`predict_proteins` over a file of any size, into the CSV of :func:`write_predictions`
    (the regression layout for a regression model).

    Records are read, predicted and written :data:`PREDICT_CHUNK` at a time (memory does not grow
    with the file); ``out`` appears whole at the end, or not at all. A progress bar (proteins/s,
    stderr, TTY only) runs unless ``progress`` is False; ``n_records`` is its total. Returns
    (records written, [(0-based row, id) of each record ``policy`` did not feed whole]). Raises
    ScilmError for bad input or output.
    """
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    regression, thresholds = is_regression(model.config), multilabel_thresholds(model.config)
    n = 0
    cut: list[tuple[int, str]] = []
    with atomic_output(out, [data]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle, \
            progress_bar(n_records, "predict", progress) as bar:
        writer = csv.writer(handle)
        writer.writerow(_header(labels, regression, thresholds))
        for chunk in chunked(iter_proteins(data, sequence_column, id_column), PREDICT_CHUNK):
            cut.extend((n + k, r.id) for k, r in enumerate(chunk) if cuts(policy, r.sequence))
            probabilities = predict_proteins(model, tokenizer, [r.sequence for r in chunk], batch_size, policy=policy)
            writer.writerows(_row(r.id, p, labels, regression, thresholds) for r, p in zip(chunk, probabilities, strict=True))
            n += len(chunk)
            bar.update(len(chunk))
    return n, cut
