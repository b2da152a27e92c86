"""Recipe: fine-tune a protein language model to predict a set of labels per protein (DeepLoc-2 locations).

The head is ESM's classification head with one logit per label (``problem_type:
multi_label_classification``), trained with binary cross-entropy summed over the labels of each
protein and divided by the number of (protein, label) items of the optimizer step: the mean BCE of
``BCEWithLogitsLoss``, invariant to how the step is split into micro-batches (training/losses.py).

After training, each label's decision threshold is the one that maximises that label's MCC on the
validation set (DeepLoc 2.0's rule; see :mod:`.metrics`). The thresholds are saved with the model
(``scilm_thresholds`` in config.json) and ``scilm predict`` applies them. metrics.json reports
DeepLoc 2.0's metrics at the default threshold 0.5 (``eval_*``: not tuned on what they measure),
the same metrics at the tuned thresholds (``valid_at_tuned_thresholds``: tuned on that same
validation set, so optimistic), the trivial baseline (the training set's most frequent label set,
``eval_baseline_*``) and the positives per label in training and validation.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from peft import TaskType
from transformers import DataCollatorWithPadding, set_seed

from scilm.data import protein as pdata
from scilm.data.textio import data_suffix
from scilm.errors import ScilmError, name
from scilm.models.adapters import trainable_parameters
from scilm.models.protein import load_protein_classifier, record_max_residues
from scilm.sifting.loss import Loss
from scilm.training import common
from scilm.training.losses import IGNORE
from scilm.training.recipes.multilabel.config import Config
from scilm.training.recipes.multilabel.metrics import (
    apply_thresholds,
    most_frequent_set,
    multilabel_metrics,
    tune_thresholds,
)
from scilm.training.recipes.protein import encode_records, record_counts, split_records

log = logging.getLogger(__name__)

THRESHOLDS_KEY = "scilm_thresholds"  # in the saved config.json: {label: threshold}, read by predict
THRESHOLD_RULE = "per label, the threshold maximising its MCC on the validation set (DeepLoc 2.0)"


def resolve_label_columns(config: Config) -> Config:
    """``config`` with ``label_columns`` filled in: as given, else the DeepLoc-2 location columns of the
    training table (at least two). Raises ScilmError for a FASTA file or a table without them."""
    if data_suffix(config.data) in pdata.FASTA_SUFFIXES:
        raise ScilmError(f"{config.data}: task multilabel trains on a CSV/TSV table with 0/1 label columns "
                         f"({name('label_columns')}); this is a FASTA file")
    if config.label_columns is not None:
        return config
    if not Path(config.data).is_file():
        raise ScilmError(f"{config.data}: no such file")
    columns = pdata.table_columns(config.data)
    present = [column for column in pdata.LOCALIZATION_LABELS if column in columns]
    if len(present) < 2:
        raise ScilmError(f"{config.data}: no {name('label_columns')} given and not the DeepLoc-2 location columns "
                         f"({', '.join(pdata.LOCALIZATION_LABELS)}); columns are: {', '.join(columns)}")
    log.info("%s: label columns %s (the DeepLoc-2 locations present)", config.data, ", ".join(present))
    return replace(config, label_columns=",".join(present))


def multi_hot(records: list[pdata.ProteinRecord]) -> np.ndarray:
    """(N, C) float32 0/1 targets from the records' labels (the reader's ``"0,1,..."``)."""
    return np.array([[float(value) for value in r.label.split(",")] for r in records], dtype=np.float32)


def bce_sums(outputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-label: logits (n, C), 0/1 labels (n, C) -> (BCE summed over each protein's labels (n,), labels (n,)).

    Entries equal to -100 (an empty micro-batch's filler) are not items. Divided by the step's item count
    (n x C over the window) this is ``BCEWithLogitsLoss()``'s mean over every (protein, label) pair.
    """
    logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()
    labels = labels.to(logits.dtype)
    keep = labels.ne(IGNORE)
    losses = F.binary_cross_entropy_with_logits(logits, torch.where(keep, labels, 0.0), reduction="none")
    return (losses * keep).sum(dim=1), keep.sum(dim=1)


class MultiLabelLoss(Loss):
    """Sifting's score of a sample: its mean BCE over the labels (logits (n, C), labels (n, C) -> (n,))."""

    def loss(self, model, transformed_batch, original_batch=None):
        inputs = {k: v for k, v in transformed_batch.items() if k != "labels"}
        sums, items = bce_sums(model(**inputs), transformed_batch["labels"])
        return sums / items.clamp(min=1)


def probabilities_of(logits: np.ndarray) -> np.ndarray:
    """(N, C) probabilities as ``scilm predict`` computes them: float32 sigmoid of the logits."""
    return torch.sigmoid(torch.as_tensor(np.asarray(logits), dtype=torch.float32)).numpy().astype(np.float64)


def metrics_function(labels: list[str], baseline: np.ndarray):
    """compute_metrics for the Trainer: DeepLoc 2.0's metrics at threshold 0.5, and the baseline's
    (``baseline`` (C,): the training set's most frequent label set, predicted for every protein)."""
    def compute(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        truth = np.asarray(prediction.label_ids).astype(int)
        metrics = multilabel_metrics(apply_thresholds(probabilities_of(logits), [0.5] * len(labels)), truth, labels)
        constant = multilabel_metrics(np.tile(baseline, (len(truth), 1)), truth, labels)
        metrics.update({f"baseline_{key}": constant[key] for key in ("subset_accuracy", "jaccard", "micro_f1",
                                                                     "macro_f1")})
        return metrics
    return compute


def positives(y: np.ndarray, labels: list[str]) -> dict[str, int]:
    """{label: number of proteins carrying it} of (N, C) 0/1 targets."""
    return {label: int(count) for label, count in zip(labels, y.sum(axis=0).astype(int), strict=True)}


def tuned_thresholds(trainer, valid_set: list[dict], labels: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """({label: threshold}, report) from the final model's validation probabilities; the report holds the
    metrics at those thresholds (tuned on the same set: optimistic) and the labels left at 0.5."""
    output = trainer.predict(valid_set, metric_key_prefix="thresholds")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    probabilities, truth = probabilities_of(logits), np.asarray(output.label_ids).astype(int)
    thresholds, untuned = tune_thresholds(probabilities, truth, labels)
    predicted = apply_thresholds(probabilities, [thresholds[label] for label in labels])
    if untuned:
        log.info("validation has no positive or no negative for %s: threshold 0.5 kept", ", ".join(untuned))
    return thresholds, {"rule": THRESHOLD_RULE, "untuned_labels": untuned,
                        "note": "tuned on this validation set, so optimistic: measure on held-out data",
                        **multilabel_metrics(predicted, truth, labels)}


def run(config: Config) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the metrics also written to metrics.json."""
    common.check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = common.resolve_precision(config.precision)
    config = resolve_label_columns(config)
    labels = config.label_column_list
    counts: Counter = Counter()
    train_records, valid_records = split_records(config, None, counts, stratify=False)
    y_train, y_valid = multi_hot(train_records), multi_hot(valid_records)
    set_seed(config.seed)

    model, tokenizer = load_protein_classifier(config.model, labels, seed=config.seed,
                                               problem_type="multi_label_classification")
    record_max_residues(model, config.truncate, config.long_policy)
    saved_config = model.config  # the PEFT wrapper keeps this object: thresholds set at the end are saved
    model = common.prepare_model(model, config, TaskType.SEQ_CLS)
    n_trainable, n_total = trainable_parameters(model)
    out = common.prepare_out_dir(config.out, config.overwrite, config.resume)  # inputs and model are good
    train_set = encode_records(train_records, tokenizer, config.truncate, y_train.tolist(),
                               config.long_policy)
    valid_set = encode_records(valid_records, tokenizer, config.truncate, y_valid.tolist(),
                               config.long_policy)
    log.info("train %d, validation %d, labels %s, %d of %d parameters trainable",
             len(train_set), len(valid_set), labels, n_trainable, n_total)

    trainer_kwargs = dict(
        model=model, train_dataset=common.with_sample_index(train_set),
        eval_dataset=common.periodic_subset(valid_set, config),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, item_loss=bce_sums,
        compute_metrics=metrics_function(labels, most_frequent_set(y_train)),
        **common.trainer_options(config, [r.id for r in train_records]),
    )
    trainer = common.build_trainer(config, out, precision, trainer_kwargs, MultiLabelLoss())
    mean_tokens = float(np.mean([len(x["input_ids"]) for x in train_set]))
    metrics = common.train_and_measure(trainer, config, precision, len(train_set), len(valid_set), mean_tokens,
                                       (n_trainable, n_total), eval_dataset=valid_set)
    thresholds, at_thresholds = tuned_thresholds(trainer, valid_set, labels)
    saved_config.update({THRESHOLDS_KEY: thresholds})  # saved with the model, applied by predict
    metrics.update(labels=labels, thresholds=thresholds, valid_at_tuned_thresholds=at_thresholds,
                   positive_counts={"train": positives(y_train, labels), "valid": positives(y_valid, labels)})
    metrics.update(record_counts(counts))
    common.finish_run(trainer, metrics, out,
                      lambda: common.save_run(trainer.model, tokenizer, out, lora=config.peft_method != "none"))
    return metrics
