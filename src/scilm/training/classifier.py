"""Recipe: fine-tune a protein language model as a sequence classifier.

Reads top to bottom: load and check the data, build the model (LoRA chosen at construction),
build the Hugging Face Trainer, train, evaluate, write ``model/`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import TaskType
from transformers import DataCollatorWithPadding, set_seed

from scilm.data import protein as pdata
from scilm.errors import ScilmError
from scilm.models.lora import apply_lora, trainable_parameters
from scilm.models.protein import load_protein_classifier, record_max_residues, truncate_sequences
from scilm.training.common import (
    check_out_dir,
    finish_run,
    freeze_unused,
    prepare_out_dir,
    resolve_precision,
    save_run,
    train_and_measure,
    trainer_options,
    training_arguments,
    with_sample_index,
)
from scilm.training.config import TrainConfig
from scilm.training.losses import class_loss_sums
from scilm.training.metrics import classification_metrics
from scilm.training.trainer import ScilmTrainer

log = logging.getLogger(__name__)


# Settings only the seq2seq recipe reads: given for protein data they would be silently ignored.
SEQ2SEQ_ONLY = ("max_source_length", "max_target_length", "tokenizer_vocab_size", "lr_decay", "eval_steps",
                "eval_max_batches", "keep_best")


def check_settings(config: TrainConfig) -> None:
    """No setting is silently ignored: seq2seq-only ones, or --valid-fraction beside --valid / --split-column."""
    given = [name for name in SEQ2SEQ_ONLY if config.is_set(name)]
    if given:
        raise ScilmError(f"{', '.join('--' + n.replace('_', '-') for n in given)}: for Text+Chem JSONL "
                         "(seq2seq), not protein classification")
    from scilm.data.textio import data_suffix

    fasta = [path for path in (config.data, config.valid) if path and data_suffix(path) in pdata.FASTA_SUFFIXES]
    table_only = [f"--{name.replace('_', '-')}" for name in ("sequence_column", "label_column", "id_column",
                                                            "split_column") if config.is_set(name)]
    if fasta and table_only:  # even at their default values: the user meant something FASTA cannot do
        raise ScilmError(f"{fasta[0]}: {', '.join(table_only)} name table columns, but this is a FASTA file "
                         "(its id is the header's first word, its label the DeepLoc header code)")
    if config.is_set("valid_fraction") and (config.valid or config.split_column):
        raise ScilmError("--valid-fraction splits --data; with --valid or --split-column there is nothing to split")


def load_splits(
    config: TrainConfig, counts: dict[str, int] | None = None
) -> tuple[list[pdata.ProteinRecord], list[pdata.ProteinRecord], list[str]]:
    """Train and validation records and the ordered label names, every check done up front.

    ``counts`` (optional) receives the records left out, by reason, summed over the files read
    (:data:`scilm.data.protein.COUNT_KEYS`, and ``n_filtered_length`` for --min/--max-length).
    """
    counts = Counter() if counts is None else counts
    read = dict(task=config.task, sequence_column=config.sequence_column,
                label_column=config.label_column, id_column=config.id_column,
                drop_missing_labels=config.drop_missing_labels, counts=counts)

    def length_filter(records, path):
        kept = pdata.filter_by_length(records, config.min_length, config.max_length)
        counts["n_filtered_length"] += len(records) - len(kept)
        if len(kept) < len(records):
            log.info("%s: %d record(s) outside --min-length/--max-length left out", path, len(records) - len(kept))
        if not kept:
            raise ScilmError(f"{path}: no sequence within --min-length/--max-length")
        return kept

    records = length_filter(pdata.read_proteins(config.data, split_column=config.split_column, **read), config.data)
    if config.valid:
        train = records
        valid = length_filter(pdata.read_proteins(config.valid, **read), config.valid)
    elif config.split_column:
        train, valid = pdata.split_by_column(records, str(config.valid_split), config.data)
    else:
        pdata.check_labels(records, config.data)
        train, valid = pdata.stratified_split(records, config.valid_fraction, config.seed)
    pdata.check_labels(train, config.data)
    labels = pdata.label_names(train, config.task)
    pdata.check_known_labels(valid, labels, config.valid or config.data)
    return train, valid, labels


def encode(records: list[pdata.ProteinRecord], tokenizer, labels: list[str], truncate: int) -> list[dict]:
    """Token ids (with <cls>/<eos>) and the class index of each record.

    Sequences are cut to ``truncate`` residues before tokenizing (one token per residue), the same
    cut as predict/embed/serve make (:func:`scilm.models.protein.truncate_sequences`).
    """
    index = {name: i for i, name in enumerate(labels)}
    sequences, n_cut = truncate_sequences([r.sequence for r in records], truncate)
    if n_cut:
        log.info("%d of %d sequences cut to %d residues (--truncate)", n_cut, len(records), truncate)
    encoded = tokenizer(sequences, truncation=True, max_length=truncate + 2)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": index[r.label]}
        for ids, mask, r in zip(encoded["input_ids"], encoded["attention_mask"], records)
    ]


def class_weights(train: list[pdata.ProteinRecord], labels: list[str]) -> torch.Tensor:
    """Weights n / (k * count_c): each class contributes equally to the loss ("balanced")."""
    counts = np.array([sum(r.label == name for r in train) for name in labels], dtype=np.float64)
    return torch.tensor(len(train) / (len(labels) * counts), dtype=torch.float32)


def train_classifier(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the metrics also written to metrics.json."""
    check_settings(config)
    check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = resolve_precision(config.precision)
    counts: Counter = Counter()
    train_records, valid_records, labels = load_splits(config, counts)
    set_seed(config.seed)

    # Model before data: the tokenizer comes with it. LoRA is chosen at construction time.
    model, tokenizer = load_protein_classifier(config.model, labels, seed=config.seed)
    freeze_unused(model)
    record_max_residues(model, config.truncate)  # predict/embed/serve default to the trained length
    if config.lora:
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, TaskType.SEQ_CLS)
    n_trainable, n_total = trainable_parameters(model)
    out = prepare_out_dir(config.out, config.overwrite, config.resume)  # inputs and model are good
    train_set = encode(train_records, tokenizer, labels, config.truncate)
    valid_set = encode(valid_records, tokenizer, labels, config.truncate)
    log.info("train %d, validation %d, labels %s, %d of %d parameters trainable",
             len(train_set), len(valid_set), labels, n_trainable, n_total)

    weights = class_weights(train_records, labels) if config.class_weights else None
    trainer_kwargs = dict(
        model=model,
        train_dataset=with_sample_index(train_set),
        eval_dataset=valid_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        item_loss=class_loss_sums(weights),  # sum_i w_i * CE_i / N over each optimizer step's N samples
        compute_metrics=lambda p: classification_metrics(p.predictions, p.label_ids),
        **trainer_options(config, [r.id for r in train_records]),
    )
    if config.sift_beta is None:
        trainer = ScilmTrainer(args=training_arguments(config, out / "checkpoints", precision), **trainer_kwargs)
    else:
        trainer = sifting_trainer(config, precision, out, trainer_kwargs)

    mean_tokens = float(np.mean([len(x["input_ids"]) for x in train_set]))
    metrics = train_and_measure(trainer, config, precision, len(train_set), len(valid_set), mean_tokens,
                                (n_trainable, n_total))
    metrics["labels"] = labels
    # records left out of the data and --valid files, by reason (each also logged): never silently
    metrics.update({key: counts[key] for key in (*pdata.COUNT_KEYS, "n_filtered_length")})
    finish_run(trainer, metrics, out, lambda: save_run(trainer.model, tokenizer, out, lora=config.lora))
    return metrics


def sifting_trainer(config: TrainConfig, precision: str, out: Path, trainer_kwargs: dict) -> ScilmTrainer:
    """The Trainer with smart sifting (``--sift-beta``): see scilm/training/sifting.py."""
    from scilm.sifting import SequenceClassificationLoss
    from scilm.training import sifting

    return sifting.build_sifting_trainer(config, precision, out, trainer_kwargs, SequenceClassificationLoss())


