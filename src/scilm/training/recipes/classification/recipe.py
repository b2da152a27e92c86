"""Recipe: fine-tune a protein language model to put one label on each protein.

Reads top to bottom: check the settings and ``out``, read and split the data, build the model
(its head for these labels; PEFT or a frozen backbone chosen at construction), claim ``out``,
encode, build the Trainer, train, evaluate once, write ``model/`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import torch
from peft import TaskType
from transformers import DataCollatorWithPadding, set_seed

from scilm.data import protein as pdata
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
from scilm.training.losses import class_loss_sums
from scilm.training.metrics import class_counts, classification_metrics
from scilm.training.recipes.classification.config import Config
from scilm.training.recipes.protein import encode_records, record_counts, split_records

log = logging.getLogger(__name__)


def load_splits(config: Config, counts: Counter | None = None):
    """Training and validation records and the ordered label names, every check done up front."""
    train, valid = split_records(config, config.task, counts, stratify=True)
    pdata.check_labels(train, config.data)
    labels = pdata.label_names(train, config.task)
    pdata.check_known_labels(valid, labels, config.valid or config.data)
    return train, valid, labels


def class_weights(train: list[pdata.ProteinRecord], labels: list[str]) -> torch.Tensor:
    """(C,) "balanced" weights n / (k * count_c), each class weighing the same in the loss
    (scikit-learn's ``compute_class_weight``)."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([labels.index(r.label) for r in train])
    weights = compute_class_weight("balanced", classes=np.arange(len(labels)), y=y)
    return torch.tensor(weights, dtype=torch.float32)


def run(config: Config) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the metrics also written to metrics.json."""
    check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = resolve_precision(config.precision)
    counts: Counter = Counter()
    train_records, valid_records, labels = load_splits(config, counts)
    set_seed(config.seed)

    # Model before data: the tokenizer comes with it. PEFT is chosen at construction time.
    model, tokenizer = load_protein_classifier(config.model, labels, seed=config.seed)
    record_max_residues(model, config.truncate, config.long_policy)  # predict/embed/serve default to them
    model = prepare_model(model, config, TaskType.SEQ_CLS)
    n_trainable, n_total = trainable_parameters(model)
    out = prepare_out_dir(config.out, config.overwrite, config.resume)  # inputs and model are good
    index = {label: i for i, label in enumerate(labels)}
    train_set = encode_records(train_records, tokenizer, config.truncate, [index[r.label] for r in train_records],
                               config.long_policy)
    valid_set = encode_records(valid_records, tokenizer, config.truncate, [index[r.label] for r in valid_records],
                               config.long_policy)
    log.info("train %d, validation %d, labels %s, %d of %d parameters trainable",
             len(train_set), len(valid_set), labels, n_trainable, n_total)
    log.info("records per class: train %s; validation %s", class_counts([r.label for r in train_records], labels),
             class_counts([r.label for r in valid_records], labels))

    weights = class_weights(train_records, labels) if config.class_weights else None
    trainer_kwargs = dict(
        model=model, train_dataset=with_sample_index(train_set), eval_dataset=periodic_subset(valid_set, config),
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        item_loss=class_loss_sums(weights),  # sum_i w_i * CE_i / N over each optimizer step's N samples
        compute_metrics=lambda p: classification_metrics(p.predictions, p.label_ids),
        **trainer_options(config, [r.id for r in train_records]),
    )
    from scilm.sifting import SequenceClassificationLoss

    trainer = build_trainer(config, out, precision, trainer_kwargs, SequenceClassificationLoss())
    mean_tokens = float(np.mean([len(x["input_ids"]) for x in train_set]))
    metrics = train_and_measure(trainer, config, precision, len(train_set), len(valid_set), mean_tokens,
                                (n_trainable, n_total), eval_dataset=valid_set)
    metrics["labels"] = labels
    metrics["label_counts"] = {"train": class_counts([r.label for r in train_records], labels),
                               "valid": class_counts([r.label for r in valid_records], labels)}
    metrics.update(record_counts(counts))  # records left out, by reason (each also logged): never silently
    finish_run(trainer, metrics, out,
               lambda: save_run(trainer.model, tokenizer, out, lora=config.peft_method != "none"))
    return metrics
