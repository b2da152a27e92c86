"""Protein readers: labels, normalisation, and a clear error for every bad input."""

from __future__ import annotations

import pytest

from conftest import DEEPLOC_TRAIN, DEEPLOC_VALID, write_fasta
from scilm.data import protein as pdata
from scilm.errors import ScilmError


def test_bundled_deeploc_counts_match_its_source():
    train = pdata.read_proteins(DEEPLOC_TRAIN, task="membrane")
    valid = pdata.read_proteins(DEEPLOC_VALID, task="membrane")
    assert (sum(r.label == "membrane" for r in train), sum(r.label == "soluble" for r in train)) == (743, 1003)
    assert (sum(r.label == "membrane" for r in valid), sum(r.label == "soluble" for r in valid)) == (426, 595)
    # always answering "soluble" on the validation file scores 0.58
    assert round(595 / 1021, 2) == 0.58


def test_localization_labels_are_the_ten_classes():
    records = pdata.read_proteins(DEEPLOC_VALID, task="localization")
    names = pdata.label_names(records, "localization")
    assert set(names) == set(pdata.LOCALIZATION_LABELS)
    assert all(r.label != "Cytoplasm-Nucleus" for r in records)  # ambiguous headers are skipped


def test_sequence_normalisation(tmp_path):
    path = write_fasta(tmp_path / "a.fasta", [("P1", "Cytoplasm-S", "mkt ayx\nLLB*"), ("P2", "Nucleus-M", "ACDE")])
    records = pdata.read_proteins(path)
    assert [r.sequence for r in records] == ["MKTAYXLLB", "ACDE"]
    assert [r.label for r in records] == ["soluble", "membrane"]


@pytest.mark.parametrize(
    "content, message",
    [
        (">P1 Cytoplasm-S\nMKTJAY\n", "record P1) : invalid residue 'J' (U+004A LATIN CAPITAL LETTER J) at position 4"),
        (">P1 Cytoplasm-S\nMK1\n", "invalid residue '1' (U+0031 DIGIT ONE) at position 3"),
        (">P1 Cytoplasm-S\nMKА\n", "invalid residue 'А' (U+0410 CYRILLIC CAPITAL LETTER A) at position 3"),  # Cyrillic A look-alike
        (">P1 Cytoplasm-S\n\n>P2 Nucleus-M\nMK\n", "record P1): empty sequence"),
        ("MKT\n", ":1: sequence before the first '>' header"),
        (">P1 Cytoplasm\nMKT\n", "no DeepLoc label"),
        ("", "no usable records"),
        (">P1 Cytoplasm-S\nMKT\n>P1 Nucleus-M\nMKT\n", "duplicated id 'P1' with conflicting labels"),
    ],
)
def test_bad_fasta_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.fasta"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ScilmError) as err:
        pdata.read_proteins(path)
    text = str(err.value)
    assert str(path) in text and "\n" not in text
    assert message.replace(") :", "):") in text


def test_repeated_id_with_same_label_is_kept_once(tmp_path):
    path = write_fasta(tmp_path / "a.fasta", [("P1", "Cytoplasm-S", "MKT"), ("P1", "Cytoplasm-S", "MKT")])
    assert len(pdata.read_proteins(path)) == 1


def test_table_reader_and_membrane_names(deeploc2_csv):
    records = pdata.read_proteins(deeploc2_csv, sequence_column="Sequence", label_column="Membrane",
                                  split_column="Partition")
    assert {r.label for r in records} == {"soluble", "membrane"}
    assert records[0].id.startswith(("P", "Q", "O", "A")) and records[0].split == "0"
    train, valid = pdata.split_by_column(records, "4", deeploc2_csv)
    assert {r.split for r in valid} == {"4"} and "4" not in {r.split for r in train}


def test_table_errors(tmp_path, deeploc2_csv):
    with pytest.raises(ScilmError, match="no column 'Seq' \\(--sequence-column\\)"):
        pdata.read_proteins(deeploc2_csv, sequence_column="Seq")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ScilmError, match="empty file"):
        pdata.read_proteins(empty)
    bad = tmp_path / "bad.csv"
    bad.write_text("ACC,Membrane,Sequence\nP1,1,MKT\nP2,0,MK*T\n")
    with pytest.raises(ScilmError, match=r"bad.csv:3 \(record P2\): invalid residue '\*' \(U\+002A ASTERISK\) at position 3"):
        pdata.read_proteins(bad)
    with pytest.raises(ScilmError, match="no such file"):
        pdata.read_proteins(tmp_path / "missing.fasta")


def test_single_class_is_rejected(tmp_path):
    path = write_fasta(tmp_path / "a.fasta", [("P1", "Cytoplasm-S", "MKT"), ("P2", "Nucleus-S", "MKV")])
    with pytest.raises(ScilmError, match="only one label class"):
        pdata.check_labels(pdata.read_proteins(path), path)


def test_stratified_split_keeps_shares_and_is_seeded():
    records = pdata.read_proteins(DEEPLOC_VALID)
    train, valid = pdata.stratified_split(records, 0.2, seed=1)
    assert len(train) + len(valid) == len(records)
    share = sum(r.label == "membrane" for r in valid) / len(valid)
    assert abs(share - 426 / 1021) < 0.01
    again, _ = pdata.stratified_split(records, 0.2, seed=1)
    assert [r.id for r in again] == [r.id for r in train]


def test_length_filter():
    records = pdata.read_proteins(DEEPLOC_VALID)
    kept = pdata.filter_by_length(records, 100, 512)
    assert kept and all(100 <= len(r.sequence) <= 512 for r in kept)


def test_stratified_split_keeps_a_rare_class_on_both_sides():
    """scikit-learn rounds each class's share: 2 of 52 at 0.1 would validate on no 'b' at all."""
    records = [pdata.ProteinRecord(f"a{i}", "MKT", "a") for i in range(50)]
    records += [pdata.ProteinRecord(f"b{i}", "MKT", "b") for i in range(2)]
    train, valid = pdata.stratified_split(records, 0.1, seed=0)
    assert {r.label for r in valid} == {r.label for r in train} == {"a", "b"}
    assert sorted(r.id for r in train + valid) == sorted(r.id for r in records)
    assert [r.id for r in train] == [r.id for r in records if r in train]  # input order kept
