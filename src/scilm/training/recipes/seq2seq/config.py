"""Settings of the Text+Chem seq2seq recipe (``--task seq2seq``, the default for JSONL data).

The original schedule (GT4SD language-modeling trainer, SOURCES.md section 3) maps to
``--lr 6e-4 --lr-decay 0.99 --batch-size 8 --grad-accum 4 --eval-steps 20000
--eval-max-batches 500 --keep-best --epochs 1 --warmup-ratio 0`` (it had no warm-up).
"""

from __future__ import annotations

from dataclasses import dataclass

from scilm.errors import ScilmError, name
from scilm.training.settings import (
    DataSettings,
    EvalSettings,
    ModelSettings,
    OptimSettings,
    RunSettings,
    SiftSettings,
    setting,
)


@dataclass
class Config(RunSettings, SiftSettings, EvalSettings, OptimSettings, ModelSettings, DataSettings):
    """Train a T5 on ``source``/``target`` JSONL, all five Text+Chem tasks at once."""

    model: str = setting("t5-tiny", "t5-tiny (a tokenizer trained on the data, random weights), a T5 directory or "
                                    "a hub id such as GT4SD/multitask-text-and-chemistry-t5-small-augm.")
    task: str = setting("seq2seq", "What to train (this recipe: seq2seq).")
    max_source_length: int = setting(512, "Seq2seq: tokens kept of each source (prompt + input).")
    max_target_length: int = setting(512, "Seq2seq: tokens kept of each target.")
    tokenizer_vocab_size: int = setting(1000, "t5-tiny only: vocabulary size of the tokenizer trained on the "
                                              "training texts.")
    lr_decay: float | None = setting(None, "Per-epoch multiplicative learning-rate decay instead of linear (the "
                                           "original T5: 0.99).")
    precision: str = setting("auto", "auto | fp32 | bf16 (auto: bf16 on a GPU that supports it, else fp32; T5 "
                                     "overflows in fp16, so fp16 is refused).")

    def check_recipe(self) -> None:
        from scilm.models.protein import is_preset as is_protein_preset
        from scilm.models.seq2seq import is_seq2seq_preset

        if self.task != "seq2seq":
            raise ScilmError(f"{name('task')} {self.task!r}: this recipe trains seq2seq")
        for key in ("max_source_length", "max_target_length", "tokenizer_vocab_size"):
            if getattr(self, key) < 1:
                raise ScilmError(f"{name(key)} must be at least 1 (got {getattr(self, key)})")
        if self.tokenizer_vocab_size < 200 and is_seq2seq_preset(self.model):
            raise ScilmError(f"{name('tokenizer_vocab_size')} must be at least 200: the alphabet alone takes ~100 "
                             f"(got {self.tokenizer_vocab_size})")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ScilmError(f"{name('lr_decay')} must be in (0, 1] (got {self.lr_decay})")
        if self.lr_decay is not None and self.sift_beta is not None:
            raise ScilmError(f"{name('lr_decay')} and {name('sift_beta')} do not combine: a sifted epoch has no "
                             "fixed number of steps, so sifting schedules the learning rate by data consumed")
        if self.precision == "fp16":
            raise ScilmError(f"{name('precision')} fp16: T5 overflows in fp16 (inf/NaN losses, a known T5 problem); "
                             f"use bf16 on a GPU that has it, or fp32 ({name('precision')} auto picks between them)")
        if self.freeze_backbone:
            raise ScilmError(f"{name('freeze_backbone')}: a seq2seq model has no separate task head to train alone")
        if is_protein_preset(self.model):
            raise ScilmError(f"{name('model')} {self.model} is a protein model; JSONL trains a seq2seq model: "
                             "t5-tiny, a T5 directory or a hub id such as "
                             "GT4SD/multitask-text-and-chemistry-t5-small-augm")
