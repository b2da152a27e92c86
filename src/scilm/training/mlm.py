"""Recipe: masked-language-model (continued) pre-training of an ESM-2 encoder on unlabelled sequences.

The published systems fine-tune a *pretrained* model. Offline, scilm makes one the same way ESM-2
was made (15 % masking, 80/10/10 replacement), only far smaller, so that benchmarks of
fine-tuning methods start from where real users start.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import torch
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    EsmForMaskedLM,
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
    prepare_out_dir,
    save_run,
    with_sample_index,
)
from scilm.training.trainer import INDEX_KEY, ScilmTrainer


class BatchSeededMaskingCollator:
    """ESM-2 masking (15 %, 80/10/10) with a generator seeded by the run seed and the batch's samples.

    The masks are a function of the batch, not of how many batches came before, so a resumed run
    masks exactly as the uninterrupted one did (the Trainer re-collates the batches it skips, and
    restores its RNG only after fetching the next one; a global-RNG collator drifts by a batch).
    """

    def __init__(self, tokenizer, seed: int, mlm_probability: float = 0.15):
        self.seed = seed
        self.masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)

    def __call__(self, features: list[dict]) -> dict:
        indices = [int(f[INDEX_KEY]) for f in features]
        key = zlib.crc32(torch.tensor([self.seed, *indices], dtype=torch.int64).numpy().tobytes())
        self.masking.generator = torch.Generator().manual_seed(key)
        return self.masking([{k: v for k, v in f.items() if k != INDEX_KEY} for f in features])


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
) -> Path:
    """Pre-train ``model`` (preset or directory) with masked-LM loss; returns ``out/model``.

    ``save_every`` / ``resume`` / ``overwrite`` work as in ``scilm train`` (atomic checkpoints,
    SIGTERM saves one and exits non-zero).
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
    out = prepare_out_dir(out, overwrite, resume)  # the model loaded: now the directory is ours
    record_max_residues(net, truncate)  # predict/embed from this model default to it
    # cut before tokenizing (one token per residue), as train/predict/embed/serve do
    encoded = tokenizer(truncate_sequences(sequences, truncate)[0], truncation=True, max_length=truncate + 2)
    dataset = with_sample_index([{"input_ids": ids} for ids in encoded["input_ids"]])
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=batch_size,
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
    collator = BatchSeededMaskingCollator(tokenizer, seed)
    trainer = ScilmTrainer(model=net, args=args, train_dataset=dataset, data_collator=collator)
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
