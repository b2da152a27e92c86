"""Recipe: train a Text+Chem T5 model on ``source``/``target`` JSONL (all five tasks at once).

Reads top to bottom like the classifier recipe: load and check the data, build the model (its
tokenizer trained on the training texts for the ``t5-tiny`` preset; LoRA chosen at construction),
tokenize, build the Trainer with the original's schedule as flags, train, evaluate on the whole
validation set, write ``model/`` and ``metrics.json``.

The original schedule (GT4SD language-modeling trainer, SOURCES.md section 3) maps to:
``--lr 6e-4 --lr-decay 0.99 --batch-size 8 --grad-accum 4 --eval-steps 20000
--eval-max-batches 500 --keep-best --epochs 1`` (with ``--warmup-ratio 0``: it had no warm-up).
Two of its known bugs are fixed here: padding is masked out of the loss (label -100) and a file
without a final newline keeps its last example.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from peft import TaskType
from torch.optim.lr_scheduler import LambdaLR
from transformers import DataCollatorForSeq2Seq, Trainer, set_seed

from scilm.data.textchem import TASKS, TextChemExample, read_jsonl, split_examples
from scilm.errors import ScilmError
from scilm.models.lora import apply_lora, trainable_parameters
from scilm.models.seq2seq import is_seq2seq_preset, load_seq2seq_model
from scilm.training.common import (
    check_out_dir,
    finish_run,
    prepare_out_dir,
    resolve_precision,
    save_run,
    train_and_measure,
    trainer_options,
    training_arguments,
    with_sample_index,
)
from scilm.training.config import TrainConfig
from scilm.training.losses import token_loss_sums
from scilm.training.trainer import ScilmTrainer

log = logging.getLogger(__name__)


def check_settings(config: TrainConfig) -> None:
    """Seq2seq-only checks, before any file is read."""
    for name in ("max_source_length", "max_target_length", "tokenizer_vocab_size"):
        if getattr(config, name) < 1:
            raise ScilmError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(config, name)})")
    if config.tokenizer_vocab_size < 200 and is_seq2seq_preset(config.model):
        raise ScilmError(f"--tokenizer-vocab-size must be at least 200: the alphabet alone takes ~100 "
                         f"(got {config.tokenizer_vocab_size})")
    if config.lr_decay is not None and not 0 < config.lr_decay <= 1:
        raise ScilmError(f"--lr-decay must be in (0, 1] (got {config.lr_decay})")
    if config.eval_steps is not None and config.eval_steps < 1:
        raise ScilmError(f"--eval-steps must be at least 1 (got {config.eval_steps})")
    if config.eval_max_batches is not None and config.eval_max_batches < 1:
        raise ScilmError(f"--eval-max-batches must be at least 1 (got {config.eval_max_batches})")
    if config.lr_decay is not None and config.sift_beta is not None:
        raise ScilmError("--lr-decay and --sift-beta do not combine: a sifted epoch has no fixed number of "
                         "steps, so sifting schedules the learning rate by data consumed")
    from scilm.models.protein import is_preset as is_protein_preset

    if is_protein_preset(config.model):
        raise ScilmError(f"--model {config.model} is a protein model; JSONL trains a seq2seq model: "
                         "--model t5-tiny, a T5 directory or a hub id such as "
                         "GT4SD/multitask-text-and-chemistry-t5-small-augm")
    protein_only = ("split_column", "valid_split", "class_weights", "min_length", "max_length", "id_column",
                    "drop_missing_labels", "task", "sequence_column", "label_column", "truncate")
    if config.valid and config.is_set("valid_fraction"):
        raise ScilmError("--valid-fraction splits --data; with --valid there is nothing to split")
    given = [f"--{name.replace('_', '-')}" for name in protein_only if config.is_set(name)]
    if given:  # the original silently ignored flags it did not use; we say so
        raise ScilmError(f"{', '.join(given)}: for protein data, not JSONL "
                         "(seq2seq lengths: --max-source-length, --max-target-length)")


def load_splits(config: TrainConfig) -> tuple[list[TextChemExample], list[TextChemExample]]:
    """Train and validation examples: --valid, or a seeded split that keeps both directions of a pair together."""
    examples = read_jsonl(config.data)
    if config.valid:
        return examples, read_jsonl(config.valid)
    if not 0 < config.valid_fraction < 1:
        raise ScilmError(f"--valid-fraction must be in (0, 1) (got {config.valid_fraction})")
    parts = split_examples(examples, valid_fraction=config.valid_fraction, test_fraction=0.0, seed=config.seed)
    if not parts["train"] or not parts["valid"]:
        raise ScilmError(f"{config.data}: too few examples ({len(examples)}) to split off "
                         f"{config.valid_fraction:.0%} for validation; pass --valid")
    return parts["train"], parts["valid"]


def encode(examples: list[TextChemExample], tokenizer, max_source_length: int, max_target_length: int) -> list[dict]:
    """Token ids of each source (input_ids) and target (labels), each ending in </s>, truncated."""
    sources = tokenizer([e.source for e in examples], truncation=True, max_length=max_source_length)
    targets = tokenizer(text_target=[e.target for e in examples], truncation=True, max_length=max_target_length)
    return [{"input_ids": ids, "attention_mask": mask, "labels": labels}
            for ids, mask, labels in zip(sources["input_ids"], sources["attention_mask"], targets["input_ids"])]


def collator(tokenizer, model) -> DataCollatorForSeq2Seq:
    """Pads sources with <pad> and labels with -100, so padding never counts in the loss.

    With the model it also adds decoder_input_ids (labels shifted right), which the sifting
    losses need since they call the model without labels.
    """
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, padding=True)


def epoch_decay_schedule(optimizer, warmup_steps: int, steps_per_epoch: int, decay: float) -> LambdaLR:
    """Linear warm-up, then ``lr * decay ** completed_epochs`` (the original's per-epoch decay)."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warm * decay ** (step // steps_per_epoch)

    return LambdaLR(optimizer, factor)


def task_counts(examples: list[TextChemExample]) -> dict[str, int]:
    counts = Counter(e.task for e in examples)
    return {task: counts[task] for task in TASKS if counts[task]}


def train_seq2seq(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; returns the metrics also written to metrics.json."""
    check_settings(config)
    check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = resolve_precision(config.precision, fp16_safe=False)  # every seq2seq model here is a T5
    train_examples, valid_examples = load_splits(config)
    set_seed(config.seed)

    # Model before data: the tokenizer comes with it (for t5-tiny it is trained on the training texts).
    corpus = [text for e in train_examples for text in (e.source, e.target)]
    model, tokenizer = load_seq2seq_model(config.model, corpus, config.tokenizer_vocab_size, config.seed)
    base_model = model
    if config.lora:
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, TaskType.SEQ_2_SEQ_LM)
    n_trainable, n_total = trainable_parameters(model)
    out = prepare_out_dir(config.out, config.overwrite, config.resume)  # inputs and model are good
    train_set = encode(train_examples, tokenizer, config.max_source_length, config.max_target_length)
    valid_set = encode(valid_examples, tokenizer, config.max_source_length, config.max_target_length)
    # Periodic validation on at most M batches (the original's limit_val_batches); the final one on all.
    limit = config.eval_max_batches * config.eval_batch_size if config.eval_max_batches else len(valid_set)
    periodic_valid = valid_set[:limit] if limit < len(valid_set) else valid_set
    log.info("train %d, validation %d (%s), %d of %d parameters trainable, vocabulary %d",
             len(train_set), len(valid_set), task_counts(train_examples), n_trainable, n_total, len(tokenizer))

    steps_per_epoch = max(1, math.ceil(math.ceil(len(train_set) / config.batch_size) / config.grad_accum))
    trainer_kwargs = dict(model=model, train_dataset=with_sample_index(train_set), eval_dataset=periodic_valid,
                          data_collator=collator(tokenizer, base_model), processing_class=tokenizer,
                          item_loss=token_loss_sums,  # token-weighted over each optimizer step's window
                          **trainer_options(config))
    args_extra = schedule_arguments(config)
    if config.sift_beta is None:
        trainer = ScilmTrainer(args=training_arguments(config, out / "checkpoints", precision, **args_extra),
                               **trainer_kwargs)
    else:
        trainer = sifting_trainer(config, precision, out, trainer_kwargs, args_extra)
    if config.lr_decay is not None:
        # Our own scheduler: created now, the Trainer keeps it (it only builds one when there is none).
        total = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
        trainer.create_optimizer()
        trainer.lr_scheduler = epoch_decay_schedule(
            trainer.optimizer, math.ceil(config.warmup_ratio * total), steps_per_epoch, config.lr_decay)

    mean_tokens = float(np.mean([len(x["input_ids"]) + len(x["labels"]) for x in train_set]))
    metrics = train_and_measure(trainer, config, precision, len(train_set), len(valid_set), mean_tokens,
                                (n_trainable, n_total), eval_dataset=valid_set)
    counts_train, counts_valid = task_counts(train_examples), task_counts(valid_examples)
    metrics["tasks"] = {task: {"n_train": counts_train.get(task, 0), "n_eval": counts_valid.get(task, 0)}
                        for task in TASKS if task in counts_train or task in counts_valid}
    metrics["vocab_size"] = len(tokenizer)
    if config.keep_best:
        metrics["best_checkpoint"] = best_checkpoint(trainer)
    finish_run(trainer, metrics, out, lambda: save_run(trainer.model, tokenizer, out, lora=config.lora))
    return metrics


def schedule_arguments(config: TrainConfig) -> dict[str, Any]:
    """TrainingArguments for validation every N steps and keeping the best checkpoint."""
    if config.eval_steps:
        strategy = {"eval_strategy": "steps", "eval_steps": config.eval_steps}
    elif config.keep_best or not config.max_steps:
        strategy = {"eval_strategy": "epoch"}
    else:
        strategy = {"eval_strategy": "no"}  # a --max-steps smoke run: one validation at the end
    extra: dict[str, Any] = {**strategy, "prediction_loss_only": True}
    if config.keep_best:
        # A (resumable) checkpoint at every validation; the lowest eval_loss is reloaded at the end.
        extra.update(save_strategy=strategy["eval_strategy"], save_steps=config.eval_steps,
                     load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
    return extra


def best_checkpoint(trainer: Trainer) -> dict[str, Any]:
    """The validation (on the periodic subset) whose checkpoint model/ holds."""
    path = trainer.state.best_model_checkpoint
    return {"step": int(Path(path).name.rsplit("-", 1)[-1]) if path else None,
            "eval_loss": trainer.state.best_metric}


def sifting_trainer(config: TrainConfig, precision: str, out: Path, trainer_kwargs: dict,
                    args_extra: dict[str, Any]) -> Trainer:
    """The Trainer with smart sifting, scored by the per-sample token-mean seq2seq loss."""
    from scilm.sifting import Seq2SeqLoss
    from scilm.training import sifting

    return sifting.build_sifting_trainer(config, precision, out, trainer_kwargs, Seq2SeqLoss(), args_extra)
