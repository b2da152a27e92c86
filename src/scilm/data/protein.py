"""Protein data: validated records from DeepLoc FASTA or DeepLoc-2-style CSV/TSV, and splits.

Every reader returns a list of :class:`ProteinRecord`; every problem with the input is a
:class:`~scilm.errors.ScilmError` that names the file, the line or record, and what is wrong.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from scilm.errors import ScilmError

STANDARD_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY")
# X unknown, B = D/N, Z = E/Q, U selenocysteine, O pyrrolysine: all in the ESM-2 vocabulary.
EXTRA_RESIDUES = frozenset("XBZUO")
VALID_RESIDUES = STANDARD_RESIDUES | EXTRA_RESIDUES

MEMBRANE_LABELS = ("soluble", "membrane")
LOCALIZATION_LABELS = (
    "Cytoplasm", "Nucleus", "Extracellular", "Cell membrane", "Mitochondrion", "Plastid",
    "Endoplasmic reticulum", "Lysosome/Vacuole", "Golgi apparatus", "Peroxisome",
)
TASKS = ("membrane", "localization")
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
_ID_COLUMNS = ("ACC", "id", "ID", "sid", "accession", "name")


@dataclass(frozen=True)
class ProteinRecord:
    """One protein: an id, a validated upper-case sequence, an optional label name and split."""

    id: str
    sequence: str
    label: str | None = None
    split: str | None = None


def normalize_sequence(raw: str, where: str) -> str:
    """Upper-case, drop whitespace and one trailing ``*``; reject anything not a residue letter."""
    seq = "".join(raw.split()).upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        raise ScilmError(f"{where}: empty sequence")
    for position, residue in enumerate(seq, start=1):
        if residue not in VALID_RESIDUES:
            raise ScilmError(
                f"{where}: invalid residue {residue!r} at position {position} "
                f"(allowed: the 20 standard amino acids and X B Z U O)"
            )
    return seq


def _fasta_label(header_rest: str, task: str, where: str) -> str | None:
    """DeepLoc header ``Location-M|S|U`` -> the label for ``task`` (None = unknown, skipped)."""
    token = header_rest.split()[0] if header_rest.split() else ""
    location, sep, membrane = token.rpartition("-")
    if not sep or membrane not in ("M", "S", "U"):
        raise ScilmError(
            f"{where}: header has no DeepLoc label 'Location-M|S|U' (got {token or 'nothing'!r})"
        )
    if task == "membrane":
        return {"S": "soluble", "M": "membrane", "U": None}[membrane]
    name = location.replace(".", " ")
    return name if name in LOCALIZATION_LABELS else None  # e.g. "Cytoplasm-Nucleus": ambiguous


def read_fasta(path: Path, task: str | None) -> list[ProteinRecord]:
    """Read FASTA; with ``task`` the DeepLoc header label is parsed and unknown ones skipped."""
    records: list[ProteinRecord] = []
    header: tuple[int, str, str] | None = None  # (line number, id, rest of header)
    chunks: list[str] = []

    def flush() -> None:
        if header is None:
            return
        line_no, rec_id, rest = header
        where = f"{path}:{line_no} (record {rec_id})"
        seq = normalize_sequence("".join(chunks), where)
        label = _fasta_label(rest, task, where) if task else None
        if task is None or label is not None:
            records.append(ProteinRecord(rec_id, seq, label))

    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for line_no, line in enumerate(handle, start=1):
                line = line.strip()
                if line.startswith(">"):
                    flush()
                    fields = line[1:].split(maxsplit=1)
                    if not fields:
                        raise ScilmError(f"{path}:{line_no}: FASTA header without an id")
                    header = (line_no, fields[0], fields[1] if len(fields) > 1 else "")
                    chunks = []
                elif line:
                    if header is None:
                        raise ScilmError(f"{path}:{line_no}: sequence before the first '>' header")
                    chunks.append(line)
        except UnicodeDecodeError as exc:
            raise ScilmError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    flush()
    return records


def _readable_labels(values: list[str], column: str) -> dict[str, str]:
    """Map raw label values to readable names: a 0/1 ``Membrane`` column becomes soluble/membrane."""
    if column.lower() == "membrane" and set(values) <= {"0", "1", "0.0", "1.0"}:
        return {v: MEMBRANE_LABELS[int(float(v))] for v in set(values)}
    return {v: v for v in set(values)}


def read_table(
    path: Path,
    sequence_column: str,
    label_column: str | None,
    id_column: str | None = None,
    split_column: str | None = None,
) -> list[ProteinRecord]:
    """Read a CSV/TSV in the DeepLoc-2 layout (or any table with a sequence and a label column)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            columns = reader.fieldnames or []
            if not columns:
                raise ScilmError(f"{path}: empty file (no header line)")
            if id_column is None:
                id_column = next((c for c in _ID_COLUMNS if c in columns), None)
            for name, flag in ((sequence_column, "--sequence-column"), (label_column, "--label-column"),
                               (id_column, "--id-column"), (split_column, "--split-column")):
                if name is not None and name not in columns:
                    raise ScilmError(
                        f"{path}: no column {name!r} ({flag}); columns are: {', '.join(columns)}"
                    )
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise ScilmError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise ScilmError(f"{path}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})") from None

    raw_labels: list[str] = []
    for line_no, row in enumerate(rows, start=2):
        if label_column is not None:
            value = (row.get(label_column) or "").strip()
            if not value:
                raise ScilmError(f"{path}:{line_no}: empty value in label column {label_column!r}")
            raw_labels.append(value)
    names = _readable_labels(raw_labels, label_column) if label_column else {}

    records = []
    for index, row in enumerate(rows):
        line_no = index + 2
        rec_id = (row.get(id_column) or "").strip() if id_column else ""
        rec_id = rec_id or f"row{line_no}"
        where = f"{path}:{line_no} (record {rec_id})"
        seq = normalize_sequence(row.get(sequence_column) or "", where)
        label = names[raw_labels[index]] if label_column else None
        split = (row.get(split_column) or "").strip() if split_column else None
        records.append(ProteinRecord(rec_id, seq, label, split))
    return records


def read_proteins(
    path: str | Path,
    task: str | None = "membrane",
    sequence_column: str = "Sequence",
    label_column: str | None = "Membrane",
    id_column: str | None = None,
    split_column: str | None = None,
) -> list[ProteinRecord]:
    """Read FASTA or CSV/TSV by extension; ``task=None`` / ``label_column=None`` reads no labels."""
    path = Path(path)
    if not path.is_file():
        raise ScilmError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in FASTA_SUFFIXES:
        records = read_fasta(path, task)
    elif suffix in TABLE_SUFFIXES:
        records = read_table(path, sequence_column, label_column, id_column, split_column)
    else:
        raise ScilmError(
            f"{path}: unknown file type {suffix!r} (use FASTA {', '.join(FASTA_SUFFIXES)} "
            f"or a table {', '.join(TABLE_SUFFIXES)})"
        )
    if not records:
        raise ScilmError(f"{path}: no usable records (empty file, or every label unknown)")
    return _dedupe(records, path)


def _dedupe(records: list[ProteinRecord], path: Path) -> list[ProteinRecord]:
    """Drop exact repeats of an id; a repeated id with a different label is an error."""
    seen: dict[str, ProteinRecord] = {}
    kept = []
    for record in records:
        previous = seen.get(record.id)
        if previous is None:
            seen[record.id] = record
            kept.append(record)
        elif previous.label != record.label:
            raise ScilmError(
                f"{path}: duplicated id {record.id!r} with conflicting labels "
                f"{previous.label!r} and {record.label!r}"
            )
    return kept


def filter_by_length(
    records: list[ProteinRecord], min_length: int | None, max_length: int | None
) -> list[ProteinRecord]:
    """Keep sequences with ``min_length <= len <= max_length`` (the published recipe: 100-512)."""
    lo = min_length or 0
    hi = max_length or float("inf")
    return [r for r in records if lo <= len(r.sequence) <= hi]


def label_names(records: list[ProteinRecord], task: str | None) -> list[str]:
    """The ordered class names: fixed for the DeepLoc tasks, sorted otherwise (numbers by value)."""
    present = {r.label for r in records if r.label is not None}
    for fixed in (MEMBRANE_LABELS, LOCALIZATION_LABELS):
        if present <= set(fixed):
            return [name for name in fixed if name in present or fixed is MEMBRANE_LABELS]
    try:
        return sorted(present, key=float)
    except ValueError:
        return sorted(present)


def check_labels(records: list[ProteinRecord], path: str | Path) -> None:
    """A classifier needs at least two classes."""
    classes = {r.label for r in records}
    if len(classes) < 2:
        raise ScilmError(
            f"{path}: only one label class ({next(iter(classes))!r}) after filtering; "
            "a classifier needs at least two"
        )


def stratified_split(
    records: list[ProteinRecord], valid_fraction: float, seed: int
) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
    """Random split that keeps each class's share (at least one example of each class per side)."""
    if not 0.0 < valid_fraction < 1.0:
        raise ScilmError(f"--valid-fraction must be between 0 and 1 (got {valid_fraction})")
    by_label: dict[str | None, list[ProteinRecord]] = defaultdict(list)
    for record in records:
        by_label[record.label].append(record)
    rng = random.Random(seed)
    train, valid = [], []
    for label in sorted(by_label, key=str):
        group = by_label[label][:]
        rng.shuffle(group)
        n_valid = min(max(1, round(len(group) * valid_fraction)), len(group) - 1)
        valid.extend(group[:n_valid])
        train.extend(group[n_valid:])
    rng.shuffle(train)
    return train, valid


def split_by_column(
    records: list[ProteinRecord], valid_split: str, path: str | Path
) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
    """Homology-aware split: rows whose split column equals ``valid_split`` validate."""
    valid = [r for r in records if r.split == valid_split]
    train = [r for r in records if r.split != valid_split]
    if not valid:
        found = sorted({str(r.split) for r in records})
        raise ScilmError(f"{path}: no row has split value {valid_split!r} (found: {', '.join(found)})")
    if not train:
        raise ScilmError(f"{path}: every row has split value {valid_split!r}; nothing left to train on")
    return train, valid


def check_known_labels(records: list[ProteinRecord], names: list[str], path: str | Path) -> None:
    """Check that every label in ``records`` is one the model knows."""
    unknown = sorted({r.label for r in records if r.label not in names}, key=str)
    if unknown:
        raise ScilmError(
            f"{path}: label(s) {', '.join(map(repr, unknown))} not among the training labels "
            f"({', '.join(names)})"
        )


__all__ = [
    "ProteinRecord", "read_proteins", "read_fasta", "read_table", "normalize_sequence",
    "filter_by_length", "label_names", "check_labels", "stratified_split", "split_by_column",
    "check_known_labels", "MEMBRANE_LABELS", "LOCALIZATION_LABELS", "TASKS",
]
