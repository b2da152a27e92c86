"""One typed configuration per training run: defaults declared once, validated once, saved with the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scilm.errors import ScilmError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# random / reuse-random: controls that drop at the same rate as relative / reuse, blind to the losses
SIFT_POLICIES = ("relative", "reuse", "random", "reuse-random")


@dataclass
class TrainConfig:
    """Everything ``scilm train`` needs. CLI flags and YAML keys have the same names."""

    # -- data
    data: str = ""  # training file: FASTA, CSV/TSV (protein) or JSONL (seq2seq)
    valid: str | None = None  # validation file; without it a stratified split of `data`
    valid_fraction: float = 0.2  # share held out when there is no --valid / --split-column
    task: str = "membrane"  # membrane | localization: FASTA headers, or a table's Membrane / one-hot location columns
    sequence_column: str = "Sequence"
    label_column: str = "Membrane"
    id_column: str | None = None
    split_column: str | None = None  # e.g. Partition: homology-aware split
    valid_split: str | None = None  # the split value that validates, e.g. 4
    min_length: int | None = None  # drop shorter sequences (published recipe: 100)
    max_length: int | None = None  # drop longer sequences (published recipe: 512)
    truncate: int = 1022  # residues kept per sequence (ESM-2 sees at most 1022 + 2 specials)
    drop_missing_labels: bool = False  # exclude (and count) rows whose label is empty/NaN/NA/None; else an error
    # -- seq2seq (Text+Chem JSONL); a non-default value with protein data is an error
    max_source_length: int = 512  # tokens kept of each source (prompt + input)
    max_target_length: int = 512  # tokens kept of each target
    tokenizer_vocab_size: int = 1000  # t5-tiny only: size of the tokenizer trained on the corpus
    # -- model
    model: str = "esm2-tiny"  # preset, local directory or hub id
    out: str = "runs/scilm"
    overwrite: bool = False  # replace a finished run already in --out
    # -- optimisation
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    eval_batch_size: int = 32
    lr: float | None = None  # None: 1e-4 for full fine-tuning, 1e-3 with LoRA
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    group_by_length: bool = True  # batches of similar length: less padding, faster
    lr_decay: float | None = None  # per-epoch multiplicative decay instead of linear (the original T5: 0.99)
    eval_steps: int | None = None  # validate every N steps (default: every epoch)
    eval_max_batches: int | None = None  # validate on at most M batches (the original: 500)
    keep_best: bool = False  # at the end, keep the checkpoint with the lowest validation loss
    # -- efficiency switches (section 1 of SOURCES.md)
    class_weights: bool = False  # loss weights inversely proportional to class frequency
    grad_accum: int = 1  # optimizer step every N micro-batches
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    lora: bool = False  # train low-rank adapters + the classification head only
    lora_r: int = 8  # higher = more capacity and memory
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32 (never bf16 on CPU)
    # -- smart sifting (section 2 of SOURCES.md); off unless sift_beta is set
    sift_beta: float | None = None  # keep ~1/(1+beta) of the samples: 0.5 -> 2/3, 1 -> 1/2, 3 -> 1/4
    sift_history: int = 500  # recent losses that rank a new one (its percentile)
    sift_delay: int = 10  # steps before sifting starts (a fresh model's losses mean little)
    sift_policy: str = "relative"  # relative: extra scoring pass; reuse: last epoch's own losses; random: control
    # -- scale-out and fault tolerance
    nproc: int = 1  # data-parallel processes on this machine (scilm starts torchrun for you)
    fsdp: bool = False  # shard parameters, gradients and optimizer state over the processes (FSDP2)
    fsdp_config: str | None = None  # FSDP JSON config file (the Trainer's fsdp_config keys)
    deepspeed: str | None = None  # DeepSpeed JSON config file (ZeRO stage, offload)
    save_every: int | None = None  # checkpoint every N optimizer steps (plus on SIGTERM / Ctrl-C)
    keep_checkpoints: int = 2  # complete checkpoints kept; older ones are deleted
    resume: bool = False  # continue from the latest complete checkpoint in OUT/checkpoints
    skip_nonfinite: bool = False  # skip (and count) batches with a NaN/inf loss instead of stopping
    # -- logging
    progress: bool = True  # progress bar
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for recipe-specific settings

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.lora else 1e-4

    def validate(self) -> "TrainConfig":
        """Reject bad values and combinations before any work is done."""
        if not self.data:
            raise ScilmError("--data is required")
        if self.precision not in PRECISIONS:
            raise ScilmError(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        positive = {"batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "grad_accum": self.grad_accum, "lora_r": self.lora_r, "truncate": self.truncate}
        for name, value in positive.items():
            if value < 1:
                raise ScilmError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.epochs <= 0 and not self.max_steps:
            raise ScilmError(f"--epochs must be positive (got {self.epochs})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ScilmError(f"--max-steps must be at least 1 (got {self.max_steps})")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ScilmError(f"--lr must be in (0, 1) (got {self.lr})")
        if not 0 <= self.warmup_ratio < 1:
            raise ScilmError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if not 0 <= self.lora_dropout < 1:
            raise ScilmError(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        if self.sift_beta is not None:
            if not self.sift_beta > 0:
                raise ScilmError(f"--sift-beta must be positive (got {self.sift_beta})")
            if self.sift_policy not in SIFT_POLICIES:
                raise ScilmError(f"--sift-policy must be one of {', '.join(SIFT_POLICIES)} (got {self.sift_policy!r})")
            if self.sift_history < 2 or self.sift_delay < 0:
                raise ScilmError("--sift-history must be at least 2 and --sift-delay at least 0")
        if self.nproc < 1 or self.keep_checkpoints < 1 or (self.save_every is not None and self.save_every < 1):
            raise ScilmError("--nproc, --keep-checkpoints and --save-every must be at least 1")
        from scilm.training.distributed import world_size  # WORLD_SIZE under torchrun / accelerate launch

        processes = max(self.nproc, world_size())
        if self.sift_beta is not None and self.sift_policy.startswith("reuse") and (processes > 1 or self.resume):
            raise ScilmError("--sift-policy reuse runs in one process and cannot resume (its epochs change "
                             "length); use --sift-policy relative")
        if self.keep_best and self.save_every:
            raise ScilmError("--keep-best already saves a checkpoint at every validation; drop --save-every "
                             "(--resume continues from those)")
        if self.resume and self.overwrite:
            raise ScilmError("give either --resume (continue the run in --out) or --overwrite (start over), not both")
        for name in ("deepspeed", "fsdp_config"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ScilmError(f"--{name.replace('_', '-')} {value}: no such file")
        if self.deepspeed and self.fsdp:
            raise ScilmError("give either --deepspeed or --fsdp, not both")
        if self.deepspeed or self.fsdp:
            import torch

            if not torch.cuda.is_available():
                raise ScilmError(f"--{'fsdp' if self.fsdp else 'deepspeed'} needs CUDA GPUs (Accelerate shards "
                                 "models only across GPUs); on CPU, --nproc N trains data-parallel (DDP)")
        if (self.split_column is None) != (self.valid_split is None):
            raise ScilmError("--split-column and --valid-split go together")
        if self.valid and self.split_column:
            raise ScilmError("give either --valid or --split-column/--valid-split, not both")
        if self.min_length and self.max_length and self.min_length > self.max_length:
            raise ScilmError(f"--min-length {self.min_length} is above --max-length {self.max_length}")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr"] = self.resolved_lr
        return data


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """A YAML file of TrainConfig keys (optional), then the command-line values on top."""
    values: dict[str, Any] = {}
    if path is not None:
        from scilm.data.textio import open_text

        path = Path(path)
        if not path.is_file():
            raise ScilmError(f"{path}: no such config file")
        try:
            with open_text(path) as handle:  # UTF-8, a byte-order mark ignored
                loaded = yaml.safe_load(handle.read()) or {}
        except yaml.YAMLError as exc:
            raise ScilmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ScilmError(f"{path}: a config is a mapping of settings to values")
        values.update({key.replace("-", "_"): value for key, value in loaded.items()})
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{path}: " if path is not None else ""
        raise ScilmError(f"{where}unknown setting(s): {', '.join(unknown)}")
    try:
        return TrainConfig(**values).validate()
    except TypeError as exc:
        raise ScilmError(f"bad configuration: {exc}") from None
