"""Recipe: train a Text+Chem T5 model on ``source``/``target`` JSONL (all five tasks at once).

Reads top to bottom like the classification recipe: read and check the data, build the model (its
tokenizer trained on the training texts for the ``t5-tiny`` preset; PEFT chosen at construction),
tokenize, build the Trainer with the original's schedule as settings (config.py), train, evaluate
on the whole validation set, write ``model/`` and ``metrics.json``. Two known bugs of the original
are fixed: padding is masked out of the loss (label -100) and a file without a final newline keeps
its last example.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import numpy as np
from peft import TaskType
from torch.optim.lr_scheduler import LambdaLR
from transformers import DataCollatorForSeq2Seq, set_seed

from scilm.data.textchem import TASKS, TextChemExample, read_jsonl, split_examples
from scilm.errors import ScilmError, name
from scilm.models.adapters import trainable_parameters
from scilm.models.seq2seq import load_seq2seq_model
from scilm.training.common import (
    best_checkpoint,
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
from scilm.training.losses import token_loss_sums
from scilm.training.recipes.seq2seq.config import Config

log = logging.getLogger(__name__)


def load_splits(config: Config) -> tuple[list[TextChemExample], list[TextChemExample]]:
    """Train and validation examples: ``valid``, or a seeded split that keeps both directions of a pair together."""
    examples = read_jsonl(config.data)
    if config.valid:
        return examples, read_jsonl(config.valid)
    parts = split_examples(examples, valid_fraction=config.valid_fraction, test_fraction=0.0, seed=config.seed)
    if not parts["train"] or not parts["valid"]:
        raise ScilmError(f"{config.data}: too few examples ({len(examples)}) to split off "
                         f"{config.valid_fraction:.0%} for validation; give a {name('valid')} file")
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
    """Examples per Text+Chem task, in the tasks' order (tasks absent left out)."""
    counts = Counter(e.task for e in examples)
    return {task: counts[task] for task in TASKS if counts[task]}


def use_epoch_decay(trainer, config: Config, n_train: int) -> None:
    """``lr_decay``: our own scheduler, created now; the Trainer keeps it (it builds one only when there is none)."""
    steps_per_epoch = max(1, math.ceil(math.ceil(n_train / config.batch_size) / config.grad_accum))
    total = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    trainer.create_optimizer()
    trainer.lr_scheduler = epoch_decay_schedule(
        trainer.optimizer, math.ceil(config.warmup_ratio * total), steps_per_epoch, config.lr_decay)


def run(config: Config) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; returns the metrics also written to metrics.json."""
    check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = resolve_precision(config.precision, fp16_safe=False)  # every seq2seq model here is a T5
    train_examples, valid_examples = load_splits(config)
    set_seed(config.seed)

    # Model before data: the tokenizer comes with it (for t5-tiny it is trained on the training texts).
    corpus = [text for e in train_examples for text in (e.source, e.target)]
    base_model, tokenizer = load_seq2seq_model(config.model, corpus, config.tokenizer_vocab_size, config.seed)
    model = prepare_model(base_model, config, TaskType.SEQ_2_SEQ_LM)
    n_trainable, n_total = trainable_parameters(model)
    out = prepare_out_dir(config.out, config.overwrite, config.resume)  # inputs and model are good
    train_set = encode(train_examples, tokenizer, config.max_source_length, config.max_target_length)
    valid_set = encode(valid_examples, tokenizer, config.max_source_length, config.max_target_length)
    log.info("train %d, validation %d (%s), %d of %d parameters trainable, vocabulary %d",
             len(train_set), len(valid_set), task_counts(train_examples), n_trainable, n_total, len(tokenizer))

    trainer_kwargs = dict(model=model, train_dataset=with_sample_index(train_set),
                          eval_dataset=periodic_subset(valid_set, config),
                          data_collator=collator(tokenizer, base_model), processing_class=tokenizer,
                          item_loss=token_loss_sums,  # token-weighted over each optimizer step's window
                          **trainer_options(config))
    from scilm.sifting import Seq2SeqLoss

    trainer = build_trainer(config, out, precision, trainer_kwargs, Seq2SeqLoss(), {"prediction_loss_only": True})
    if config.lr_decay is not None:
        use_epoch_decay(trainer, config, len(train_set))

    mean_tokens = float(np.mean([len(x["input_ids"]) + len(x["labels"]) for x in train_set]))
    metrics = train_and_measure(trainer, config, precision, len(train_set), len(valid_set), mean_tokens,
                                (n_trainable, n_total), eval_dataset=valid_set)
    counts_train, counts_valid = task_counts(train_examples), task_counts(valid_examples)
    metrics["tasks"] = {task: {"n_train": counts_train.get(task, 0), "n_eval": counts_valid.get(task, 0)}
                        for task in TASKS if task in counts_train or task in counts_valid}
    metrics["vocab_size"] = len(tokenizer)
    if config.keep_best:
        metrics["best_checkpoint"] = best_checkpoint(trainer)
    finish_run(trainer, metrics, out,
               lambda: save_run(trainer.model, tokenizer, out, lora=config.peft_method != "none"))
    return metrics
