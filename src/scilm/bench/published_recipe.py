"""The published ESM-2 fine-tuning recipe, written as a user of Hugging Face transformers writes it.

This is the baseline row of ``scilm bench throughput`` (``../shared/docs/SOURCES.md``, section 1):
``AutoModelForSequenceClassification`` with transformers' default attention, the tokenizer with
truncation, ``DataCollatorWithPadding``, a ``Trainer`` subclass whose ``compute_loss`` is class-weighted
cross-entropy (``nn.CrossEntropyLoss(weight=...)``, weights ``N / (C * count_c)``: scikit-learn's
"balanced"), per-device batch 8, learning rate 1e-4, AdamW (the Trainer's default optimizer), one
epoch, the Trainer's default random sampler, validation at the end of the epoch. fp32 on a CPU (the
original ran bf16 on a GPU).

It deliberately imports nothing from scilm: it is the code scilm is compared with. The bench adds
its measuring hooks from outside (``callbacks`` are passed through to the Trainer, empty by default).

Data: CSV files with the DeepLoc-2 columns the original read, ``Sequence`` and ``Membrane`` (0/1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """(C,) weights ``N / (C * count_c)`` of integer ``labels`` (N,) in ``0..C-1`` (scikit-learn's
    ``compute_class_weight('balanced')``). Raises ValueError when a class has no example."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"every class needs a training example (counts {counts.tolist()})")
    return len(labels) / (num_classes * counts)


class WeightedTrainer(Trainer):
    """The Trainer with class-weighted cross-entropy: ``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` over each batch
    (PyTorch's ``reduction='mean'`` with weights), as the published recipe's Trainer subclass computes it.

    class_weights: (C,) weight per class.
    """

    def __init__(self, *args: Any, class_weights: np.ndarray, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Weighted cross-entropy of the batch's logits (B, C) against its labels (B,)."""
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.get("logits")
        loss_fct = nn.CrossEntropyLoss(weight=self.class_weights.to(logits.device))
        loss = loss_fct(logits.view(-1, model.config.num_labels), labels.view(-1))
        return (loss, outputs) if return_outputs else loss


def compute_metrics(eval_pred) -> dict[str, float]:
    """Validation accuracy: argmax of the logits (N, C) against the labels (N,)."""
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def encode(frame: pd.DataFrame, tokenizer, max_residues: int) -> list[dict[str, Any]]:
    """One example per row: token ids with <cls>/<eos>, cut to ``max_residues`` residues, and the label."""
    encoded = tokenizer(list(frame["Sequence"]), truncation=True, max_length=max_residues + 2)
    return [{"input_ids": ids, "attention_mask": mask, "labels": int(label)}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["Membrane"])]


def run(train_csv: str | Path, valid_csv: str | Path, model_dir: str | Path, out: str | Path, max_residues: int,
        batch_size: int = 8, lr: float = 1e-4, epochs: float = 1.0, seed: int = 0,
        callbacks: Sequence = ()) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on ``train_csv``, validate on ``valid_csv`` after the epoch, save ``out/model``
    and ``out/metrics.json``; returns those metrics (``eval_accuracy``, ``eval_loss``, ``global_step``,
    ``n_train``, ``n_eval``, the Trainer's ``train_runtime`` in seconds)."""
    set_seed(seed)
    out = Path(out)
    train_frame, valid_frame = pd.read_csv(train_csv), pd.read_csv(valid_csv)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
    train_set = encode(train_frame, tokenizer, max_residues)
    valid_set = encode(valid_frame, tokenizer, max_residues)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=lr,
        num_train_epochs=epochs,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=10,
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = WeightedTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=valid_set,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        compute_metrics=compute_metrics, callbacks=list(callbacks),
        class_weights=balanced_class_weights([x["labels"] for x in train_set], 2),
    )
    result = trainer.train()
    final = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry][-1]
    trainer.save_model(str(out / "model"))
    metrics = {"eval_accuracy": final["eval_accuracy"], "eval_loss": final["eval_loss"],
               "global_step": trainer.state.global_step, "n_train": len(train_set), "n_eval": len(valid_set),
               "train_runtime": result.metrics["train_runtime"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics
