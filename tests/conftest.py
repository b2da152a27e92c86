"""Shared fixtures: tiny slices of the bundled data and an in-process CLI runner."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from scilm.data.protein import read_proteins

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "scilm" / "data" / "bundled"
DEEPLOC_TRAIN = BUNDLED / "deeploc1" / "train.fasta"
DEEPLOC_VALID = BUNDLED / "deeploc1" / "valid.fasta"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``scilm ARGS`` in this process through the real entry point (error handling included)."""
    from scilm.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["scilm", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def write_fasta(path: Path, entries: list[tuple[str, str, str]]) -> Path:
    """entries: (id, DeepLoc label like 'Cell.membrane-M', sequence)."""
    path.write_text("".join(f">{i} {label}\n{seq}\n" for i, label, seq in entries), encoding="utf-8")
    return path


def deeploc_slice(path: Path, source: Path, n_per_class: int, max_residues: int = 120) -> Path:
    """A balanced slice of a bundled DeepLoc FASTA, sequences cut short for speed."""
    records = read_proteins(source, task="membrane")
    picked = [r for r in records if r.label == "membrane"][:n_per_class]
    picked += [r for r in records if r.label == "soluble"][:n_per_class]
    code = {"membrane": "Cell.membrane-M", "soluble": "Cytoplasm-S"}
    return write_fasta(path, [(r.id, code[r.label], r.sequence[:max_residues]) for r in picked])


@pytest.fixture(scope="session")
def tiny_fastas(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fasta")
    return (deeploc_slice(root / "train.fasta", DEEPLOC_TRAIN, 24),
            deeploc_slice(root / "valid.fasta", DEEPLOC_VALID, 8))


LOCATIONS = ["Cytoplasm", "Nucleus", "Extracellular", "Cell membrane", "Mitochondrion", "Plastid",
             "Endoplasmic reticulum", "Lysosome/Vacuole", "Golgi apparatus", "Peroxisome"]


@pytest.fixture(scope="session")
def deeploc2_csv(tmp_path_factory) -> Path:
    """A CSV in the DeepLoc-2 SwissProt layout, built from bundled DeepLoc-1 records."""
    records = read_proteins(DEEPLOC_TRAIN, task="localization")
    membrane = {r.id: r.label for r in read_proteins(DEEPLOC_TRAIN, task="membrane")}
    usable = [r for r in records if r.id in membrane and 100 <= len(r.sequence) <= 600]
    rows = [r for r in usable if membrane[r.id] == "membrane"][:40] + [r for r in usable if membrane[r.id] == "soluble"][:40]
    path = tmp_path_factory.mktemp("csv") / "Swissprot_Train_Validation_dataset.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "ACC", "Kingdom", "Partition", "Membrane", *LOCATIONS, "Sequence"])
        for i, r in enumerate(rows):
            onehot = [int(r.label == loc) for loc in LOCATIONS]
            writer.writerow([i, r.id, "Eukaryota", i % 5, int(membrane[r.id] == "membrane"), *onehot,
                             r.sequence])
    return path
