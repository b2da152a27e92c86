"""The shared sections every recipe's typed config is composed of, each field declared once.

A recipe's config is a dataclass that inherits the sections it uses (data, model, optimisation,
evaluation, sifting, run) and adds its own fields: ``class RegressionConfig(DataSettings,
ModelSettings, ...)``. Field names are flat, so YAML keys and ``scilm train`` flags are the same
names for every recipe; each field's default and help live in :func:`setting`, and the CLI's
options are generated from them (:func:`scilm.training.config.all_settings`). Each section checks
its own values in ``check_section``; :meth:`Settings.validate` runs them all, section by section,
then the recipe's ``check_recipe``. Errors name the setting (``batch_size must be at least 1``);
only the CLI turns names into flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scilm.errors import ScilmError, name
from scilm.training.sift_policies import SIFT_POLICIES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PEFT_METHODS = ("none", "lora", "dora", "ia3")


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A config field: its default and help, declared once (YAML key = flag name = field name)."""
    return field(default=default, metadata={"help": help, **metadata})


def _at_least(values: dict[str, Any], low: int | float) -> None:
    for key, value in values.items():
        if value is not None and value < low:
            raise ScilmError(f"{name(key)} must be at least {low} (got {value})")


@dataclass
class Settings:
    """Base of every recipe config: what was given, validation, the saved form."""

    # names set explicitly (YAML or command line); None: unknown (built in code), compare with defaults
    given: frozenset[str] | None = field(default=None, repr=False, compare=False, metadata={"internal": True})

    def is_set(self, name: str) -> bool:
        """Was setting ``name`` given (by YAML or a flag), even at its default value? Without a record of
        what was given (a config built in code), a value other than the default counts."""
        if self.given is not None:
            return name in self.given
        return getattr(self, name) != getattr(type(self)(), name)

    def check_section(self) -> None:
        """Check this section's own settings (each section overrides it; :meth:`validate` calls every
        section's in turn). Raises ScilmError naming the setting and what it must be."""

    def check_recipe(self) -> None:
        """Check rules of a recipe that span sections (a recipe's Config overrides it), after every
        section's :meth:`check_section`. Raises ScilmError naming the settings."""

    def validate(self):
        """Check every section's values, then the recipe's own rules; returns ``self``. Raises ScilmError."""
        for cls in reversed(type(self).__mro__):
            check = cls.__dict__.get("check_section")
            if check is not None:
                check(self)
        check = getattr(self, "check_recipe", None)
        if check is not None:
            check()
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in metrics.json (internal fields left out; the learning rate resolved)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("internal")}
        if "lr" in data:
            data["lr"] = self.resolved_lr
        return data


@dataclass
class DataSettings(Settings):
    """Where the examples come from, and the validation set."""

    data: str = setting("", "Training file: FASTA (DeepLoc headers), CSV/TSV (protein) or JSONL (Text+Chem seq2seq).")
    valid: str | None = setting(None, "Validation file; without it a split of --data.")
    valid_fraction: float = setting(0.2, "Share held out for validation when there is no --valid / --split-column.")

    def check_section(self) -> None:
        if not self.data:
            raise ScilmError(f"{name('data')} is required (a training file)")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ScilmError(f"{name('valid_fraction')} must be between 0 and 1 (got {self.valid_fraction})")
        if self.is_set("valid_fraction") and (self.valid or getattr(self, "split_column", None)):
            raise ScilmError(f"{name('valid_fraction')} splits {name('data')}; with {name('valid')} or "
                             f"{name('split_column')} there is nothing to split")


@dataclass
class ProteinDataSettings(DataSettings):
    """Protein tables and FASTA: columns, homology-aware splits, lengths, and the long-protein policy."""

    sequence_column: str = setting("Sequence", "Table column with sequences.")
    id_column: str | None = setting(None, "Table column with ids (none: ACC/id/ID/sid/accession/name if present, "
                                          "else row numbers).")
    split_column: str | None = setting(None, "Table column of homology partitions or named splits, e.g. Partition "
                                             "or FLIP's three_vs_rest.")
    valid_split: str | None = setting(None, "Value of --split-column that validates, e.g. 4 or val.")
    train_split: str | None = setting(None, "Value of --split-column that trains (none: every row that does not "
                                            "validate); other rows are left out and counted, e.g. FLIP's test.")
    min_length: int | None = setting(None, "Drop shorter sequences (published recipe: 100).")
    max_length: int | None = setting(None, "Drop longer sequences (published recipe: 512).")
    truncate: int = setting(1022, "Residues kept per sequence (ESM-2 sees at most 1022 + 2 special tokens).")
    long_policy: str = setting("head", "Residues kept of a longer sequence: head (the first --truncate) | ends "
                                       "(first and last halves: both termini); recorded for predict/embed/serve.")
    drop_missing_labels: bool = setting(False, "Exclude (and count) rows whose label is empty/NaN/NA/None; "
                                               "else such a row is an error.")

    def check_section(self) -> None:
        _at_least({"truncate": self.truncate, "min_length": self.min_length, "max_length": self.max_length}, 1)
        from scilm.inference.policy import TRAINING_POLICIES, check_long_policy

        check_long_policy(self.long_policy, TRAINING_POLICIES)
        if (self.split_column is None) != (self.valid_split is None):
            raise ScilmError(f"{name('split_column')} and {name('valid_split')} go together")
        if self.train_split is not None and self.split_column is None:
            raise ScilmError(f"{name('train_split')} needs {name('split_column')} and {name('valid_split')}")
        if self.valid and self.split_column:
            raise ScilmError(f"give either {name('valid')} or {name('split_column')}/{name('valid_split')}, not both")
        if self.min_length and self.max_length and self.min_length > self.max_length:
            raise ScilmError(f"{name('min_length')} {self.min_length} is above {name('max_length')} {self.max_length}")


@dataclass
class ModelSettings(Settings):
    """The model to start from and which of its weights train (parameter-efficient methods)."""

    model: str = setting("esm2-tiny", "Preset (esm2-tiny, esm2-8m..650m, t5-tiny), shipped esm2-tiny-mlm, local "
                                      "directory or hub id.")
    peft: str = setting("none", "Parameter-efficient fine-tuning (PEFT): none | lora | dora | ia3; the task head "
                                "trains in full.")
    lora: bool = setting(False, "Shorthand for peft lora.")
    lora_r: int = setting(8, "LoRA/DoRA rank: higher = more capacity and memory.")
    lora_alpha: int = setting(16, "LoRA/DoRA alpha (scale = alpha / r).")
    lora_dropout: float = setting(0.05, "LoRA/DoRA dropout.")
    freeze_backbone: bool = setting(False, "Train the task head only (a linear probe on frozen embeddings).")

    @property
    def peft_method(self) -> str:
        """The PEFT method in effect: ``lora`` when the shorthand is set, else ``peft``."""
        return "lora" if self.lora and self.peft == "none" else self.peft

    def check_section(self) -> None:
        if self.peft == "qlora":  # a 4-bit backbone: bitsandbytes kernels exist for CUDA only
            import torch

            where = ("needs a CUDA GPU; on CPU use" if not torch.cuda.is_available()
                     else "is not available in this scilm version yet; use")
            raise ScilmError(f"{name('peft')} qlora (LoRA on a 4-bit quantised backbone, bitsandbytes) {where} "
                             f"{name('peft')} lora or dora")
        if self.peft not in PEFT_METHODS:
            raise ScilmError(f"{name('peft')} must be one of {', '.join(PEFT_METHODS)} (got {self.peft!r})")
        if self.lora and self.peft not in ("none", "lora"):
            raise ScilmError(f"{name('lora')} is shorthand for {name('peft')} lora; it contradicts "
                             f"{name('peft')} {self.peft}")
        if self.freeze_backbone and self.peft_method != "none":
            raise ScilmError(f"{name('freeze_backbone')} trains the head only; it does not combine with {name('peft')} "
                             f"{self.peft_method} (adapters would be trained)")
        shaping = [key for key in ("lora_r", "lora_alpha", "lora_dropout") if self.is_set(key)]
        if shaping and self.peft_method not in ("lora", "dora"):  # they would change nothing: an error, not ignored
            what = name("freeze_backbone") if self.freeze_backbone else f"{name('peft')} {self.peft_method}"
            raise ScilmError(f"{', '.join(map(name, shaping))} shape LoRA/DoRA adapters, which {what} does not train; "
                             "drop them")
        _at_least({"lora_r": self.lora_r, "lora_alpha": self.lora_alpha}, 1)
        if not 0 <= self.lora_dropout < 1:
            raise ScilmError(f"{name('lora_dropout')} must be in [0, 1) (got {self.lora_dropout})")


@dataclass
class OptimSettings(Settings):
    """How long, how fast, and the efficiency switches that change cost, never the answer."""

    epochs: float = setting(1.0, "Training epochs.")
    max_steps: int | None = setting(None, "Optimizer steps; overrides --epochs when set.")
    batch_size: int = setting(8, "Per-device batch size.")
    lr: float | None = setting(None, "Learning rate (none: 1e-4 for full fine-tuning, 1e-3 with PEFT or a "
                                     "frozen backbone).")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    warmup_ratio: float = setting(0.1, "Share of the steps with linear warm-up.")
    seed: int = setting(0, "Seed for the split, initialisation and data order.")
    group_by_length: bool = setting(True, "Batches of similar length: less padding, faster.")
    grad_accum: int = setting(1, "Gradient accumulation: an optimizer step every N micro-batches.")
    grad_checkpointing: bool = setting(False, "Gradient checkpointing: recompute activations in backward (less "
                                              "memory, ~30% slower).")
    precision: str = setting("auto", "auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that supports it, fp16 on "
                                     "older GPUs, fp32 on CPU; seq2seq never fp16: T5 overflows in it).")

    @property
    def resolved_lr(self) -> float:
        """The learning rate in effect: ``lr``, else 1e-3 when only adapters or a head train, else 1e-4."""
        if self.lr is not None:
            return self.lr
        light = getattr(self, "peft_method", "none") != "none" or getattr(self, "freeze_backbone", False)
        return 1e-3 if light else 1e-4

    def check_section(self) -> None:
        if self.precision not in PRECISIONS:
            raise ScilmError(f"{name('precision')} must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        _at_least({"batch_size": self.batch_size, "grad_accum": self.grad_accum, "max_steps": self.max_steps}, 1)
        if self.epochs <= 0 and not self.max_steps:
            raise ScilmError(f"{name('epochs')} must be positive (got {self.epochs})")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ScilmError(f"{name('lr')} must be in (0, 1) (got {self.lr})")
        if not 0 <= self.warmup_ratio < 1:
            raise ScilmError(f"{name('warmup_ratio')} must be in [0, 1) (got {self.warmup_ratio})")


@dataclass
class EvalSettings(Settings):
    """Validation during training, and keeping the best checkpoint."""

    eval_batch_size: int = setting(32, "Per-device validation batch size.")
    eval_steps: int | None = setting(None, "Validate every N steps (none: every epoch).")
    eval_max_batches: int | None = setting(None, "Validate on at most M batches during training (the final "
                                                 "evaluation uses all; none: all).")
    keep_best: bool = setting(False, "At the end, keep the checkpoint with the lowest validation loss.")

    def check_section(self) -> None:
        _at_least({"eval_batch_size": self.eval_batch_size, "eval_steps": self.eval_steps,
                   f"{name('eval_max_batches')}": self.eval_max_batches}, 1)
        if self.keep_best and getattr(self, "save_every", None):
            raise ScilmError(f"{name('keep_best')} already saves a checkpoint at every validation; drop "
                             f"{name('save_every')} ({name('resume')} continues from those)")


@dataclass
class SiftSettings(Settings):
    """Smart sifting (loss-based online data selection); off unless sift_beta is set."""

    sift_beta: float | None = setting(None, "Smart sifting: keep ~1/(1+beta) of the samples (0.5 -> 2/3, 1 -> 1/2, "
                                            "3 -> 1/4); none: off.")
    sift_history: int = setting(500, "Sifting: recent losses that rank a new one (its percentile).")
    sift_delay: int = setting(10, "Sifting: unsifted steps first (a fresh model's losses mean little).")
    sift_policy: str = setting("relative", "Sifting: relative (extra scoring pass) | reuse (last epoch's own "
                                           "losses) | random, reuse-random (blind controls).")

    def check_section(self) -> None:
        if self.sift_beta is None:
            return
        if not self.sift_beta > 0:
            raise ScilmError(f"{name('sift_beta')} must be positive (got {self.sift_beta})")
        if self.sift_policy not in SIFT_POLICIES:
            raise ScilmError(f"{name('sift_policy')} must be one of {', '.join(SIFT_POLICIES)} "
                             f"(got {self.sift_policy!r})")
        if self.sift_history < 2 or self.sift_delay < 0:
            raise ScilmError(f"{name('sift_history')} must be at least 2 and {name('sift_delay')} at least 0")
        from scilm.distributed import world_size  # WORLD_SIZE under torchrun / accelerate launch

        processes = max(getattr(self, "nproc", 1), world_size())
        if not SIFT_POLICIES[self.sift_policy].resumable and (processes > 1 or getattr(self, "resume", False)):
            raise ScilmError(f"{name('sift_policy')} {self.sift_policy} runs in one process and cannot resume (its "
                             f"epochs change length); use {name('sift_policy')} relative")


@dataclass
class RunSettings(Settings):
    """The run directory, checkpoints and resuming, processes, and what the run prints."""

    task: str = setting("membrane", "What to train: one of the tasks listed above.")
    out: str = setting("runs/scilm", "Output directory (OUT/model, OUT/metrics.json).")
    overwrite: bool = setting(False, "Replace a finished or unfinished run in --out (files scilm did not create "
                                     "are kept).")
    resume: bool = setting(False, "Continue from the newest intact checkpoint in OUT/checkpoints.")
    save_every: int | None = setting(None, "Checkpoint every N optimizer steps (always one on SIGTERM / Ctrl-C); "
                                           "none: off.")
    keep_checkpoints: int = setting(2, "Complete checkpoints kept; older ones are deleted.")
    skip_nonfinite: bool = setting(False, "Skip (and count) batches with a NaN/inf loss instead of stopping.")
    nproc: int = setting(1, "Data-parallel processes on this machine (scilm starts torchrun).")
    fsdp: bool = setting(False, "Shard parameters, gradients and optimizer state over the processes (FSDP2; "
                                "CUDA only).")
    fsdp_config: str | None = setting(None, "FSDP JSON config file (the Trainer's fsdp_config keys), e.g. "
                                            "configs/fsdp/esm2.json.")
    deepspeed: str | None = setting(None, "DeepSpeed JSON config file (ZeRO stage, offload), e.g. "
                                          "configs/deepspeed/zero2.json.")
    progress: bool = setting(True, "Progress bar (on stderr when it is a terminal).")

    def check_section(self) -> None:
        _at_least({"nproc": self.nproc, "keep_checkpoints": self.keep_checkpoints, "save_every": self.save_every}, 1)
        if self.resume and self.overwrite:
            raise ScilmError(f"give either {name('resume')} (continue the run in {name('out')}) or "
                             f"{name('overwrite')} (start over), not both")
        for key in ("deepspeed", "fsdp_config"):
            value = getattr(self, key)
            if value is not None and not Path(value).is_file():
                raise ScilmError(f"{name(key)} {value}: no such file")
        if self.deepspeed and self.fsdp:
            raise ScilmError(f"give either {name('deepspeed')} or {name('fsdp')}, not both")
        if self.deepspeed or self.fsdp:
            import torch

            if not torch.cuda.is_available():
                raise ScilmError(f"{name('fsdp') if self.fsdp else name('deepspeed')} needs CUDA GPUs (Accelerate "
                                 f"shards models only across GPUs); on CPU, {name('nproc')} N trains data-parallel (DDP)")


@dataclass
class ProteinRecipeSettings(RunSettings, SiftSettings, EvalSettings, OptimSettings, ModelSettings,
                            ProteinDataSettings):
    """The sections every protein recipe shares (a recipe adds its label settings)."""
