"""Recipe: fine-tune a protein language model to put one label on each residue.

The head is ESM's token-classification head (``EsmForTokenClassification``: a linear layer on each
token's embedding). ESM-2's tokenizer gives one token per residue between ``<cls>`` and ``<eos>``, so
residue i's label sits at token i + 1; ``<cls>``, ``<eos>``, padding and masked (unresolved) residues
get the label -100 and never count in the loss or the metrics. The loss of an optimizer step is the
summed cross-entropy of the scored residues of the whole accumulated window / their number
(``losses.token_loss_sums``: token-weighted, whatever the micro-batch split).

A protein longer than ``truncate`` is cut with its labels (the cut residues are not scored; the records
cut and residues left out are counted in metrics.json). Metrics on the flattened scored residues
(scikit-learn): accuracy, macro F1, MCC, per-class F1; per protein: the share of proteins with every
scored residue right, and for SignalP-6 data the protein-level type derived from the labels. Trivial
baselines on the same residues: the training majority class everywhere, and the training majority
label of each amino acid.

Reads top to bottom like the regression recipe.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch
from peft import TaskType
from transformers import DataCollatorForTokenClassification, set_seed

from scilm.data.protein import FASTA_SUFFIXES
from scilm.data.residue import (
    ResidueRecord,
    check_alphabet,
    label_alphabet,
    read_residues,
)
from scilm.data.textio import data_suffix
from scilm.errors import ScilmError, name
from scilm.models.adapters import trainable_parameters
from scilm.models.protein import load_protein_classifier, record_max_residues
from scilm.sifting.loss import Loss, per_sample_token_mean
from scilm.training.common import (
    build_trainer,
    check_out_dir,
    finish_run,
    periodic_subset,
    prepare_model,
    prepare_out_dir,
    resolve_precision,
    save_run,
    train_and_measure,
    trainer_options,
    with_sample_index,
)
from scilm.training.losses import IGNORE, token_loss_sums
from scilm.training.recipes.protein import encode_records, record_counts, split_records
from scilm.training.recipes.residue.config import TABLE_COLUMNS, Config

log = logging.getLogger(__name__)

# SignalP-6's region labels of the signal-peptide types (Teufel et al. 2022); a protein with none is NO_SP.
# TATLIPO's residues carry T like TAT's in PEFT-SP's train_set.fasta, so labels tell the two apart not.
SIGNALP_TYPES = {"S": "SP", "T": "TAT", "L": "LIPO", "P": "PILIN"}
SIGNALP_HEADER_TYPES = frozenset({"NO_SP", "SP", "TAT", "TATLIPO", "LIPO", "PILIN"})


def residue_reader(config: Config):
    """``read(path, split_column, counts)`` for :func:`split_records`; table settings on a FASTA file are errors."""
    fasta = [path for path in (config.data, config.valid) if path and data_suffix(path) in FASTA_SUFFIXES]
    given = [key for key in TABLE_COLUMNS if config.is_set(key)]
    if fasta and given:
        raise ScilmError(f"{fasta[0]}: {', '.join(name(key) for key in given)} name table columns, but this is a "
                         f"3-line FASTA file (its header fields are named by {name('fasta_fields')})")

    def read(path: str, split_column: str | None, counts) -> list[ResidueRecord]:
        return read_residues(path, sequence_column=config.sequence_column, label_column=config.label_column,
                             mask_column=config.mask_column, id_column=config.id_column, split_column=split_column,
                             fasta_fields=config.fasta_fields, drop_missing_labels=config.drop_missing_labels,
                             counts=counts)
    return read


def residue_targets(records: list[ResidueRecord], classes: list[str], truncate: int) -> tuple[list[list[int]], int]:
    """Per record the token labels ``[-100, class ids of the first truncate residues (-100 where masked), -100]``
    (length min(L, truncate) + 2: <cls>, residues, <eos>), and the number of scored residues cut off."""
    index = {label: i for i, label in enumerate(classes)}
    targets, cut = [], 0
    for r in records:
        mask = r.mask or "1" * len(r.label)
        ids = [index[label] if m == "1" else IGNORE for label, m in zip(r.label, mask)]
        cut += sum(i != IGNORE for i in ids[truncate:])
        targets.append([IGNORE, *ids[:truncate], IGNORE])
    return targets, cut


def encode_residues(records: list[ResidueRecord], tokenizer, truncate: int, classes: list[str]) -> tuple[list[dict], dict]:
    """Encoded examples (input_ids, attention_mask, labels of the same length) and what truncation cut.

    Raises ScilmError if the tokenizer does not give exactly one token per residue (the labels would
    shift against the residues).
    """
    targets, residues_cut = residue_targets(records, classes, truncate)
    examples = encode_records(records, tokenizer, truncate, targets)
    for record, example in zip(records, examples):
        if len(example["input_ids"]) != len(example["labels"]):
            raise ScilmError(f"record {record.id}: the tokenizer gave {len(example['input_ids'])} tokens for "
                             f"{len(example['labels']) - 2} residues; per-residue labels need one token per residue "
                             "plus <cls> and <eos> (an ESM-2 tokenizer)")
    n_cut = sum(len(r.sequence) > truncate for r in records)
    return examples, {"records_cut": n_cut, "scored_residues_cut": residues_cut}


def signalp_type(labels: list[str]) -> str:
    """SignalP-6 protein type from residue labels: the signal-peptide region label (S/T/L/P) most residues
    carry (ties: in that order), or NO_SP when none does."""
    counts = Counter(label for label in labels if label in SIGNALP_TYPES)
    if not counts:
        return "NO_SP"
    return SIGNALP_TYPES[max(SIGNALP_TYPES, key=lambda label: counts[label])]


def residue_metrics(predicted: np.ndarray, labels: np.ndarray, classes: list[str],
                    majority: int, signal_types: bool = False) -> dict[str, float]:
    """Metrics of predicted class ids (N, T) against labels (N, T) (-100: not scored), on the scored residues.

    ``accuracy``, ``f1`` (macro over ``classes``), ``mcc`` and ``f1_<class>`` (scikit-learn on the flattened
    scored residues); ``protein_accuracy``: share of proteins (with at least one scored residue) whose every
    scored residue is right; ``baseline_accuracy``: always answering class ``majority`` (the training
    majority). With ``signal_types``: ``type_accuracy`` and ``type_mcc`` of the SignalP-6 type derived
    (:func:`signalp_type`) from the predicted against from the true labels.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    scored = labels != IGNORE
    y_true, y_pred = labels[scored], predicted[scored]
    ids = list(range(len(classes)))
    per_class = f1_score(y_true, y_pred, labels=ids, average=None, zero_division=0)
    metrics = {
        "accuracy": accuracy_score(y_true, y_pred),
        "f1": f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0),
        "mcc": matthews_corrcoef(y_true, y_pred),
        "baseline_accuracy": float(np.mean(y_true == majority)),
        **{f"f1_{label}": value for label, value in zip(classes, per_class)},
    }
    rows = [row for row in range(len(labels)) if scored[row].any()]
    metrics["protein_accuracy"] = float(np.mean([np.array_equal(predicted[row][scored[row]], labels[row][scored[row]])
                                                 for row in rows])) if rows else 0.0
    if signal_types:
        true = [signalp_type([classes[i] for i in labels[row][scored[row]]]) for row in rows]
        pred = [signalp_type([classes[i] for i in predicted[row][scored[row]]]) for row in rows]
        metrics.update(type_accuracy=accuracy_score(true, pred), type_mcc=matthews_corrcoef(true, pred))
    return {key: float(value) for key, value in metrics.items()}


def scored_counts(examples: list[dict], classes: list[str]) -> dict[str, int]:
    """Scored residues per class in encoded ``examples`` (masked and cut residues excluded), class order."""
    counts = Counter(i for example in examples for i in example["labels"] if i != IGNORE)
    return {label: int(counts[i]) for i, label in enumerate(classes)}


def residue_type_baseline(train: list[ResidueRecord], valid: list[ResidueRecord], valid_set: list[dict],
                          classes: list[str], majority: int) -> float:
    """Accuracy on the scored validation residues of answering, for each amino acid, its most frequent
    scored training label (the training majority class for an amino acid unseen in training)."""
    by_residue: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        for residue, label, m in zip(r.sequence, r.label, r.mask or "1" * len(r.label)):
            if m == "1":
                by_residue[residue][label] += 1
    guess = {residue: classes.index(c.most_common(1)[0][0]) for residue, c in by_residue.items()}
    right = total = 0
    for record, example in zip(valid, valid_set):
        for residue, target in zip(record.sequence, example["labels"][1:-1]):
            if target != IGNORE:
                right += guess.get(residue, majority) == target
                total += 1
    return right / total if total else 0.0


class ResidueLoss(Loss):
    """Sifting score: each protein's mean cross-entropy over its scored residues (token labels, -100 ignored)."""

    def loss(self, model, transformed_batch, original_batch=None):
        inputs = {k: v for k, v in transformed_batch.items() if k != "labels"}
        return per_sample_token_mean(model(**inputs).logits, transformed_batch["labels"])


def argmax_logits(logits, labels) -> torch.Tensor:
    """(N, T, C) logits -> (N, T) class ids, so evaluation keeps ids, not every logit."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)


def run(config: Config) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the metrics also written to metrics.json."""
    check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = resolve_precision(config.precision)
    counts: Counter = Counter()
    train_records, valid_records = split_records(config, None, counts, stratify=False, read=residue_reader(config))
    classes = label_alphabet(train_records, config.label_alphabet, config.data)
    check_alphabet(valid_records, classes, config.valid or config.data)
    signal_types = all(r.kind in SIGNALP_HEADER_TYPES for r in train_records + valid_records)
    set_seed(config.seed)

    model, tokenizer = load_protein_classifier(config.model, classes, seed=config.seed, per_residue=True)
    record_max_residues(model, config.truncate)  # predict defaults to the trained length
    model = prepare_model(model, config, TaskType.TOKEN_CLS)
    n_trainable, n_total = trainable_parameters(model)
    out = prepare_out_dir(config.out, config.overwrite, config.resume)  # inputs and model are good
    train_set, train_cut = encode_residues(train_records, tokenizer, config.truncate, classes)
    valid_set, valid_cut = encode_residues(valid_records, tokenizer, config.truncate, classes)
    residue_counts = {"train": scored_counts(train_set, classes), "valid": scored_counts(valid_set, classes)}
    majority = int(np.argmax(list(residue_counts["train"].values())))
    for part, cut in (("training", train_cut), ("validation", valid_cut)):
        if cut["records_cut"]:
            log.info("%d %s protein(s) cut to %d residues (truncate): %d scored residue(s) not trained or scored",
                     cut["records_cut"], part, config.truncate, cut["scored_residues_cut"])
    log.info("train %d, validation %d proteins, classes %s, %d of %d parameters trainable",
             len(train_set), len(valid_set), "".join(classes), n_trainable, n_total)

    trainer_kwargs = dict(
        model=model, train_dataset=with_sample_index(train_set), eval_dataset=periodic_subset(valid_set, config),
        data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer,
        item_loss=token_loss_sums,  # summed CE of the window's scored residues / their number
        compute_metrics=lambda p: residue_metrics(np.asarray(p.predictions), np.asarray(p.label_ids), classes,
                                                  majority, signal_types),
        preprocess_logits_for_metrics=argmax_logits,
        **trainer_options(config, [r.id for r in train_records]),
    )
    trainer = build_trainer(config, out, precision, trainer_kwargs, ResidueLoss())
    mean_tokens = float(np.mean([len(x["input_ids"]) for x in train_set]))
    metrics = train_and_measure(trainer, config, precision, len(train_set), len(valid_set), mean_tokens,
                                (n_trainable, n_total), eval_dataset=valid_set)
    metrics["labels"] = classes
    metrics["residue_counts"] = residue_counts  # scored residues per class (masked and cut ones excluded)
    metrics["eval_baseline_residue_type_accuracy"] = residue_type_baseline(train_records, valid_records, valid_set,
                                                                           classes, majority)
    metrics["truncated"] = {"train": train_cut, "valid": valid_cut, "truncate": config.truncate}
    if signal_types:
        metrics["type_counts"] = {"train": dict(Counter(r.kind for r in train_records)),
                                  "valid": dict(Counter(r.kind for r in valid_records))}
    metrics.update(record_counts(counts))
    finish_run(trainer, metrics, out,
               lambda: save_run(trainer.model, tokenizer, out, lora=config.peft_method != "none"))
    return metrics
