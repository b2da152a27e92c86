"""Recipe: masked-language-model (continued) pre-training of an ESM-2 encoder on unlabelled sequences.

The published systems fine-tune a *pretrained* model. Offline, scilm makes one the same way ESM-2
was made (15 % masking, 80/10/10 replacement), only far smaller, so that benchmarks of
fine-tuning methods start from where real users start.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    EsmForMaskedLM,
    Trainer,
    TrainingArguments,
    set_seed,
)

from scilm.models.protein import esm2_config, esm2_tokenizer, is_preset, resolve_source
from scilm.training.common import replace_dir_atomic, write_json_atomic


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
) -> Path:
    """Pre-train ``model`` (preset or directory) with masked-LM loss; returns ``out/model``."""
    set_seed(seed)
    if is_preset(model):
        net, tokenizer = EsmForMaskedLM(esm2_config(model)), esm2_tokenizer()
    else:
        from transformers import AutoTokenizer

        model = resolve_source(model)
        net = AutoModelForMaskedLM.from_pretrained(model, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(model)
    out = Path(out)
    encoded = tokenizer(sequences, truncation=True, max_length=truncate + 2)
    dataset = [{"input_ids": ids} for ids in encoded["input_ids"]]
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        num_train_epochs=epochs,
        warmup_steps=0.05,
        weight_decay=0.01,
        seed=seed,
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        logging_steps=20,
        report_to=[],
        disable_tqdm=not progress,
        dataloader_pin_memory=False,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    trainer = Trainer(model=net, args=args, train_dataset=dataset, data_collator=collator)
    started = time.perf_counter()
    result = trainer.train()
    tmp = out / ".model.partial"
    trainer.model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    replace_dir_atomic(tmp, out / "model")
    write_json_atomic(out / "metrics.json", {
        "mlm_loss": result.training_loss, "runtime_s": time.perf_counter() - started,
        "n_sequences": len(sequences), "epochs": epochs, "model": model, "lr": lr, "truncate": truncate,
    })
    return out / "model"
