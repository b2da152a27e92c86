"""Every text input read the same way (BOM, gzip, delimiters), and the reader policies: alphabet,
duplicated ids, missing and numeric labels, DeepLoc-2 localization, no setting silently ignored.

Issue 11 cases 2, 3, 8, 9 (reader part) and issue 12 items 6 and 13 (reader part).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import DEEPLOC_VALID, LOCATIONS, write_fasta
from scilm.data import protein as pdata
from scilm.errors import ScilmError

BOM = "\ufeff"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HPA = SHARED / "deeploc2_subsets" / "hpa_testset.csv"
TEXTCHEM = Path(__file__).parent / "data" / "textchem"
TABLE = "ACC,Membrane,Sequence\nP1,0,MKTAYIAKQR\nP2,1,MLLVVAALLA\nP3,0,MKVLAAGIVG\n"
FASTA = ">P1 Cytoplasm-S\nMKTAYIAKQR\n>P2 Cell.membrane-M\nMLLVVAALLA\n"


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes(((BOM if bom else "") + text).encode("utf-8"))
    return path


def records_of(path: Path, **kwargs) -> list[tuple]:
    return [(r.id, r.sequence, r.label, r.split) for r in pdata.read_proteins(path, **kwargs)]


# -- case 2: a UTF-8 byte-order mark is ignored in every text input ---------------------------------

@pytest.mark.parametrize("name, text", [("a.fasta", FASTA), ("a.csv", TABLE), ("a.tsv", TABLE.replace(",", "\t")),
                                        ("a.txt", TABLE.replace(",", "\t")), ("b.txt", TABLE)])
def test_bom_is_ignored_by_the_protein_readers(tmp_path, name, text):
    plain = records_of(write(tmp_path / name, text))
    with_bom = records_of(write(tmp_path / f"bom-{name}", text, bom=True))
    assert with_bom == plain
    assert [r[0] for r in plain] == ["P1", "P2", "P3"][: len(plain)]  # ids from the first column, not row numbers


def test_bom_is_ignored_in_jsonl_converters_configs_and_input_lists(tmp_path):
    from scilm.data.textchem import convert_chebi20, convert_paragraph2actions, convert_uspto, read_jsonl
    from scilm.inference.generate import read_inputs
    from scilm.training.config import load_config

    jsonl = (TEXTCHEM / "textchem-sample" / "test.jsonl").read_text(encoding="utf-8")
    assert read_jsonl(write(tmp_path / "b.jsonl", jsonl, bom=True)) == read_jsonl(write(tmp_path / "a.jsonl", jsonl))

    chebi = (TEXTCHEM / "chebi20-validation.txt").read_text(encoding="utf-8")
    assert convert_chebi20(write(tmp_path / "chebi.txt", chebi, bom=True))[0] == convert_chebi20(TEXTCHEM / "chebi20-validation.txt")[0]
    src, tgt = (TEXTCHEM / "p2a-src-test.txt"), (TEXTCHEM / "p2a-tgt-test.txt")
    bom_src = write(tmp_path / "src.txt", src.read_text(encoding="utf-8"), bom=True)
    bom_tgt = write(tmp_path / "tgt.txt", tgt.read_text(encoding="utf-8"), bom=True)
    assert convert_paragraph2actions(bom_src, bom_tgt)[0] == convert_paragraph2actions(src, tgt)[0]
    sources, targets = TEXTCHEM / "uspto-valid_sources", TEXTCHEM / "uspto-valid_targets"
    bom_sources = write(tmp_path / "s", sources.read_text(encoding="utf-8"), bom=True)
    assert convert_uspto(bom_sources, targets)[0] == convert_uspto(sources, targets)[0]

    yaml_text = "data: train.fasta\nbatch_size: 4\ntask: localization\n"
    assert load_config(write(tmp_path / "b.yaml", yaml_text, bom=True), {}) == \
        load_config(write(tmp_path / "a.yaml", yaml_text), {})
    assert read_inputs([], write(tmp_path / "smiles.txt", "CCO\nc1ccccc1\n", bom=True)) == ["CCO", "c1ccccc1"]


def test_bom_is_ignored_in_json_settings_files(tmp_path):
    """--fsdp-config / --deepspeed files are read by scilm (BOM ignored) and handed over as dicts."""
    from scilm.data.textio import read_json

    shipped = Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / "zero2.json"
    text = shipped.read_text(encoding="utf-8")
    assert read_json(write(tmp_path / "b.json", text, bom=True)) == read_json(shipped) == json.loads(text)
    with pytest.raises(ScilmError, match=r"--deepspeed .*c.json:2: not valid JSON"):
        read_json(write(tmp_path / "c.json", '{\n  "a": }'), "--deepspeed ")


def test_non_utf8_byte_is_named_by_line(tmp_path):
    path = tmp_path / "a.fasta"
    path.write_bytes(b">P1 Cytoplasm-S\nMKT\n>P2 Nucleus-S\nMK\xffT\n")
    with pytest.raises(ScilmError, match=r"a.fasta:4: not UTF-8 text \(invalid start byte at byte 36\)"):
        pdata.read_proteins(path)


# -- issue 12 item 13: gzip read transparently, .txt delimiter sniffed ------------------------------

def test_gzip_inputs_read_like_plain_ones(tmp_path):
    from scilm.data.textchem import read_jsonl

    for name, text in (("a.fasta", FASTA), ("a.csv", TABLE), ("a.tsv", TABLE.replace(",", "\t"))):
        plain = write(tmp_path / name, text)
        packed = tmp_path / f"{name}.gz"
        packed.write_bytes(gzip.compress((BOM + text).encode()))
        assert records_of(packed) == records_of(plain)
    jsonl = TEXTCHEM / "textchem-sample" / "test.jsonl"
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(jsonl.read_bytes()))
    assert read_jsonl(packed) == read_jsonl(jsonl)
    broken = tmp_path / "broken.fasta.gz"
    broken.write_bytes(gzip.compress(FASTA.encode())[:-12])
    with pytest.raises(ScilmError, match="broken.fasta.gz: not a readable gzip file"):
        pdata.read_proteins(broken)


def test_tab_separated_txt_is_not_parsed_as_csv(tmp_path):
    tsv = records_of(write(tmp_path / "a.tsv", TABLE.replace(",", "\t")))
    assert records_of(write(tmp_path / "a.txt", TABLE.replace(",", "\t"))) == tsv
    assert records_of(write(tmp_path / "c.txt", TABLE)) == tsv
    ambiguous = write(tmp_path / "d.txt", "ACC\tMembrane,Sequence\nP1\t0,MKT\n")
    with pytest.raises(ScilmError, match=r"d.txt:1: .*ambiguous; rename it .tsv .* or .csv"):
        pdata.read_proteins(ambiguous)


def test_ragged_rows_are_errors(tmp_path):
    with pytest.raises(ScilmError, match=r"a.csv:3: more fields than the header's 3"):
        pdata.read_proteins(write(tmp_path / "a.csv", "ACC,Membrane,Sequence\nP1,0,MKT\nP2,1,MKV,x\n"))
    with pytest.raises(ScilmError, match=r"b.csv:2: fewer fields than the header's 3"):
        pdata.read_proteins(write(tmp_path / "b.csv", "ACC,Membrane,Sequence\nP1,0\n"))
    with pytest.raises(ScilmError, match=r"c.csv:1: column name\(s\) 'Sequence' appear more than once"):
        pdata.read_proteins(write(tmp_path / "c.csv", "ACC,Sequence,Membrane,Sequence\nP1,MKT,0,MKV\n"))


# -- case 9: one alphabet policy -----------------------------------------------------------------

@pytest.mark.parametrize("raw, char, position", [
    ("MKıTſ", "'ı' (U+0131 LATIN SMALL LETTER DOTLESS I)", 3),  # 'ı'.upper() == 'I'
    ("MKTſ", "'ſ' (U+017F LATIN SMALL LETTER LONG S)", 4),  # 'ſ'.upper() == 'S'
    ("MK\u00a0T", "U+00A0 (NO-BREAK SPACE)", 3),  # Unicode whitespace is not skipped
    ("MKTJ", "'J' (U+004A LATIN CAPITAL LETTER J)", 4),
    ("MK*T", "'*' (U+002A ASTERISK)", 3),  # only one trailing stop
])
def test_one_alphabet_for_readers_and_server(tmp_path, raw, char, position):
    from scilm.serving.limits import RequestError, clean_protein

    expected = f"invalid residue {char} at position {position}"
    with pytest.raises(ScilmError) as direct:
        pdata.normalize_sequence(raw, "x")
    assert str(direct.value) == f"x: {expected} (allowed: the 20 standard amino acids and X B Z U O)"
    with pytest.raises(ScilmError, match=re.escape(f"a.fasta:1 (record P1): {expected}")):
        pdata.read_proteins(write_fasta(tmp_path / "a.fasta", [("P1", "Cytoplasm-S", raw)]))
    with pytest.raises(ScilmError, match=re.escape(f"a.csv:2 (record P1): {expected}")):
        pdata.read_proteins(write(tmp_path / "a.csv", f"ACC,Membrane,Sequence\nP1,0,{raw}\n"))
    with pytest.raises(RequestError) as served:
        clean_protein(raw, "x", 1022)
    assert served.value.status == 422 and served.value.message == str(direct.value)


def test_alphabet_accepts_case_whitespace_and_one_stop():
    assert pdata.normalize_sequence(" mkt ayx\n\tLLB*", "x") == "MKTAYXLLB"
    assert pdata.normalize_sequence("ACDEFGHIKLMNPQRSTVWYXBZUO", "x") == "ACDEFGHIKLMNPQRSTVWYXBZUO"


# -- case 3: duplicated ids ----------------------------------------------------------------------

ISO = [("sp|P12345|ISO", "Cytoplasm-S", "MKTAYIAKQR"), ("sp|P99999|OTHER", "Cell.membrane-M", "MLLVVAALLA"),
       ("sp|P12345|ISO", "Cytoplasm-S", "MKTAYIAKQW")]


def test_duplicated_id_with_different_sequences(tmp_path):
    path = write_fasta(tmp_path / "iso.fasta", ISO)
    every = pdata.read_proteins(path, task=None, label_column=None, unique_ids=False)  # predict / embed
    assert [(r.id, r.sequence) for r in every] == [(i, s) for i, _, s in ISO]
    with pytest.raises(ScilmError) as err:  # training: ids must name one record
        pdata.read_proteins(path)
    assert "duplicated id 'sp|P12345|ISO' names two different sequences (lines 1 and 5)" in str(err.value)


def test_exact_repeat_is_dropped_and_counted(tmp_path, caplog):
    path = write_fasta(tmp_path / "rep.fasta", [*ISO[:2], ISO[0], ISO[0]])
    counts = Counter()
    with caplog.at_level(logging.INFO):
        records = pdata.read_proteins(path, counts=counts)
    assert [r.id for r in records] == ["sp|P12345|ISO", "sp|P99999|OTHER"]
    assert counts[pdata.DROPPED_EXACT_DUPLICATES] == 2
    assert "2 exact repeat(s) of an earlier record" in caplog.text
    assert len(pdata.read_proteins(path, unique_ids=False)) == 4


# -- issue 12 item 6: missing-label markers and numeric labels ------------------------------------

@pytest.mark.parametrize("marker", ["NaN", "nan", "NA", "None", "", "  ", "N/A", "null"])
def test_missing_label_is_an_error_naming_the_line_or_dropped_and_counted(tmp_path, marker):
    path = write(tmp_path / "a.csv", f"ACC,label,Sequence\nP1,a,MKT\nP2,{marker},MKV\nP3,b,MKW\n")
    with pytest.raises(ScilmError, match=r"a.csv:3 \(record P2\): missing label .* in column 'label'"):
        pdata.read_proteins(path, label_column="label")
    counts = Counter()
    records = pdata.read_proteins(path, label_column="label", drop_missing_labels=True, counts=counts)
    assert [r.id for r in records] == ["P1", "P3"] and counts[pdata.DROPPED_MISSING_LABEL] == 1


def test_numeric_labels_are_one_class_per_number(tmp_path):
    path = write(tmp_path / "a.csv", "ACC,label,Sequence\nP1,1,MKT\nP2,1.0,MKV\nP3,0,MKW\nP4,0.0,MKY\n"
                                      "P5, +1 ,MKA\nP6,2.50,MKC\nP7,1.00,MKD\n")
    records = pdata.read_proteins(path, label_column="label")
    assert [r.label for r in records] == ["1", "1", "0", "0", "1", "2.50", "1"]
    assert pdata.label_names(records, None) == ["0", "1", "2.50"]
    # only integer spellings fold: EC-like decimals, zero-padded codes and other digits stay distinct
    ec = write(tmp_path / "ec.csv", "ACC,label,Sequence\nP1,1.1,MKT\nP2,1.10,MKV\nP3,3.1,MKW\nP4,01,MKY\n"
                                    "P5,1,MKA\nP6,\u0661,MKC\n")
    assert [r.label for r in pdata.read_proteins(ec, label_column="label")] == ["1.1", "1.10", "3.1", "01", "1",
                                                                                "\u0661"]
    decimals = write(tmp_path / "d.csv", "ACC,label,Sequence\nP1,1.10,MKT\nP2,1.1,MKV\nP3,01,MKW\nP4,1,MKY\n")
    assert pdata.label_names(pdata.read_proteins(decimals, label_column="label"), None) == ["01", "1", "1.1", "1.10"]
    membrane = write(tmp_path / "m.csv", "ACC,Membrane,Sequence\nP1,1.0,MKT\nP2,0,MKV\nP3,1,MKW\n")
    assert [r.label for r in pdata.read_proteins(membrane)] == ["membrane", "soluble", "membrane"]


# -- case 8: localization from the DeepLoc-2 one-hot columns; no setting silently ignored ----------

def _deeploc2_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_localization_on_a_deeploc2_table_uses_the_location_columns(deeploc2_csv, tmp_path):
    rows = _deeploc2_rows(deeploc2_csv)
    for row in rows[:3]:  # three multi-location rows
        row["Nucleus"], row["Cytoplasm"] = "1", "1"
    path = tmp_path / "multi.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts = Counter()
    records = pdata.read_proteins(path, task="localization", counts=counts)
    expected = [(r["ACC"], next(loc for loc in LOCATIONS if r[loc] == "1")) for r in rows[3:]]
    assert [(r.id, r.label) for r in records] == expected
    assert counts[pdata.SKIPPED_MULTILOCATION] == 3
    assert {r.label for r in records} <= set(pdata.LOCALIZATION_LABELS)
    assert [r.label for r in pdata.read_proteins(path)] == [  # task membrane: the Membrane column
        pdata.MEMBRANE_LABELS[int(r["Membrane"])] for r in rows]


def test_localization_needs_the_location_columns(tmp_path):
    path = write(tmp_path / "a.csv", TABLE)
    with pytest.raises(ScilmError, match="task 'localization' on a table needs the DeepLoc-2 one-hot location columns"):
        pdata.read_proteins(path, task="localization")
    with pytest.raises(ScilmError, match="give either task 'localization' .* or --label-column 'Loc', not both"):
        pdata.read_proteins(path, task="localization", label_column="Loc")
    with pytest.raises(ScilmError, match="--task must be one of membrane, localization"):
        pdata.read_proteins(path, task="location")


def test_localization_fasta_counts_multilocation_headers():
    headers = [line.split()[1] for line in DEEPLOC_VALID.read_text().splitlines() if line.startswith(">")]
    multi = sum(h.rpartition("-")[0].count("-") > 0 for h in headers)
    counts = Counter()
    records = pdata.read_proteins(DEEPLOC_VALID, task="localization", counts=counts)
    assert multi > 0 and counts[pdata.SKIPPED_MULTILOCATION] == multi
    assert len(records) == len(headers) - multi
    unknown = Counter()
    pdata.read_proteins(DEEPLOC_VALID, task="membrane", counts=unknown)
    assert unknown[pdata.SKIPPED_UNKNOWN_LABEL] == sum(h.endswith("-U") for h in headers)


@pytest.mark.parametrize("setting, flag", [({"sequence_column": "Seq"}, "--sequence-column"),
                                           ({"label_column": "Location"}, "--label-column"),
                                           ({"id_column": "ACC"}, "--id-column"),
                                           ({"split_column": "Partition"}, "--split-column")])
def test_table_settings_on_fasta_are_errors(tmp_path, setting, flag):
    path = write(tmp_path / "a.fasta", FASTA)
    with pytest.raises(ScilmError, match=f"a.fasta: {flag} name table columns, but this is a FASTA file"):
        pdata.read_proteins(path, **setting)


@pytest.mark.skipif(not HPA.is_file(), reason="no ../shared")
def test_real_deeploc2_hpa_file():
    """The DeepLoc-2 HPA test set: 8 location columns, id 'sid', sequence 'fasta', many multi-location rows."""
    rows = _deeploc2_rows(HPA)
    present = [loc for loc in LOCATIONS if loc in rows[0]]
    single = [(r["sid"], next(loc for loc in present if r[loc] == "1")) for r in rows
              if sum(r[loc] == "1" for loc in present) == 1]
    n_multi = sum(sum(r[loc] == "1" for loc in present) > 1 for r in rows)
    counts = Counter()
    records = pdata.read_proteins(HPA, task="localization", sequence_column="fasta", counts=counts)
    assert [(r.id, r.label) for r in records] == single
    assert counts[pdata.SKIPPED_MULTILOCATION] == n_multi > 0
