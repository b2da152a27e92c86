"""One typed configuration per training run: defaults declared once, validated once, saved with the run."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scilm.errors import ScilmError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# random / reuse-random: controls that drop at the same rate as relative / reuse, blind to the losses
SIFT_POLICIES = ("relative", "reuse", "random", "reuse-random")


def setting(default: Any, help: str) -> Any:
    """A TrainConfig field: its default and help, declared once (the CLI's options are built from them)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything ``scilm train`` needs. CLI flags and YAML keys have the same names."""

    # -- data
    data: str = setting("", 'Training file: FASTA (DeepLoc headers), CSV/TSV (protein) or JSONL (Text+Chem seq2seq).')
    valid: str | None = setting(None, 'Validation file; without it a stratified split of --data.')
    valid_fraction: float = setting(0.2, 'Share held out for validation when there is no --valid / --split-column.')
    task: str = setting("membrane", "membrane | localization: from the FASTA DeepLoc header, or a table's Membrane / "
                                    "ten one-hot location columns.")
    sequence_column: str = setting("Sequence", 'Table column with sequences.')
    label_column: str = setting("Membrane", 'Table column with labels.')
    id_column: str | None = setting(None, 'Table column with ids (none: ACC/id/ID/sid/accession/name if present, else row numbers).')
    split_column: str | None = setting(None, 'Table column of homology partitions, e.g. Partition (homology-aware split).')
    valid_split: str | None = setting(None, 'Value of --split-column that validates, e.g. 4.')
    min_length: int | None = setting(None, 'Drop shorter sequences (published recipe: 100).')
    max_length: int | None = setting(None, 'Drop longer sequences (published recipe: 512).')
    truncate: int = setting(1022, 'Residues kept per sequence (ESM-2 sees at most 1022 + 2 special tokens).')
    drop_missing_labels: bool = setting(False, "Exclude (and count) rows whose label is empty/NaN/NA/None; "
                                               "else such a row is an error.")
    # -- seq2seq (Text+Chem JSONL); a non-default value with protein data is an error
    max_source_length: int = setting(512, 'Seq2seq: tokens kept of each source (prompt + input).')
    max_target_length: int = setting(512, 'Seq2seq: tokens kept of each target.')
    tokenizer_vocab_size: int = setting(1000, 't5-tiny only: vocabulary size of the tokenizer trained on the training texts.')
    # -- model
    model: str = setting("esm2-tiny", 'Preset (esm2-tiny, esm2-8m..650m, t5-tiny), shipped esm2-tiny-mlm, local directory or hub id.')
    out: str = setting("runs/scilm", 'Output directory (OUT/model, OUT/metrics.json).')
    overwrite: bool = setting(False, 'Replace a finished or unfinished run in --out (files scilm did not create are kept).')
    # -- optimisation
    epochs: float = setting(1.0, 'Training epochs.')
    max_steps: int | None = setting(None, 'Optimizer steps; overrides --epochs when set.')
    batch_size: int = setting(8, 'Per-device batch size.')
    eval_batch_size: int = setting(32, 'Per-device validation batch size.')
    lr: float | None = setting(None, 'Learning rate (none: 1e-4 for full fine-tuning, 1e-3 with --lora).')
    weight_decay: float = setting(0.01, 'AdamW weight decay.')
    warmup_ratio: float = setting(0.1, 'Share of the steps with linear warm-up.')
    seed: int = setting(0, 'Seed for the split, initialisation and data order.')
    group_by_length: bool = setting(True, 'Batches of similar length: less padding, faster.')
    lr_decay: float | None = setting(None, 'Per-epoch multiplicative learning-rate decay instead of linear (the original T5: 0.99).')
    eval_steps: int | None = setting(None, 'Validate every N steps (none: every epoch).')
    eval_max_batches: int | None = setting(None, 'Validate on at most M batches (the original: 500; none: all).')
    keep_best: bool = setting(False, 'At the end, keep the checkpoint with the lowest validation loss.')
    # -- efficiency switches (section 1 of SOURCES.md)
    class_weights: bool = setting(False, 'Class-weighted loss (weights inversely proportional to class frequency).')
    grad_accum: int = setting(1, 'Gradient accumulation: an optimizer step every N micro-batches.')
    grad_checkpointing: bool = setting(False, 'Gradient checkpointing: recompute activations in backward (less memory, ~30% slower).')
    lora: bool = setting(False, 'LoRA adapters (PEFT); the classification head trains in full.')
    lora_r: int = setting(8, 'LoRA rank: higher = more capacity and memory.')
    lora_alpha: int = setting(16, 'LoRA alpha (scale = alpha / r).')
    lora_dropout: float = setting(0.05, 'LoRA dropout.')
    precision: str = setting("auto", 'auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that supports it, fp16 on older GPUs, fp32 on CPU; T5 never fp16: fp32 there).')
    # -- smart sifting (section 2 of SOURCES.md); off unless sift_beta is set
    sift_beta: float | None = setting(None, 'Smart sifting: keep ~1/(1+beta) of the samples (0.5 -> 2/3, 1 -> 1/2, 3 -> 1/4); none: off.')
    sift_history: int = setting(500, 'Sifting: recent losses that rank a new one (its percentile).')
    sift_delay: int = setting(10, "Sifting: unsifted steps first (a fresh model's losses mean little).")
    sift_policy: str = setting("relative", "Sifting: relative (extra scoring pass) | reuse (last epoch's own losses) | random, reuse-random (blind controls).")
    # -- scale-out and fault tolerance
    nproc: int = setting(1, 'Data-parallel processes on this machine (scilm starts torchrun).')
    fsdp: bool = setting(False, 'Shard parameters, gradients and optimizer state over the processes (FSDP2; CUDA only).')
    fsdp_config: str | None = setting(None, "FSDP JSON config file (the Trainer's fsdp_config keys), e.g. configs/fsdp/esm2.json.")
    deepspeed: str | None = setting(None, 'DeepSpeed JSON config file (ZeRO stage, offload), e.g. configs/deepspeed/zero2.json.')
    save_every: int | None = setting(None, 'Checkpoint every N optimizer steps (always one on SIGTERM / Ctrl-C); none: off.')
    keep_checkpoints: int = setting(2, 'Complete checkpoints kept; older ones are deleted.')
    resume: bool = setting(False, 'Continue from the newest intact checkpoint in OUT/checkpoints.')
    skip_nonfinite: bool = setting(False, 'Skip (and count) batches with a NaN/inf loss instead of stopping.')
    # -- logging
    progress: bool = setting(True, 'Progress bar.')
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for recipe-specific settings
    # names set explicitly (YAML or command line); None: unknown (built in code), compare with defaults
    given: frozenset[str] | None = field(default=None, repr=False, compare=False, metadata={"internal": True})

    def is_set(self, name: str) -> bool:
        """Was setting ``name`` given (by YAML or a flag), even at its default value? Without a record of
        what was given (a TrainConfig built in code), a value other than the default counts."""
        if self.given is not None:
            return name in self.given
        return getattr(self, name) != getattr(TrainConfig(), name)

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
        data.pop("given")
        data["lr"] = self.resolved_lr
        return data


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-4`` is a number, as in YAML 1.2 (PyYAML reads it as text)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """A YAML file's value (UTF-8, a byte-order mark ignored); ScilmError naming the file if unreadable."""
    from scilm.data.textio import open_text

    if not path.is_file():
        raise ScilmError(f"{path}: no such config file")
    with open_text(path) as handle:
        text = handle.read()
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ScilmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


_EXPECTED = {bool: "true or false", int: "an integer", float: "a finite number", str: "text",
             dict: "a mapping of names to values"}


def _schema():
    """A strict pydantic model of TrainConfig's fields (types from the dataclass, declared once there)."""
    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name: (hints[f.name], None) for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")}
    return create_model("TrainConfigSchema", __config__=ConfigDict(strict=True, allow_inf_nan=False,
                                                                    extra="forbid"), **fields), hints


def _expected(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    names = [_EXPECTED.get(typing.get_origin(a) or a, str(a)) for a in args]
    return " or ".join(names) + (" (or null)" if type(None) in typing.get_args(hint) else "")


def check_types(values: dict[Any, Any], where: str = "") -> dict[str, Any]:
    """``values`` with each setting checked against TrainConfig's declared type (strict: no guessing).

    A string is never read as a boolean or a number (``overwrite: 'false'`` is an error, not true),
    a float is not an integer, infinities and NaN are refused, unknown keys are errors. An integer
    is accepted for a text setting (``valid_split: 4``) and converted. Raises ScilmError naming the
    key, the expected type and the value given.
    """
    from pydantic import ValidationError

    schema, hints = _schema()
    bad_keys = [key for key in values if not isinstance(key, str)]
    if bad_keys:
        raise ScilmError(f"{where}setting name {bad_keys[0]!r} is not text")
    values = {key: (str(value) if isinstance(value, int) and not isinstance(value, bool)
                    and key in hints and str in typing.get_args(hints[key]) else value)
              for key, value in values.items()}
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ScilmError(f"{where}unknown setting(s): {', '.join(unknown)}")
    try:
        schema.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0])
        value = values.get(key)
        shown = f"the text {value!r}" if isinstance(value, str) else repr(value)
        raise ScilmError(f"{where}{key}: expected {_expected(hints[key])}, got {shown}") from None
    return values


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """A YAML file of TrainConfig keys (optional), then the command-line values on top, type-checked.

    Raises ScilmError naming the file and key for unknown keys, wrong types or bad values.
    """
    values: dict[str, Any] = {}
    where = ""
    if path is not None:
        path = Path(path)
        where = f"{path}: "
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ScilmError(f"{path}: a config is a mapping of settings to values")
        values.update(check_types({key.replace("-", "_") if isinstance(key, str) else key: value
                                   for key, value in loaded.items()}, where))
    values.update({key: value for key, value in overrides.items() if value is not None})
    values = check_types(values)
    return TrainConfig(**values, given=frozenset(values)).validate()
