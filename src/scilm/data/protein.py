"""Protein data: validated records from DeepLoc FASTA or DeepLoc-2-style CSV/TSV/TXT, and splits.

Every reader returns a list of :class:`ProteinRecord`; every problem with the input is a
:class:`~scilm.errors.ScilmError` that names the file, the line or record, and what is wrong.
Files are read through :func:`scilm.data.textio.open_text` (UTF-8, a byte-order mark ignored,
``.gz`` decompressed transparently).

Policies (one place each, used by training, ``predict``, ``embed`` and ``serve``):

- Alphabet: :func:`normalize_sequence`. Non-ASCII characters are rejected *before* upper-casing
  (``'ı'.upper() == 'I'``, ``'ſ'.upper() == 'S'``), each error names the character and its position.
- Nothing dropped silently. Rows a reader leaves out (multi-location rows for ``localization``,
  DeepLoc ``U`` rows for ``membrane``, missing labels when asked, exact repeats) are counted in the
  ``counts`` mapping the caller passes and logged with their number.
- Duplicated ids. With ``unique_ids=True`` (training: records are named by id in errors, splits and
  outputs) an exact repeat (same id, sequence, label and split) is dropped and counted; the same id
  with a different sequence, label or split is an error naming the id and both lines. With
  ``unique_ids=False`` (``predict``, ``embed``, ``pretrain``) every record is kept, in file order.
- Labels: missing-value markers (empty, ``NaN``, ``NA``, ``N/A``, ``None``, ``null``, any case) are an
  error naming the line, or excluded and counted with ``drop_missing_labels=True``; numeric labels
  are normalised (``1``, ``1.0``, ``+1`` and ``1e0`` are the one class ``1``).
- Settings are never silently replaced: a table-only setting on a FASTA file (sequence, label, id or
  split column) is an error; ``task="localization"`` on a table builds the 10-class target from the
  DeepLoc-2 one-hot location columns (or is an error when they are missing).
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scilm.data.textio import data_suffix, open_text
from scilm.errors import ScilmError
from scilm.errors import name as setting_name

log = logging.getLogger(__name__)

# the bundled DeepLoc-1 slices (train.fasta, valid.fasta): the one place that knows where they live
BUNDLED_DEEPLOC1 = Path(__file__).resolve().parent / "bundled" / "deeploc1"
STANDARD_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY")
# X unknown, B = D/N, Z = E/Q, U selenocysteine, O pyrrolysine: all in the ESM-2 vocabulary.
EXTRA_RESIDUES = frozenset("XBZUO")
VALID_RESIDUES = STANDARD_RESIDUES | EXTRA_RESIDUES
_ASCII_WHITESPACE = frozenset(string.whitespace)

MEMBRANE_LABELS = ("soluble", "membrane")
LOCALIZATION_LABELS = (
    "Cytoplasm", "Nucleus", "Extracellular", "Cell membrane", "Mitochondrion", "Plastid",
    "Endoplasmic reticulum", "Lysosome/Vacuole", "Golgi apparatus", "Peroxisome",
)
TASKS = ("membrane", "localization")
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
_ID_COLUMNS = ("ACC", "id", "ID", "sid", "accession", "name")
# The readers' defaults: a FASTA file accepts these (they are what every caller passes unless told).
DEFAULT_SEQUENCE_COLUMN = "Sequence"
DEFAULT_LABEL_COLUMN = "Membrane"
# Missing-value markers of pandas / R / spreadsheets, compared case-insensitively after stripping.
MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "none", "null"})

# Keys of the ``counts`` mapping the readers fill (each also logged when non-zero).
SKIPPED_MULTILOCATION = "n_skipped_multilocation"
SKIPPED_UNKNOWN_LABEL = "n_skipped_unknown_label"
DROPPED_MISSING_LABEL = "n_dropped_missing_label"
DROPPED_EXACT_DUPLICATES = "n_dropped_exact_duplicates"
COUNT_KEYS = (SKIPPED_MULTILOCATION, SKIPPED_UNKNOWN_LABEL, DROPPED_MISSING_LABEL, DROPPED_EXACT_DUPLICATES)
_COUNT_WORDS = {
    SKIPPED_MULTILOCATION: "multi-location record(s) skipped (the localization task is single-label)",
    SKIPPED_UNKNOWN_LABEL: "record(s) with an unknown membrane label (DeepLoc 'U') skipped",
    DROPPED_MISSING_LABEL: "record(s) with a missing label excluded (drop_missing_labels)",
    DROPPED_EXACT_DUPLICATES: "exact repeat(s) of an earlier record (same id, sequence, label) dropped",
}


@dataclass(frozen=True)
class ProteinRecord:
    """One protein: an id, a validated upper-case sequence, an optional label name and split.

    ``line`` is the 1-based line of the record's header (FASTA) or row (tables), for messages.
    """

    id: str
    sequence: str
    label: str | None = None
    split: str | None = None
    line: int | None = field(default=None, compare=False)


def describe_char(char: str) -> str:
    """``'А' (U+0410 CYRILLIC CAPITAL LETTER A)``: look-alikes named, so the user sees why."""
    name = unicodedata.name(char, "unnamed character")
    return f"{char!r} (U+{ord(char):04X} {name})" if char.isprintable() else f"U+{ord(char):04X} ({name})"


def normalize_sequence(raw: str, where: str) -> str:
    """The one alphabet policy: ``raw`` -> upper-case residues, or a :class:`ScilmError`.

    ASCII whitespace is dropped anywhere and one trailing ``*`` (stop) is allowed. Every other
    character must be one of the 20 standard amino acids or X B Z U O, in either case. Non-ASCII
    characters are rejected *before* upper-casing (Unicode case mapping turns ``'ı'`` into ``'I'``
    and ``'ſ'`` into ``'S'``). The error names ``where``, the character (code point and Unicode
    name) and its 1-based position among the residues. Used by every reader, ``predict``,
    ``embed`` and the server (:func:`scilm.serving.limits.clean_protein`).
    """
    residues = [char for char in raw if char not in _ASCII_WHITESPACE]
    if residues and residues[-1] == "*":
        residues.pop()
    if not residues:
        raise ScilmError(f"{where}: empty sequence")
    for position, char in enumerate(residues, start=1):
        if not char.isascii() or char.upper() not in VALID_RESIDUES:
            raise ScilmError(
                f"{where}: invalid residue {describe_char(char)} at position {position} "
                f"(allowed: the 20 standard amino acids and X B Z U O)"
            )
    return "".join(residues).upper()


_INTEGER_SPELLING = re.compile(r"^([+-]?)(0|[1-9][0-9]*)(?:\.0*)?$")  # 1, +1, 1.0, 1.00 (ASCII digits)


def normalize_label(raw: str | None) -> str | None:
    """A label value as one class name: None for a missing marker, integers in one spelling.

    ``" 1.0 "``, ``"1"``, ``"+1"`` and ``"1.00"`` -> ``"1"`` (a numeric column written by a tool
    that stores floats); ``"NaN"``, ``"NA"``, ``"None"``, ``""`` -> None (see :data:`MISSING_LABELS`).
    Everything else is kept as written (stripped): ``"3.10"`` and ``"3.1"`` stay two classes (EC
    numbers, versions), ``"01"`` stays ``"01"``, and non-ASCII digits are text.
    """
    value = (raw or "").strip()
    if value.lower() in MISSING_LABELS:
        return None
    match = _INTEGER_SPELLING.match(value)
    if match:
        sign, digits = match.groups()
        return f"-{digits}" if sign == "-" and digits != "0" else digits
    return value


def _fasta_label(header_rest: str, task: str, where: str, counts: MutableMapping[str, int]) -> str | None:
    """DeepLoc header ``Location-M|S|U`` -> the label for ``task``; None = skipped (and counted)."""
    token = header_rest.split()[0] if header_rest.split() else ""
    location, sep, membrane = token.rpartition("-")
    if not sep or membrane not in ("M", "S", "U"):
        raise ScilmError(
            f"{where}: header has no DeepLoc label 'Location-M|S|U' (got {token or 'nothing'!r})"
        )
    if task == "membrane":
        label = {"S": "soluble", "M": "membrane", "U": None}[membrane]
        if label is None:
            counts[SKIPPED_UNKNOWN_LABEL] += 1
        return label
    names = [part.replace(".", " ") for part in location.split("-")]
    unknown = [name for name in names if name not in LOCALIZATION_LABELS]
    if unknown:
        raise ScilmError(f"{where}: unknown location {unknown[0]!r} in the header "
                         f"(locations: {', '.join(LOCALIZATION_LABELS)}, spaces written as '.')")
    if len(names) > 1:  # e.g. "Cytoplasm-Nucleus": DeepLoc-1's dual-location records
        counts[SKIPPED_MULTILOCATION] += 1
        return None
    return names[0]


def read_fasta(path: Path, task: str | None, counts: MutableMapping[str, int] | None = None) -> list[ProteinRecord]:
    """Read FASTA; with ``task`` the DeepLoc header label is parsed (skipped records counted)."""
    return list(iter_fasta(path, task, counts))


def iter_fasta(path: Path, task: str | None, counts: MutableMapping[str, int] | None = None) -> Iterator[ProteinRecord]:
    """:func:`read_fasta` one record at a time (memory does not grow with the file)."""
    counts = Counter() if counts is None else counts
    header: tuple[int, str, str] | None = None  # (line number, id, rest of header)
    chunks: list[str] = []

    def flush() -> ProteinRecord | None:
        if header is None:
            return None
        line_no, rec_id, rest = header
        where = f"{path}:{line_no} (record {rec_id})"
        seq = normalize_sequence("".join(chunks), where)
        label = _fasta_label(rest, task, where, counts) if task else None
        if task is None or label is not None:
            return ProteinRecord(rec_id, seq, label, line=line_no)
        return None

    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.strip(string.whitespace)  # ASCII only: a stray U+00A0 must reach the residue check
            if line.startswith(">"):
                if (record := flush()) is not None:
                    yield record
                fields = line[1:].split(maxsplit=1)
                if not fields:
                    raise ScilmError(f"{path}:{line_no}: FASTA header without an id")
                header = (line_no, fields[0], fields[1] if len(fields) > 1 else "")
                chunks = []
            elif line:
                if header is None:
                    raise ScilmError(f"{path}:{line_no}: sequence before the first '>' header")
                chunks.append(line)
    if (record := flush()) is not None:
        yield record


def _readable_labels(values: set[str], column: str) -> dict[str, str]:
    """Map label values to readable names: a 0/1 ``Membrane`` column becomes soluble/membrane."""
    if column.lower() == "membrane" and values <= {"0", "1"}:
        return {v: MEMBRANE_LABELS[int(v)] for v in values}
    return {v: v for v in values}


def _table_delimiter(path: Path, header: str) -> str:
    """``.tsv`` tab, ``.csv`` comma; a ``.txt`` table's delimiter is read from its header line."""
    suffix = data_suffix(path)
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    tabs, commas = "\t" in header, "," in header
    if tabs and commas:
        raise ScilmError(f"{path}:1: the header has both tabs and commas, so the delimiter of this .txt "
                         "table is ambiguous; rename it .tsv (tab-separated) or .csv (comma-separated)")
    return "\t" if tabs else ","


def table_columns(path: str | Path) -> list[str]:
    """The column names of a CSV/TSV/TXT table's header line (``.gz`` too). Raises ScilmError for an
    empty file or a header the csv module cannot parse."""
    path = Path(path)
    with open_text(path, newline="") as handle:
        header = handle.readline()
    if not header.strip():
        raise ScilmError(f"{path}: empty file (no header line)")
    try:
        return next(csv.reader([header], delimiter=_table_delimiter(path, header)))
    except csv.Error as exc:
        raise ScilmError(f"{path}:1: malformed header ({exc})") from None


def _location_columns(path: Path, columns: list[str]) -> list[str]:
    """The DeepLoc-2 one-hot location columns present (at least two), absent ones logged."""
    present = [name for name in LOCALIZATION_LABELS if name in columns]
    if len(present) < 2:
        raise ScilmError(
            f"{path}: task 'localization' on a table needs the DeepLoc-2 one-hot location columns "
            f"({', '.join(LOCALIZATION_LABELS)}); found {', '.join(present) or 'none'}; columns are: "
            f"{', '.join(columns)}"
        )
    absent = [name for name in LOCALIZATION_LABELS if name not in present]
    if absent:
        log.info("%s: no column for location(s) %s; those classes cannot occur", path, ", ".join(absent))
    return present


def _onehot_location(row: dict, columns: list[str], where: str) -> tuple[str | None, int]:
    """(the one location marked 1, or None; how many are marked) for a DeepLoc-2 row."""
    marked = []
    for name in columns:
        value = normalize_label(row[name])
        if value is None:
            return None, 0  # a missing marker in any location column: the label is missing
        if value not in ("0", "1"):
            raise ScilmError(f"{where}: column {name!r} holds {row[name]!r}; location columns are one-hot 0/1")
        if value == "1":
            marked.append(name)
    return (marked[0] if len(marked) == 1 else None), len(marked)


def _multi_hot(row: dict, columns: Sequence[str], where: str) -> tuple[str | None, str]:
    """(the row's 0/1 values of ``columns`` joined by commas, e.g. ``"0,1,1"``, or None when one is a
    missing marker; what is missing). A value other than 0/1 is a ScilmError naming the column."""
    values = []
    for column in columns:
        value = normalize_label(row[column])
        if value is None:
            return None, f"missing label {row[column]!r} in column {column!r}"
        if value not in ("0", "1"):
            raise ScilmError(f"{where}: column {column!r} holds {row[column]!r}; label columns hold 0 or 1")
        values.append(value)
    return ",".join(values), ""


def read_table(
    path: Path,
    sequence_column: str,
    label_column: str | None,
    id_column: str | None = None,
    split_column: str | None = None,
    task: str | None = None,
    drop_missing_labels: bool = False,
    counts: MutableMapping[str, int] | None = None,
    label_columns: Sequence[str] | None = None,
) -> list[ProteinRecord]:
    """Read a CSV/TSV/TXT table in the DeepLoc-2 layout (or any table with a sequence column).

    Labels come from ``label_column``, or with ``task="localization"`` from the one-hot location
    columns (single-location rows; multi-location rows skipped and counted), or from several 0/1
    ``label_columns`` (multi-label: the label is their values joined by commas, ``"0,1,1"``). A
    missing label is an error naming the line unless ``drop_missing_labels`` (then excluded and
    counted).
    """
    pending = list(_iter_table_rows(path, sequence_column, label_column, id_column, split_column, task,
                                    drop_missing_labels, Counter() if counts is None else counts, label_columns))
    names = (_readable_labels({p[3] for p in pending}, label_column)
             if label_column is not None and task != "localization" and not label_columns else {})
    return [ProteinRecord(rec_id, seq, names.get(label, label), split, line=line_no)
            for line_no, rec_id, seq, label, split in pending]


def _iter_table_rows(path: Path, sequence_column: str, label_column: str | None, id_column: str | None,
                     split_column: str | None, task: str | None, drop_missing_labels: bool,
                     counts: MutableMapping[str, int], label_columns: Sequence[str] | None = None,
                     ) -> Iterator[tuple[int, str, str, str | None, str | None]]:
    """The rows of :func:`read_table` one at a time: (line, id, sequence, raw label, split)."""
    localization = task == "localization"
    kind = "table"
    with open_text(path, newline="") as handle:
        header = handle.readline()
        if not header.strip():
            raise ScilmError(f"{path}: empty file (no header line)")
        delimiter = _table_delimiter(path, header)
        kind = "TSV" if delimiter == "\t" else "CSV"
        reader = csv.DictReader(itertools.chain([header], handle), delimiter=delimiter)
        try:
            columns = reader.fieldnames or []
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            if repeated:  # csv.DictReader would silently keep the last of them
                raise ScilmError(f"{path}:1: column name(s) {', '.join(map(repr, repeated))} appear more than once")
            if id_column is None:
                id_column = next((c for c in _ID_COLUMNS if c in columns), None)
            for name, flag in ((sequence_column, "--sequence-column"), (label_column, "--label-column"),
                               (id_column, "--id-column"), (split_column, "--split-column")):
                if name is not None and name not in columns:
                    raise ScilmError(
                        f"{path}: no column {name!r} ({flag}); columns are: {', '.join(columns)}"
                    )
            for name in label_columns or ():
                if name not in columns:
                    raise ScilmError(f"{path}: no label column {name!r} ({setting_name('label_columns')}); "
                                     f"columns are: {', '.join(columns)}")
            location_columns = _location_columns(path, columns) if localization else []
            for row in reader:
                line_no = reader.line_num
                if None in row:
                    raise ScilmError(f"{path}:{line_no}: more fields than the header's {len(columns)}")
                if any(value is None for value in row.values()):
                    raise ScilmError(f"{path}:{line_no}: fewer fields than the header's {len(columns)}")
                rec_id = (row[id_column].strip() if id_column else "") or f"row{line_no}"
                where = f"{path}:{line_no} (record {rec_id})"
                seq = normalize_sequence(row[sequence_column], where)
                label = None
                if localization:
                    label, n_marked = _onehot_location(row, location_columns, where)
                    if n_marked > 1:
                        counts[SKIPPED_MULTILOCATION] += 1
                        continue
                    missing = f"no location marked in columns {', '.join(location_columns)}"
                elif label_columns:
                    label, missing = _multi_hot(row, label_columns, where)
                elif label_column is not None:
                    label = normalize_label(row[label_column])
                    missing = f"missing label {row[label_column]!r} in column {label_column!r}"
                if (localization or label_column is not None or label_columns) and label is None:
                    if not drop_missing_labels:
                        raise ScilmError(f"{where}: {missing} (--drop-missing-labels excludes such rows, "
                                         "counted)")
                    counts[DROPPED_MISSING_LABEL] += 1
                    continue
                split = row[split_column].strip() if split_column else None
                yield line_no, rec_id, seq, label, split
        except csv.Error as exc:
            raise ScilmError(f"{path}:{reader.line_num}: malformed {kind} ({exc})") from None


def _check_fasta_settings(path: Path, sequence_column, label_column, id_column, split_column) -> None:
    """Table-only settings on a FASTA file are errors, never silently ignored."""
    given = {
        "--sequence-column": sequence_column not in (None, DEFAULT_SEQUENCE_COLUMN),
        "--label-column": label_column not in (None, DEFAULT_LABEL_COLUMN),
        "--id-column": id_column is not None,
        "--split-column": split_column is not None,
    }
    flags = [flag for flag, set_ in given.items() if set_]
    if flags:
        raise ScilmError(
            f"{path}: {', '.join(flags)} name table columns, but this is a FASTA file (its id is the header's "
            "first word, its label the DeepLoc header 'Location-M|S|U' chosen by --task); use a CSV/TSV table "
            "or drop the option"
        )


def read_proteins(
    path: str | Path,
    task: str | None = "membrane",
    sequence_column: str | None = DEFAULT_SEQUENCE_COLUMN,
    label_column: str | None = DEFAULT_LABEL_COLUMN,
    id_column: str | None = None,
    split_column: str | None = None,
    *,
    unique_ids: bool = True,
    drop_missing_labels: bool = False,
    counts: MutableMapping[str, int] | None = None,
    label_columns: Sequence[str] | None = None,
) -> list[ProteinRecord]:
    """Read FASTA or a CSV/TSV/TXT table (each optionally ``.gz``), by extension.

    ``task``: ``"membrane"`` / ``"localization"`` (FASTA: from the DeepLoc header; tables: membrane
    uses ``label_column``, localization the one-hot location columns) or None for no labels (with
    ``label_column=None`` for tables). ``unique_ids``: the duplicate policy of the module docstring
    (True for training, False for predict/embed/pretrain: one record per input, in input order).
    ``counts`` (optional) receives the number of records left out by reason (:data:`COUNT_KEYS`);
    each non-zero number is also logged. ``label_columns`` (tables, with ``task=None`` and
    ``label_column=None``): several 0/1 columns, the multi-label target (see :func:`read_table`).
    Raises :class:`ScilmError` for any bad input.
    """
    path = Path(path)
    if task is not None and task not in TASKS:
        raise ScilmError(f"--task must be one of {', '.join(TASKS)} (got {task!r})")
    if not path.is_file():
        raise ScilmError(f"{path}: no such file")
    counts = Counter() if counts is None else counts
    before = Counter(counts)
    suffix = data_suffix(path)
    if suffix in FASTA_SUFFIXES and label_columns:
        raise ScilmError(f"{path}: {setting_name('label_columns')} name 0/1 columns of a CSV/TSV table, but this "
                         "is a FASTA file")
    if suffix in FASTA_SUFFIXES:
        _check_fasta_settings(path, sequence_column, label_column, id_column, split_column)
        records = read_fasta(path, task, counts)
    elif suffix in TABLE_SUFFIXES:
        if task == "localization" and label_column not in (None, DEFAULT_LABEL_COLUMN):
            raise ScilmError(f"{path}: give either task 'localization' (labels from the one-hot location "
                             f"columns) or --label-column {label_column!r}, not both")
        records = read_table(path, sequence_column or DEFAULT_SEQUENCE_COLUMN,
                             None if task == "localization" else label_column,
                             id_column, split_column, task, drop_missing_labels, counts, label_columns)
    else:
        raise ScilmError(
            f"{path}: unknown file type {suffix!r} (use FASTA {', '.join(FASTA_SUFFIXES)} "
            f"or a table {', '.join(TABLE_SUFFIXES)}, each optionally .gz)"
        )
    if unique_ids:
        records = _dedupe(records, path, counts)
    left_out = {key: counts[key] - before[key] for key in COUNT_KEYS if counts[key] - before[key]}
    for key, number in left_out.items():
        log.info("%s: %d %s", path, number, _COUNT_WORDS[key])
    if not records:
        why = "; ".join(f"{number} {_COUNT_WORDS[key]}" for key, number in left_out.items())
        raise ScilmError(f"{path}: no usable records ({why or 'empty file'})")
    return records


def iter_proteins(path: str | Path, sequence_column: str | None = DEFAULT_SEQUENCE_COLUMN,
                  id_column: str | None = None) -> Iterator[ProteinRecord]:
    """Unlabelled records one at a time, in file order: what ``read_proteins(path, task=None,
    label_column=None, unique_ids=False)`` returns, without holding the file in memory (``embed``,
    ``predict`` on inputs of any size). Same checks and messages; raises :class:`ScilmError` at the
    bad record (records before it have been yielded) and for a file without records (at its end).
    """
    path = Path(path)
    if not path.is_file():
        raise ScilmError(f"{path}: no such file")
    suffix = data_suffix(path)
    if suffix in FASTA_SUFFIXES:
        _check_fasta_settings(path, sequence_column, None, id_column, None)
        records = iter_fasta(path, None)
    elif suffix in TABLE_SUFFIXES:
        records = (ProteinRecord(rec_id, seq, None, None, line=line_no) for line_no, rec_id, seq, _, _ in
                   _iter_table_rows(path, sequence_column or DEFAULT_SEQUENCE_COLUMN, None, id_column, None, None,
                                    False, Counter()))
    else:
        raise ScilmError(
            f"{path}: unknown file type {suffix!r} (use FASTA {', '.join(FASTA_SUFFIXES)} "
            f"or a table {', '.join(TABLE_SUFFIXES)}, each optionally .gz)"
        )
    empty = True
    for record in records:
        empty = False
        yield record
    if empty:
        raise ScilmError(f"{path}: no usable records (empty file)")


def _dedupe(records: list[ProteinRecord], path: Path, counts: MutableMapping[str, int]) -> list[ProteinRecord]:
    """Drop (and count) exact repeats of a record; an id reused for anything else is an error."""
    seen: dict[str, ProteinRecord] = {}
    kept = []
    for record in records:
        previous = seen.get(record.id)
        if previous is None:
            seen[record.id] = record
            kept.append(record)
            continue
        lines = f"lines {previous.line} and {record.line}"
        if previous.sequence != record.sequence:
            raise ScilmError(
                f"{path}: duplicated id {record.id!r} names two different sequences ({lines}); training "
                "needs unique ids (records are named by id in splits, errors and outputs): rename one"
            )
        if previous.label != record.label:
            raise ScilmError(
                f"{path}: duplicated id {record.id!r} with conflicting labels "
                f"{previous.label!r} and {record.label!r} ({lines})"
            )
        if previous.split != record.split:
            raise ScilmError(
                f"{path}: duplicated id {record.id!r} in two splits {previous.split!r} and {record.split!r} ({lines})"
            )
        counts[DROPPED_EXACT_DUPLICATES] += 1
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
    try:  # by value, ties ("1.1", "1.10") by spelling: the class order never depends on set order
        return sorted(present, key=lambda name: (float(name), name))
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
    """A seeded split keeping each class's share (scikit-learn's ``train_test_split(stratify=...)``).

    A class with a single record cannot be on both sides: it trains. Each side keeps input order.

    Raises:
        ScilmError: ``valid_fraction`` not in (0, 1), or too few records to validate on.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < valid_fraction < 1.0:
        raise ScilmError(f"{setting_name('valid_fraction')} must be between 0 and 1 (got {valid_fraction})")
    sizes = Counter(record.label for record in records)
    splittable = [i for i, record in enumerate(records) if sizes[record.label] > 1]
    labels = [str(records[i].label) for i in splittable]
    n_valid = max(round(len(splittable) * valid_fraction), len(set(labels)))  # one of each class at least
    if not splittable or len(splittable) - n_valid < len(set(labels)):
        raise ScilmError(f"{len(records)} records are too few to keep every class on both sides of a "
                         f"{setting_name('valid_fraction')} {valid_fraction} split; give {setting_name('valid')} instead")
    train_index, valid_index = train_test_split(splittable, test_size=n_valid, stratify=labels, random_state=seed)
    # scikit-learn rounds each class's share: a rare class can land on one side only; move one across
    for source, target in ((train_index, valid_index), (valid_index, train_index)):
        for label in sorted(set(labels) - {str(records[i].label) for i in target}):
            moved = next(i for i in source if str(records[i].label) == label)
            source.remove(moved)
            target.append(moved)
    chosen = set(valid_index)
    return ([r for i, r in enumerate(records) if i not in chosen], [r for i, r in enumerate(records) if i in chosen])


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
    "ProteinRecord", "read_proteins", "iter_proteins", "read_fasta", "read_table", "normalize_sequence",
    "filter_by_length", "label_names", "check_labels", "stratified_split", "split_by_column",
    "check_known_labels", "MEMBRANE_LABELS", "LOCALIZATION_LABELS", "TASKS", "normalize_label",
    "describe_char", "MISSING_LABELS", "COUNT_KEYS", "table_columns",
]
