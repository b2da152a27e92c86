"""Recipe: fine-tune a protein language model to predict one number per protein (fitness, stability).

The head is ESM's classification head with one output (``problem_type: regression``). Targets are
standardised with the training set's mean and standard deviation, which are stored with the model
(``scilm_target_mean``/``scilm_target_std`` in config.json) and undone at prediction, so the loss
is a scaled mean squared error whatever the units (FLIP's fitness, Kelvin, kcal/mol). Metrics are
in the targets' own units: Spearman and Pearson (scipy), MSE and R^2 (scikit-learn), and the MSE of
the trivial baseline that predicts the training mean.

Reads top to bottom like the classification recipe.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import numpy as np
import torch
from peft import TaskType
from transformers import DataCollatorWithPadding, set_seed

from scilm.data.protein import ProteinRecord
from scilm.errors import ScilmError, name
from scilm.models.adapters import trainable_parameters
from scilm.models.protein import load_protein_classifier, record_max_residues
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
from scilm.training.metrics import regression_metrics, target_stats
from scilm.training.recipes.protein import encode_records, record_counts, split_records
from scilm.training.recipes.regression.config import Config

log = logging.getLogger(__name__)

MEAN_KEY, STD_KEY = "scilm_target_mean", "scilm_target_std"  # in the saved config.json


def parse_targets(records: list[ProteinRecord], path: str, column: str) -> np.ndarray:
    """(N,) float64 targets; a value that is not a finite number is a ScilmError naming file, line and column."""
    values = []
    for record in records:
        try:
            value = float(record.label)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise ScilmError(f"{path}:{record.line} (record {record.id}): {name('label_column')} {column!r} "
                             f"holds {record.label!r}, not a finite number")
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def target_scale(y_train: np.ndarray, standardize: bool) -> tuple[float, float]:
    """(mean, sd) the model learns in: the training targets' (population sd), or (0, 1) when not standardising.

    Raises ScilmError when the training targets are all equal (nothing to learn).
    """
    if len(y_train) < 2 or float(np.std(y_train)) == 0.0:
        raise ScilmError(f"every training target is {y_train[0] if len(y_train) else 'missing'}: nothing to learn")
    return (float(np.mean(y_train)), float(np.std(y_train))) if standardize else (0.0, 1.0)


def squared_error_sums(outputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression: predictions (n, 1), standardised targets (n,) -> (squared errors (n,), items (n,) of 1)."""
    predictions = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float().reshape(-1)
    return (predictions - labels.float().reshape(-1)) ** 2, torch.ones_like(predictions, dtype=torch.long)


def run(config: Config) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the metrics also written to metrics.json."""
    check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = resolve_precision(config.precision)
    counts: Counter = Counter()
    train_records, valid_records = split_records(config, None, counts, stratify=False)
    y_train = parse_targets(train_records, config.data, config.label_column)
    y_valid = parse_targets(valid_records, config.valid or config.data, config.label_column)
    mean, std = target_scale(y_train, config.standardize)
    set_seed(config.seed)

    model, tokenizer = load_protein_classifier(config.model, [config.label_column], seed=config.seed,
                                               problem_type="regression")
    record_max_residues(model, config.truncate, config.long_policy)
    model.config.update({MEAN_KEY: mean, STD_KEY: std})  # saved with the model, undone at prediction
    model = prepare_model(model, config, TaskType.SEQ_CLS)
    n_trainable, n_total = trainable_parameters(model)
    out = prepare_out_dir(config.out, config.overwrite, config.resume)  # inputs and model are good
    train_set = encode_records(train_records, tokenizer, config.truncate, list((y_train - mean) / std),
                               config.long_policy)
    valid_set = encode_records(valid_records, tokenizer, config.truncate, list((y_valid - mean) / std),
                               config.long_policy)
    log.info("train %d, validation %d, target mean %.4g sd %.4g, %d of %d parameters trainable",
             len(train_set), len(valid_set), mean, std, n_trainable, n_total)
    log.info("targets: train %s; validation %s", target_stats(y_train), target_stats(y_valid))

    def compute_metrics(prediction) -> dict[str, float]:  # in the targets' own units
        predicted = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1) * std + mean
        observed = np.asarray(prediction.label_ids, dtype=np.float64).reshape(-1) * std + mean
        return regression_metrics(predicted, observed, float(np.mean(y_train)))

    trainer_kwargs = dict(
        model=model, train_dataset=with_sample_index(train_set), eval_dataset=periodic_subset(valid_set, config),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        item_loss=squared_error_sums, compute_metrics=compute_metrics,
        **trainer_options(config, [r.id for r in train_records]),
    )
    from scilm.sifting.loss import SquaredErrorLoss

    trainer = build_trainer(config, out, precision, trainer_kwargs, SquaredErrorLoss())
    mean_tokens = float(np.mean([len(x["input_ids"]) for x in train_set]))
    metrics = train_and_measure(trainer, config, precision, len(train_set), len(valid_set), mean_tokens,
                                (n_trainable, n_total), eval_dataset=valid_set)
    metrics["target"] = {"column": config.label_column, "mean": mean, "std": std, "standardized": config.standardize,
                         "train": target_stats(y_train), "valid": target_stats(y_valid)}
    metrics.update(record_counts(counts))
    finish_run(trainer, metrics, out,
               lambda: save_run(trainer.model, tokenizer, out, lora=config.peft_method != "none"))
    return metrics

