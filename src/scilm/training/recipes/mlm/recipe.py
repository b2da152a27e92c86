"""Recipe: masked-language-model (continued) pre-training of an ESM-2 encoder on unlabelled sequences.

The published systems fine-tune a *pretrained* model. Offline, scilm makes one the same way ESM-2
was made (15 % masking, 80/10/10 replacement), only far smaller, so that benchmarks of
fine-tuning methods start from where real users start. Reads top to bottom: read the sequences,
build the model, claim ``out``, encode, train, write ``model/`` and ``metrics.json``.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    EsmForMaskedLM,
    TrainerCallback,
    set_seed,
)

from scilm.errors import ScilmError
from scilm.models.adapters import trainable_parameters
from scilm.models.fused_gelu import use_fused_gelu
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
    resolve_precision,
    save_run,
    train_and_measure,
    trainer_options,
    training_arguments,
    with_sample_index,
)
from scilm.training.losses import token_loss_sums
from scilm.training.recipes.mlm.config import Config
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


def load_model(source: str):
    """(masked-LM model, tokenizer) of a preset (random weights), a shipped model, a directory or a hub id."""
    if is_preset(source):
        model, tokenizer = EsmForMaskedLM(esm2_config(source)), esm2_tokenizer()
        use_fused_gelu(model)
        return model, tokenizer
    source = resolve_source(source)
    tokenizer = load_tokenizer(source)
    try:
        model = load_pretrained(AutoModelForMaskedLM, source, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ScilmError(f"--model {source}: cannot load as a masked-LM model ({_first_line(exc)})") from None
    return model, tokenizer


def read_sequences(config: Config) -> list[str]:
    """Every sequence of ``config.data`` (FASTA or a table's sequence column; labels unused), in file order."""
    from scilm.data.protein import read_proteins

    records = read_proteins(config.data, task=None, sequence_column=config.sequence_column, label_column=None,
                            unique_ids=False)
    return [r.sequence for r in records]


def run(config: Config, sequences: list[str] | None = None) -> dict[str, Any]:
    """Pre-train ``config.model`` on ``config.data`` (or ``sequences``); the metrics written to metrics.json.

    Checkpoints, ``resume`` and SIGTERM work as in every recipe. The loss of an optimizer step is the
    summed masked-token loss over all its micro-batches / their masked-token count.
    """
    check_out_dir(config.out, config.overwrite, config.resume)  # fail fast; nothing written yet
    precision = resolve_precision(config.precision)
    sequences = read_sequences(config) if sequences is None else sequences
    set_seed(config.seed)
    net, tokenizer = load_model(config.model)
    freeze_unused(net)
    n_trainable, n_total = trainable_parameters(net)
    out = prepare_out_dir(config.out, config.overwrite, config.resume)  # the model loaded: the directory is ours
    record_max_residues(net, config.truncate)  # predict/embed from this model default to it
    # cut before tokenizing (one token per residue), as train/predict/embed/serve do
    cut, _ = truncate_sequences(sequences, config.truncate)
    encoded = tokenizer(cut, truncation=True, max_length=config.truncate + 2)
    dataset = with_sample_index([{"input_ids": ids} for ids in encoded["input_ids"]])
    collator = SampleSeededMaskingCollator(tokenizer, config.seed, config.mlm_probability)
    trainer = ScilmTrainer(model=net, args=training_arguments(config, out / "checkpoints", precision),
                           train_dataset=dataset, data_collator=collator, processing_class=tokenizer,
                           item_loss=token_loss_sums, **trainer_options(config))  # / each step's masked tokens
    trainer.add_callback(_MaskingEpoch(collator))
    mean_tokens = sum(len(ids) for ids in encoded["input_ids"]) / max(1, len(encoded["input_ids"]))
    metrics = train_and_measure(trainer, config, precision, len(sequences), 0, mean_tokens, (n_trainable, n_total))
    metrics.update(mlm_loss=metrics["train_loss"], n_sequences=len(sequences), model=config.model)
    finish_run(trainer, metrics, out, lambda: save_run(trainer.model, tokenizer, out, lora=False))
    return metrics


def pretrain_mlm(sequences: list[str], model: str, out: str | Path, **settings: Any) -> Path:
    """Pre-train ``model`` on ``sequences`` from a notebook; returns ``out/model``.

    ``settings`` are the recipe's (see :class:`scilm.training.recipes.mlm.config.Config`): ``epochs``,
    ``batch_size``, ``lr``, ``truncate``, ``seed``, ``save_every``, ``resume``, ``overwrite``,
    ``grad_accum``, ``progress`` ... Raises ScilmError for bad settings.
    """
    config = Config(data="<sequences>", model=model, out=str(out), **{"progress": False, **settings}).validate()
    run(config, sequences)
    return Path(out) / "model"
