"""Recipe: masked-language-model (continued) pre-training of an ESM-2 encoder on unlabelled sequences.

The published systems fine-tune a *pretrained* model. Offline, scilm makes one the same way ESM-2
was made (15 % masking, 80/10/10 replacement), only far smaller, so that benchmarks of
fine-tuning methods start from where real users start.
"""

from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    EsmForMaskedLM,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from scilm.errors import ScilmError
from scilm.models.loading import load_pretrained
from scilm.models.protein import (
    _first_line,
    esm2_config,
    esm2_tokenizer,
    is_preset,
    load_tokenizer,
    record_max_residues,
    resolve_source,
    truncate_sequences,
)
from scilm.training.common import (
    check_out_dir,
    finish_run,
    freeze_unused,
    prepare_out_dir,
    save_run,
    with_sample_index,
)
from scilm.training.losses import token_loss_sums
from scilm.training.trainer import INDEX_KEY, ScilmTrainer


class SampleSeededMaskingCollator:
    """ESM-2 masking (15 %, 80/10/10) drawn per sample from a generator seeded by (seed, epoch, sample).

    A sample's mask is a function of the run seed, the epoch and the sample alone: not of the other
    samples in its batch (so ``--batch-size 8`` and ``4 x --grad-accum 2`` mask alike), nor of how
    many batches came before (so a resumed run masks exactly as the uninterrupted one: the Trainer
    skips batches without collating them). A new epoch draws new masks (dynamic masking, as ESM-2).
    ``epoch`` is set by :class:`_MaskingEpoch` at each epoch's start.

    The masking itself is transformers' ``DataCollatorForLanguageModeling`` with our generator. It is
    built without ``seed``: with one, it replaces any generator it did not create itself on its first
    call in a process, which masked the first batch after a resume differently (issue 11, case 0).
    """

    def __init__(self, tokenizer, seed: int, mlm_probability: float = 0.15):
        self.seed, self.epoch = seed, 0
        self.pad_token_id = tokenizer.pad_token_id
        self.masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)

    def __call__(self, features: list[dict]) -> dict:
        rows = []
        for feature in features:
            key = zlib.crc32(torch.tensor([self.seed, self.epoch, int(feature[INDEX_KEY])], dtype=torch.int64)
                             .numpy().tobytes())
            self.masking.generator = torch.Generator().manual_seed(key)
            rows.append(self.masking([{k: v for k, v in feature.items() if k != INDEX_KEY}]))
        length = max(row["input_ids"].shape[1] for row in rows)
        pad = {"input_ids": self.pad_token_id, "labels": -100, "attention_mask": 0}
        return {key: torch.cat([F.pad(row[key], (0, length - row[key].shape[1]), value=value) for row in rows])
                for key, value in pad.items() if key in rows[0]}


class _MaskingEpoch(TrainerCallback):
    """Tells the collator which epoch it masks for (the Trainer's epoch count, also after a resume)."""

    def __init__(self, collator: SampleSeededMaskingCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = math.floor(state.epoch or 0)


def pretrain_mlm(
    sequences: list[str],
    model: str,
    out: str | Path,
    epochs: float = 1.0,
    batch_size: int = 16,
    lr: float = 1e-3,
    truncate: int = 512,
    seed: int = 0,
    progress: bool = False,
    save_every: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    grad_accum: int = 1,
) -> Path:
    """Pre-train ``model`` (preset or directory) with masked-LM loss; returns ``out/model``.

    ``save_every`` / ``resume`` / ``overwrite`` work as in ``scilm train`` (atomic checkpoints,
    SIGTERM saves one and exits non-zero). ``grad_accum``: micro-batches per optimizer step; the
    loss of a step is the summed masked-token loss over all of them / their masked-token count.
    """
    if truncate < 1:
        raise ScilmError(f"--truncate must be at least 1 (got {truncate})")
    check_out_dir(out, overwrite, resume)  # fail fast; nothing written yet
    set_seed(seed)
    if is_preset(model):
        net, tokenizer = EsmForMaskedLM(esm2_config(model)), esm2_tokenizer()
    else:
        model = resolve_source(model)
        tokenizer = load_tokenizer(model)
        try:
            net = load_pretrained(AutoModelForMaskedLM, model, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise ScilmError(f"--model {model}: cannot load as a masked-LM model ({_first_line(exc)})") from None
    freeze_unused(net)
    out = prepare_out_dir(out, overwrite, resume)  # the model loaded: now the directory is ours
    record_max_residues(net, truncate)  # predict/embed from this model default to it
    # cut before tokenizing (one token per residue), as train/predict/embed/serve do
    encoded = tokenizer(truncate_sequences(sequences, truncate)[0], truncation=True, max_length=truncate + 2)
    dataset = with_sample_index([{"input_ids": ids} for ids in encoded["input_ids"]])
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        num_train_epochs=epochs,
        warmup_steps=0.05,
        weight_decay=0.01,
        seed=seed,
        train_sampling_strategy="group_by_length",
        save_strategy="steps" if save_every else "no",
        save_steps=save_every or 500,
        logging_steps=20,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,  # the collator needs each example's sample_index
        report_to=[],
        disable_tqdm=not progress,
        dataloader_pin_memory=False,
    )
    collator = SampleSeededMaskingCollator(tokenizer, seed)
    trainer = ScilmTrainer(model=net, args=args, train_dataset=dataset, data_collator=collator,
                           item_loss=token_loss_sums)  # summed over each step's masked tokens / their count
    trainer.add_callback(_MaskingEpoch(collator))
    started = time.perf_counter()
    result = trainer.train_or_resume(resume)
    metrics = {
        "mlm_loss": trainer.run_train_loss(result.training_loss), "runtime_s": time.perf_counter() - started,
        "global_step": trainer.state.global_step,
        "resumed_from_step": trainer.resumed_step or None,
        "n_sequences": len(sequences), "epochs": epochs, "model": model, "lr": lr, "truncate": truncate,
    }
    finish_run(trainer, metrics, out, lambda: save_run(trainer.model, tokenizer, out, lora=False))
    return out / "model"
