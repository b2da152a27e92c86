"""Settings of masked-LM pre-training (``scilm pretrain``, ``--task mlm``)."""

from __future__ import annotations

from dataclasses import dataclass

from scilm.errors import ScilmError, name
from scilm.training.settings import OptimSettings, RunSettings, setting


@dataclass
class Config(RunSettings, OptimSettings):
    """Pre-train (or continue pre-training) an ESM-2 encoder on unlabelled sequences (labels ignored)."""

    data: str = setting("", "FASTA or CSV/TSV of sequences (labels unused).")
    model: str = setting("esm2-tiny", "Preset, shipped model, local directory or hub id to continue from.")
    sequence_column: str = setting("Sequence", "Table column with sequences.")
    truncate: int = setting(1022, "Residues kept per sequence (recorded as the model's trained length).")
    mlm_probability: float = setting(0.15, "Share of tokens masked (ESM-2: 15 %, replaced 80/10/10).")
    task: str = setting("mlm", "What to train (this recipe: mlm).")
    out: str = setting("runs/pretrain", "Output directory (OUT/model).")
    epochs: float = setting(10.0, "Epochs of masked-LM training.")
    batch_size: int = setting(32, "Batch size.")
    lr: float | None = setting(2e-3, "Learning rate.")
    warmup_ratio: float = setting(0.05, "Share of the steps with linear warm-up.")

    def check_recipe(self) -> None:
        if not self.data:
            raise ScilmError(f"{name('data')} is required (a file of sequences)")
        if self.task != "mlm":
            raise ScilmError(f"{name('task')} {self.task!r}: this recipe trains mlm")
        if self.truncate < 1:
            raise ScilmError(f"{name('truncate')} must be at least 1 (got {self.truncate})")
        if not 0 < self.mlm_probability < 1:
            raise ScilmError(f"{name('mlm_probability')} must be in (0, 1) (got {self.mlm_probability})")
