"""Per-residue labelled proteins: one label character per residue, and optionally a 0/1 mask of scored residues.

Two layouts, by extension (each optionally ``.gz``):

- A CSV/TSV/TXT table with an id column, a sequence column, a label-string column and, optionally, a
  mask column (FLIP secondary structure: ``id, split, sequence, ss3, mask``; FLIP bind: one digit per
  residue). Every column is named by a setting.
- A 3-line FASTA (SignalP-6 / PEFT-SP ``train_set.fasta``): ``>ACC|KINGDOM|TYPE|PARTITION``, the
  sequence on one line, the label string on the next. The header's first word is split on ``|``
  into named fields (``fields``); the field ``id`` names the record, ``type`` is the protein-level
  type (SignalP-6: NO_SP, SP, LIPO, TAT, TATLIPO, PILIN), and a split setting may name any field.

Every problem is a :class:`~scilm.errors.ScilmError` naming the file, the line, the field and what is
wrong: a label string or mask of another length than its sequence, a label character outside the
allowed alphabet, a mask character other than 0/1. Sequences follow the one alphabet policy of
:func:`scilm.data.protein.normalize_sequence`.
"""

from __future__ import annotations

import csv
import itertools
import string
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from scilm.data import protein as pdata
from scilm.data.textio import data_suffix, open_text
from scilm.errors import ScilmError, name

NOT_PREDICTED = "."  # marks residues cut off before the model (predict output); never a label character
SIGNALP_FIELDS = "id,kingdom,type,partition"  # SignalP-6's header layout (PEFT-SP train_set.fasta)
_ALLOWED_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation) - {NOT_PREDICTED}


@dataclass(frozen=True)
class ResidueRecord(pdata.ProteinRecord):
    """A protein with one label character per residue (``label``, same length as ``sequence``).

    ``mask``: one ``0``/``1`` per residue (``1`` = scored), or None (every residue scored).
    ``kind``: the protein-level type from a FASTA header's ``type`` field (SignalP-6), or None.
    ``origin``: (where, field) of the label string, for messages (``file:line (record id)``, the column).
    """

    mask: str | None = None
    kind: str | None = None
    origin: tuple[str, str] | None = field(default=None, compare=False)


def check_label_chars(labels: str, where: str, what: str, alphabet: str | None) -> None:
    """Each character of ``labels`` is a printable ASCII label (``.`` is reserved) and, when ``alphabet``
    is given, one of it. Raises ScilmError naming ``where``, ``what`` (the field), the character and its position."""
    for position, char in enumerate(labels, start=1):
        if char not in _ALLOWED_LABEL_CHARS or (alphabet is not None and char not in alphabet):
            allowed = (f"the label alphabet {alphabet!r}" if alphabet is not None else
                       f"printable ASCII other than {NOT_PREDICTED!r} and space")
            raise ScilmError(f"{where}: {what} holds unknown label character {pdata.describe_char(char)} at "
                             f"residue {position} (allowed: {allowed})")


def _residue_record(rec_id: str, raw_sequence: str, labels: str, mask: str | None, where: str,
                    fields: tuple[str, str], split: str | None, kind: str | None, line: int) -> ResidueRecord:
    """One validated record; ``fields`` names the label and mask fields for messages."""
    sequence = pdata.normalize_sequence(raw_sequence, where)
    label_field, mask_field = fields
    if len(labels) != len(sequence):
        raise ScilmError(f"{where}: {label_field} has {len(labels)} label(s) for {len(sequence)} residues")
    check_label_chars(labels, where, label_field, None)
    if mask is not None:
        if len(mask) != len(sequence):
            raise ScilmError(f"{where}: {mask_field} has {len(mask)} character(s) for {len(sequence)} residues")
        bad = next((i for i, char in enumerate(mask, start=1) if char not in "01"), None)
        if bad is not None:
            raise ScilmError(f"{where}: {mask_field} holds {pdata.describe_char(mask[bad - 1])} at residue {bad} "
                             "(a mask is 1 for a scored residue, 0 for one to ignore)")
    return ResidueRecord(rec_id, sequence, labels, split, line=line, mask=mask, kind=kind,
                         origin=(where, label_field))


def read_residue_fasta(path: Path, fields: str = SIGNALP_FIELDS, split_field: str | None = None) -> list[ResidueRecord]:
    """Read a 3-line FASTA: header, sequence line, label line (SignalP-6). ``fields``: comma-separated
    names of the header's ``|``-separated fields (``id`` required); ``split_field`` one of them."""
    names = [f.strip() for f in fields.split(",")]
    if "id" not in names:
        raise ScilmError(f"{name('fasta_fields')} {fields!r} must name the field 'id'")
    if split_field is not None and split_field not in names:
        raise ScilmError(f"{path}: {name('split_column')} {split_field!r} is not a header field "
                         f"({name('fasta_fields')}: {', '.join(names)})")
    with open_text(path) as handle:
        lines = [(n, line.strip(string.whitespace)) for n, line in enumerate(handle, start=1)]
    lines = [(n, line) for n, line in lines if line]
    records = []
    for start in range(0, len(lines), 3):
        (head_no, head), *rest = lines[start:start + 3]
        if not head.startswith(">"):
            raise ScilmError(f"{path}:{head_no}: expected a '>' header (a record is 3 lines: header, sequence, "
                             f"labels), got {head[:20]!r}")
        values = head[1:].split()[0].split("|") if head[1:].split() else []
        if len(values) != len(names):
            raise ScilmError(f"{path}:{head_no}: header has {len(values)} '|'-separated field(s); "
                             f"{name('fasta_fields')} names {len(names)} ({', '.join(names)})")
        header = dict(zip(names, values))
        if len(rest) < 2 or any(line.startswith(">") for _, line in rest):
            raise ScilmError(f"{path}:{head_no} (record {header['id']}): a record is 3 lines (header, sequence, "
                             "labels); this one is shorter")
        (_, sequence), (label_no, labels) = rest
        records.append(_residue_record(
            header["id"], sequence, labels, None, f"{path}:{label_no} (record {header['id']})",
            ("the label line", ""), header.get(split_field) if split_field else None, header.get("type"), head_no))
    return records


def read_residue_table(path: Path, sequence_column: str, label_column: str, mask_column: str | None = None,
                       id_column: str | None = None, split_column: str | None = None,
                       drop_missing_labels: bool = False,
                       counts: MutableMapping[str, int] | None = None) -> list[ResidueRecord]:
    """Read a CSV/TSV/TXT table with a label string (and optional mask string) per row.

    An empty label cell is missing: an error naming the line, or with ``drop_missing_labels`` left out
    and counted (``n_dropped_missing_label``).
    """
    counts = Counter() if counts is None else counts
    records = []
    with open_text(path, newline="") as handle:
        header = handle.readline()
        if not header.strip():
            raise ScilmError(f"{path}: empty file (no header line)")
        reader = csv.DictReader(itertools.chain([header], handle), delimiter=pdata._table_delimiter(path, header))
        columns = reader.fieldnames or []
        for column, key in ((sequence_column, "sequence_column"), (label_column, "label_column"),
                            (mask_column, "mask_column"), (id_column, "id_column"), (split_column, "split_column")):
            if column is not None and column not in columns:
                raise ScilmError(f"{path}: no column {column!r} ({name(key)}); columns are: {', '.join(columns)}")
        id_column = id_column or next((c for c in pdata._ID_COLUMNS if c in columns), None)
        try:
            for row in reader:
                line = reader.line_num
                if None in row or any(value is None for value in row.values()):
                    raise ScilmError(f"{path}:{line}: not the header's {len(columns)} fields")
                rec_id = (row[id_column].strip() if id_column else "") or f"row{line}"
                where = f"{path}:{line} (record {rec_id})"
                labels = row[label_column].strip()
                if not labels:
                    if not drop_missing_labels:
                        raise ScilmError(f"{where}: {name('label_column')} {label_column!r} is empty "
                                         f"({name('drop_missing_labels')} excludes such rows, counted)")
                    counts[pdata.DROPPED_MISSING_LABEL] += 1
                    continue
                mask = row[mask_column].strip() if mask_column else None
                split = row[split_column].strip() if split_column else None
                records.append(_residue_record(
                    rec_id, row[sequence_column], labels, mask, where,
                    (f"{name('label_column')} {label_column!r}", f"{name('mask_column')} {mask_column!r}"),
                    split, None, line))
        except csv.Error as exc:
            raise ScilmError(f"{path}:{reader.line_num}: malformed table ({exc})") from None
    return records


def read_residues(path: str | Path, *, sequence_column: str, label_column: str, mask_column: str | None = None,
                  id_column: str | None = None, split_column: str | None = None, fasta_fields: str = SIGNALP_FIELDS,
                  drop_missing_labels: bool = False,
                  counts: MutableMapping[str, int] | None = None) -> list[ResidueRecord]:
    """Per-residue labelled records of ``path`` (table or 3-line FASTA, by extension), exact repeats of a
    record dropped and counted, an id reused for anything else an error. Raises ScilmError for bad input;
    on a FASTA file ``split_column`` names a header field (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ScilmError(f"{path}: no such file")
    counts = Counter() if counts is None else counts
    suffix = data_suffix(path)
    if suffix in pdata.FASTA_SUFFIXES:
        records = read_residue_fasta(path, fasta_fields, split_column)
    elif suffix in pdata.TABLE_SUFFIXES:
        records = read_residue_table(path, sequence_column, label_column, mask_column, id_column, split_column,
                                     drop_missing_labels, counts)
    else:
        raise ScilmError(f"{path}: unknown file type {suffix!r} (use a 3-line FASTA {', '.join(pdata.FASTA_SUFFIXES)} "
                         f"or a table {', '.join(pdata.TABLE_SUFFIXES)}, each optionally .gz)")
    records = pdata._dedupe(records, path, counts)
    if not records:
        raise ScilmError(f"{path}: no usable records")
    return records


def label_alphabet(records: list[ResidueRecord], alphabet: str | None, path: str | Path) -> list[str]:
    """The class order: ``alphabet``'s characters, or the training records' label characters sorted.

    Raises ScilmError naming the record, line and character when a label is outside ``alphabet``, and
    when fewer than two classes are scored.
    """
    if alphabet is not None:
        check_alphabet(records, list(alphabet), path)
        classes = list(dict.fromkeys(alphabet))
    else:
        classes = sorted({char for r in records for char, m in zip(r.label, r.mask or "1" * len(r.label))
                          if m == "1"})
    if len(classes) < 2:
        raise ScilmError(f"{path}: {len(classes)} label class(es) ({''.join(classes)!r}) among the scored residues; "
                         "a classifier needs at least two")
    return classes


def check_alphabet(records: list[ResidueRecord], classes: list[str], path: str | Path) -> None:
    """Every label character of ``records`` (masked residues included) is one of ``classes``."""
    known = "".join(classes)
    for record in records:
        where, field_name = record.origin or (f"{path}:{record.line} (record {record.id})", "the label string")
        check_label_chars(record.label, where, field_name, known)


__all__ = [
    "NOT_PREDICTED",
    "SIGNALP_FIELDS",
    "ResidueRecord",
    "check_alphabet",
    "check_label_chars",
    "label_alphabet",
    "read_residue_fasta",
    "read_residue_table",
    "read_residues",
]
