"""Text+Chem JSONL reader/writer, prompts, converters and splits, on tiny slices of the real sets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from scilm.chem.smiles import canonical_smiles
from scilm.data.textchem import (PROMPTS, TASKS, convert_chebi20, convert_paragraph2actions, convert_textchem,
                                 convert_uspto, input_of, make_example, read_jsonl, split_examples, task_of,
                                 write_jsonl)
from scilm.errors import ScilmError

DATA = Path(__file__).parent / "data" / "textchem"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "textchem-sample"
CHEBI = DATA / "chebi20-validation.txt"
USPTO = (DATA / "uspto-valid_sources", DATA / "uspto-valid_targets")
P2A = (DATA / "p2a-src-test.txt", DATA / "p2a-tgt-test.txt")
GOOD = '{"source": "Caption the following SMILES: CCO", "target": "Ethanol."}'


# --- prompts ---------------------------------------------------------------------------------------

def test_the_five_prompts_as_published():
    assert TASKS == ("forward-prediction", "retrosynthesis", "paragraph-to-actions", "text-to-smiles",
                     "smiles-to-caption")
    assert PROMPTS["text-to-smiles"] == "Write in SMILES the described molecule:"
    assert PROMPTS["retrosynthesis"] == "Predict the reaction that produces the following product:"


@pytest.mark.parametrize("task", TASKS)
def test_task_is_recognised_from_its_prompt(task):
    example = make_example(task, "CCO", "x")
    assert example.source == f"{PROMPTS[task]} CCO"
    assert task_of(example.source) == task and input_of(example) == "CCO"


def test_unknown_prompt_has_no_task():
    assert task_of("Translate to French: CCO") is None
    assert task_of("Caption the following SMILES:CCO") is None  # the space is part of the format


# --- reader ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", [DATA / "textchem-sample",
                                    pytest.param(SHARED, marks=pytest.mark.skipif(not SHARED.is_dir(),
                                                                                  reason="no ../shared"))])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_sample_files_read_ten_examples_two_per_task(folder, split):
    path = folder / f"{split}.jsonl"
    assert not path.read_bytes().endswith(b"\n")  # the original files lack a final newline
    examples = read_jsonl(path)
    assert len(examples) == 10
    assert Counter(e.task for e in examples) == {task: 2 for task in TASKS}


def test_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(GOOD + "\n" + GOOD.replace("Ethanol", "Last"), encoding="utf-8")
    assert [e.target for e in read_jsonl(path)] == ["Ethanol.", "Last."]


def test_crlf_line_ends_are_fine(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes((GOOD + "\r\n" + GOOD + "\r\n").encode())
    assert len(read_jsonl(path)) == 2


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a", "b"]', "JSON object"),
    ('{"source": "Caption the following SMILES: C"}', "exactly the fields"),
    ('{"source": "Caption the following SMILES: C", "target": "x", "id": 1}', "exactly the fields"),
    ('{"source": "Caption the following SMILES: C", "target": 3}', "'target' must be a non-empty string"),
    ('{"source": "", "target": "x"}', "'source' must be a non-empty string"),
    ('{"source": "Caption the following SMILES: C", "target": "  "}', "'target' must be a non-empty string"),
    ("", "empty line"),
    ('{"source": "Name this: C", "target": "x"}', "five Text\\+Chem prompts"),
])
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n{line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(ScilmError, match=message) as error:
        read_jsonl(path)
    assert str(error.value).startswith(f"{path}:2: ")


def test_unknown_prompt_allowed_on_request(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"source": "Name this: C", "target": "methane"}', encoding="utf-8")
    assert read_jsonl(path, require_task=False)[0].task is None


@pytest.mark.parametrize("content, message", [(b"", "no examples"), (b"\xff\xfe", "not UTF-8")])
def test_empty_or_binary_file(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    path.write_bytes(content)
    with pytest.raises(ScilmError, match=message):
        read_jsonl(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScilmError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_writer_round_trip_is_atomic(tmp_path):
    examples = read_jsonl(DATA / "textchem-sample" / "test.jsonl")
    path = write_jsonl(tmp_path / "out" / "test.jsonl", examples)
    assert read_jsonl(path) == examples
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and len(text.splitlines()) == 10
    assert all(set(json.loads(line)) == {"source", "target"} for line in text.splitlines())
    assert [p.name for p in path.parent.iterdir()] == ["test.jsonl"]  # no temporary file left


# --- converters ------------------------------------------------------------------------------------

def test_chebi20_both_directions_and_backslashes():
    examples, summary = convert_chebi20(CHEBI)
    assert summary.lines == 7 and summary.examples == 14 and summary.skipped == []
    captions = [e for e in examples if e.task == "smiles-to-caption"]
    to_smiles = [e for e in examples if e.task == "text-to-smiles"]
    assert len(captions) == len(to_smiles) == 7
    assert input_of(captions[0]) == to_smiles[0].target and captions[0].target == input_of(to_smiles[0])
    assert captions[0].target.startswith("The molecule is a member of the class of pterocarpans")
    assert "\\\\" in CHEBI.read_text() and not any("\\\\" in e.source + e.target for e in examples)
    assert input_of(captions[5]).startswith("CC/C=C\\C/C=C\\C")


def test_chebi20_canonicalisation_reports_skips(tmp_path):
    lines = CHEBI.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "1\tC1CC(\tThe molecule is broken.")
    path = tmp_path / "chebi.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples, summary = convert_chebi20(path, canonicalize=True)
    assert summary.lines == 8 and summary.examples == 14
    assert summary.skipped == [f"{path}:4: SMILES not parsable by RDKit"]
    assert summary.to_dict()["skip_reasons"] == {"SMILES not parsable by RDKit": 1}
    raw = lines[1].split("\t")[1]
    assert input_of(examples[0]) == canonical_smiles(raw) != raw


@pytest.mark.parametrize("lines, message", [
    (["CID\tsmiles\tdesc", "1\tC\tx"], ":1: expected the header"),
    (["CID\tSMILES\tdescription", "1\tC"], ":2: expected 3 tab-separated fields"),
])
def test_chebi20_bad_file(tmp_path, lines, message):
    path = tmp_path / "chebi.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ScilmError, match=message):
        convert_chebi20(path)


def test_uspto_retrosynthesis_and_reversed_forward():
    examples, summary = convert_uspto(*USPTO)
    assert summary.lines == 8 and summary.examples == 16 and not summary.skipped
    retro, forward = examples[0], examples[1]
    assert retro.task == "retrosynthesis" and forward.task == "forward-prediction"
    assert input_of(retro) == "CCCCCCCNC(=O)N(C)c1cccc(-c2ccc(CCC(=O)OC)cc2OCCCCl)c1"
    assert retro.target == "CCCCCCCNC(=O)N(C)c1cccc(-c2ccc(CCC(=O)OC)cc2O)c1.ClCCCI"
    assert input_of(forward) == retro.target and forward.target == input_of(retro)
    assert not any(" " in input_of(e) or " " in e.target or "<RX_" in e.source for e in examples)


def test_uspto_canonicalisation_and_skips(tmp_path):
    sources = USPTO[0].read_text().splitlines() + ["<RX_2> C 1 C C"]
    targets = USPTO[1].read_text().splitlines() + ["C C O"]
    (tmp_path / "s").write_text("\n".join(sources) + "\n")
    (tmp_path / "t").write_text("\n".join(targets) + "\n")
    examples, summary = convert_uspto(tmp_path / "s", tmp_path / "t", canonicalize=True)
    assert summary.examples == 16 and summary.skipped == [f"{tmp_path / 's'}:9: SMILES not parsable by RDKit"]
    assert examples[0].target == canonical_smiles("CCCCCCCNC(=O)N(C)c1cccc(-c2ccc(CCC(=O)OC)cc2O)c1.ClCCCI")


def test_misaligned_pairs_are_an_error(tmp_path):
    (tmp_path / "t").write_text("C C O\n")
    with pytest.raises(ScilmError, match="must be line-aligned"):
        convert_uspto(USPTO[0], tmp_path / "t")


def test_paragraph2actions(tmp_path):
    examples, summary = convert_paragraph2actions(*P2A)
    assert summary.examples == 8 and not summary.skipped
    assert examples[0].source == (
        "Which actions are described in the following paragraph: "
        "The reaction mixture is allowed to warm to room temperature and stirred overnight.")
    assert examples[0].target == "STIR for overnight at room temperature."
    (tmp_path / "s").write_text("A sentence.\n\n")
    (tmp_path / "t").write_text("NOACTION.\nNOACTION.\n")
    examples, summary = convert_paragraph2actions(tmp_path / "s", tmp_path / "t")
    assert len(examples) == 1 and summary.skipped == [f"{tmp_path / 's'}:2: empty paragraph or actions"]


# --- splits and the whole conversion ----------------------------------------------------------------

def test_split_is_deterministic_and_keeps_pairs_together():
    examples = convert_chebi20(CHEBI)[0] + convert_uspto(*USPTO)[0] + convert_paragraph2actions(*P2A)[0]
    first = split_examples(examples, 0.2, 0.2, seed=1)
    assert first == split_examples(examples, 0.2, 0.2, seed=1)
    assert first != split_examples(examples, 0.2, 0.2, seed=2)
    assert sorted(map(repr, sum(first.values(), []))) == sorted(map(repr, examples))
    assert len(first["test"]) > 0 and len(first["valid"]) > 0
    for part in first.values():  # the two directions of a molecule or reaction share a split
        for e in part:
            if e.task != "paragraph-to-actions":
                assert sum(input_of(o) == e.target and o.target == input_of(e) for o in part) == 1


def test_split_fractions_are_checked():
    with pytest.raises(ScilmError, match="fractions"):
        split_examples([], 0.5, 0.5)


def test_convert_textchem_writes_readable_splits(tmp_path):
    summary = convert_textchem(tmp_path, chebi20=CHEBI, uspto=USPTO, paragraph2actions=P2A,
                               canonicalize=True, seed=3)
    assert summary["examples"] == 14 + 16 + 8 and summary["skipped"] == 0
    assert summary["tasks"] == {"smiles-to-caption": 7, "text-to-smiles": 7, "retrosynthesis": 8,
                                "forward-prediction": 8, "paragraph-to-actions": 8}
    read = {name: read_jsonl(tmp_path / f"{name}.jsonl") for name in ("train", "valid", "test")}
    assert {name: len(part) for name, part in read.items()} == summary["splits"]
    json.dumps(summary)


def test_convert_textchem_needs_an_input(tmp_path):
    with pytest.raises(ScilmError, match="nothing to convert"):
        convert_textchem(tmp_path)


# --- issue 15: unsplit test sets, reaction classes, every skip reported ---------------------------

def test_split_none_writes_one_file_in_input_order(tmp_path):
    summary = convert_textchem(tmp_path, chebi20=CHEBI, uspto=USPTO, split="none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl", "skipped.tsv"]
    expected = convert_chebi20(CHEBI)[0] + convert_uspto(*USPTO)[0]
    assert read_jsonl(tmp_path / "all.jsonl") == expected
    assert summary["splits"] == {"all": len(expected)} and summary["split"] == "none" and summary["seed"] is None


def test_split_none_refuses_split_settings(run_cli, tmp_path):
    result = run_cli("data", "textchem", "--out", tmp_path / "o", "--chebi20", CHEBI, "--split", "none", "--seed", "3")
    assert result.exit_code == 2 and "--seed: --split none does not split" in result.stderr
    assert not (tmp_path / "o").exists()
    result = run_cli("data", "textchem", "--out", tmp_path / "o", "--chebi20", CHEBI, "--split", "halves")
    assert result.exit_code == 2 and "--split 'halves'" in result.stderr


def test_reaction_class_is_kept_from_the_rx_token(tmp_path):
    classes = [int(line.split()[0][4:-1]) for line in USPTO[0].read_text().splitlines()]
    examples, _ = convert_uspto(*USPTO, keep_reaction_class=True)
    assert [e.reaction_class for e in examples] == [c for c in classes for _ in range(2)]
    assert all(e.reaction_class is None for e in convert_uspto(*USPTO)[0])  # off by default
    summary = convert_textchem(tmp_path, uspto=USPTO, split="none", keep_reaction_class=True)
    lines = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [line["reaction_class"] for line in lines] == [c for c in classes for _ in range(2)]
    assert read_jsonl(tmp_path / "all.jsonl") == examples
    assert summary["reaction_classes"] == dict(sorted(Counter(classes).items()))


def test_reaction_class_needs_uspto(tmp_path):
    with pytest.raises(ScilmError, match="only USPTO files"):
        convert_textchem(tmp_path, chebi20=CHEBI, keep_reaction_class=True)


@pytest.mark.parametrize("value, ok", [(3, True), (None, True), ("3", False), (0, False), (2.0, False), (True, False)])
def test_reader_takes_an_optional_reaction_class(tmp_path, value, ok):
    record = {"source": "Predict the reaction that produces the following product: CCO", "target": "CC=O"}
    if value is not None:
        record["reaction_class"] = value
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(record), encoding="utf-8")
    if ok:
        assert read_jsonl(path)[0].reaction_class == value
    else:
        with pytest.raises(ScilmError, match=f"{path}:1: 'reaction_class' must be a whole number"):
            read_jsonl(path)


def test_every_skipped_line_is_reported_with_its_reason(tmp_path):
    sources = USPTO[0].read_text().splitlines()
    targets = USPTO[1].read_text().splitlines()
    sources[1] = "C C <RX_2> O"  # class token not first
    sources[3] = "<RX_1> <RX_2> C C O"
    targets[4] = "<RX_3> C C O"
    sources[5], targets[5] = "<RX_1> C 1 C C", "C C"  # unparsable (with --canonicalize)
    sources[6] = ""
    (tmp_path / "s").write_text("\n".join(sources) + "\n")
    (tmp_path / "t").write_text("\n".join(targets) + "\n")
    out = tmp_path / "out"
    summary = convert_textchem(out, uspto=(tmp_path / "s", tmp_path / "t"), canonicalize=True, split="none")
    s = tmp_path / "s"
    expected = [(2, "reaction class token not at the start"), (4, "several reaction class tokens"),
                (5, "reaction class token in the target"), (6, "SMILES not parsable by RDKit"),
                (7, "empty product or reactants")]
    assert summary["inputs"][0]["skipped_lines"] == [f"{s}:{n}: {reason}" for n, reason in expected]
    assert summary["skipped"] == 5 and summary["examples"] == 2 * 3
    assert (out / "skipped.tsv").read_text() == "file\tline\treason\n" + "".join(
        f"{s}\t{n}\t{reason}\n" for n, reason in expected)
    convert_textchem(out, uspto=USPTO, split="none")  # a later clean run leaves no stale skips behind
    assert (out / "skipped.tsv").read_text() == "file\tline\treason\n"
