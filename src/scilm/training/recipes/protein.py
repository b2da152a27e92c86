"""What the protein recipes share: reading the labelled files, the train/validation split, and encoding.

Every check is done before any model loads or anything is written, and every record left out is
counted by reason (``counts``: :data:`scilm.data.protein.COUNT_KEYS`, ``n_filtered_length``,
``n_excluded_by_split``) for metrics.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import MutableMapping

from scilm.data import protein as pdata
from scilm.data.textio import data_suffix
from scilm.errors import ScilmError, name

log = logging.getLogger(__name__)

TABLE_ONLY = ("sequence_column", "label_column", "id_column", "split_column")


def check_fasta_settings(config) -> None:
    """Table-column settings on a FASTA file are errors, even at their default values (given explicitly)."""
    fasta = [path for path in (config.data, config.valid) if path and data_suffix(path) in pdata.FASTA_SUFFIXES]
    given = [key for key in TABLE_ONLY if hasattr(config, key) and config.is_set(key)]
    if fasta and given:  # the user meant something FASTA cannot do
        raise ScilmError(f"{fasta[0]}: {', '.join(name(key) for key in given)} name table columns, but this is a "
                         "FASTA file (its id is the header's first word, its label the DeepLoc header code)")


def read_labelled(config, path: str, reader_task: str | None, counts: MutableMapping[str, int],
                  split_column: str | None = None, read=None) -> list[pdata.ProteinRecord]:
    """The records of ``path`` with their raw labels (``reader_task`` None: the label column as written, or a
    multi-label config's ``label_column_list`` values joined by commas), filtered by ``min_length``/
    ``max_length`` (counted). ``read(path, split_column, counts)``: a recipe's own reader instead of
    :func:`scilm.data.protein.read_proteins`. Raises ScilmError for bad input."""
    if read is not None:
        records = read(path, split_column, counts)
    else:
        records = pdata.read_proteins(path, task=reader_task, sequence_column=config.sequence_column,
                                      label_column=getattr(config, "label_column", None), id_column=config.id_column,
                                      split_column=split_column, drop_missing_labels=config.drop_missing_labels,
                                      counts=counts, label_columns=getattr(config, "label_column_list", None))
    kept = pdata.filter_by_length(records, config.min_length, config.max_length)
    counts["n_filtered_length"] += len(records) - len(kept)
    if len(kept) < len(records):
        log.info("%s: %d record(s) outside min_length/max_length left out", path, len(records) - len(kept))
    if not kept:
        raise ScilmError(f"{path}: no sequence within {name('min_length')}/{name('max_length')}")
    return kept


def split_records(config, reader_task: str | None, counts: MutableMapping[str, int] | None = None,
                  stratify: bool = True, read=None) -> tuple[list[pdata.ProteinRecord], list[pdata.ProteinRecord]]:
    """Training and validation records: ``valid`` file, ``split_column`` values, or a seeded split of
    ``data`` (stratified by label for classification). Rows of other split values than
    ``train_split``/``valid_split`` are left out and counted (``n_excluded_by_split``: FLIP's test rows).
    ``read``: a recipe's own reader (see :func:`read_labelled`), which checks its own settings."""
    counts = Counter() if counts is None else counts
    if read is None:
        check_fasta_settings(config)
    records = read_labelled(config, config.data, reader_task, counts, config.split_column, read)
    if config.valid:
        return records, read_labelled(config, config.valid, reader_task, counts, None, read)
    if config.split_column:
        valid_value = str(config.valid_split)
        valid = [r for r in records if r.split == valid_value]
        train = [r for r in records if r.split != valid_value and
                 (config.train_split is None or r.split == str(config.train_split))]
        counts["n_excluded_by_split"] += len(records) - len(valid) - len(train)
        if counts["n_excluded_by_split"]:
            log.info("%s: %d record(s) of other %s values left out", config.data, counts["n_excluded_by_split"],
                     config.split_column)
        found = sorted({str(r.split) for r in records})
        for part, value in ((valid, valid_value), (train, config.train_split)):
            if not part:
                raise ScilmError(f"{config.data}: no row to {'validate' if part is valid else 'train'} on: "
                                 f"{config.split_column} values are {', '.join(found)} (asked: {value!r})")
        return train, valid
    if stratify:
        pdata.check_labels(records, config.data)
        return pdata.stratified_split(records, config.valid_fraction, config.seed)
    return random_split(records, config.valid_fraction, config.seed, config.data)


def random_split(records: list[pdata.ProteinRecord], valid_fraction: float, seed: int, path: str):
    """A seeded random split (scikit-learn's ``train_test_split``) keeping input order on each side."""
    from sklearn.model_selection import train_test_split

    if len(records) < 2:
        raise ScilmError(f"{path}: {len(records)} record(s): too few to split off a validation set")
    train_index, valid_index = train_test_split(range(len(records)), test_size=valid_fraction, random_state=seed)
    return [records[i] for i in sorted(train_index)], [records[i] for i in sorted(valid_index)]


def encode_records(records: list[pdata.ProteinRecord], tokenizer, truncate: int, targets: list,
                   long_policy: str = "head") -> list[dict]:
    """Token ids (with <cls>/<eos>) and a target per record; each sequence longer than ``truncate``
    residues is cut by ``long_policy`` (head: the first ``truncate``; ends: both termini) before
    tokenizing, as predict/embed/serve cut it (:mod:`scilm.inference.policy`). Raises ScilmError for
    ``window`` (several pieces per record) or another name."""
    from scilm.inference.policy import TRAINING_POLICIES, check_long_policy, make_policy

    policy = make_policy(check_long_policy(long_policy, TRAINING_POLICIES), truncate)
    sequences = [policy(r.sequence) for r in records]
    n_cut = sum(policy.cuts(r.sequence) for r in records)
    if n_cut:
        log.info("%d of %d sequences %s (%s, truncate)", n_cut, len(records), policy.describe(), policy.name)
    encoded = tokenizer(sequences, truncation=True, max_length=truncate + 2)
    return [{"input_ids": ids, "attention_mask": mask, "labels": target}
            for ids, mask, target in zip(encoded["input_ids"], encoded["attention_mask"], targets, strict=True)]


def record_counts(counts: MutableMapping[str, int]) -> dict[str, int]:
    """The left-out counts every protein recipe reports (zeros included), for metrics.json."""
    return {key: int(counts[key]) for key in (*pdata.COUNT_KEYS, "n_filtered_length", "n_excluded_by_split")}
