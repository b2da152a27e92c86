"""Top-k exact match, round trip, re-spelled inputs and <unk> repair (issue 15), on hand-made
candidates with values worked out by hand, and ``scilm evaluate`` end to end with a scripted model."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from scilm.chem.ranking import (SMILES_INPUT_TASKS, random_spellings, rank_of_target, round_trip_ok, spread,
                                top_k_accuracy)
from scilm.chem.smiles import canonical_smiles
from scilm.data.textchem import PROMPTS, input_of, read_jsonl, task_of
from scilm.errors import ScilmError
from scilm.inference import generate
from scilm.inference.generate import repair_unknowns, score_run

DATA = Path(__file__).parent / "data" / "textchem"
SAMPLE = DATA / "textchem-sample" / "test.jsonl"


# --- ranking ---------------------------------------------------------------------------------------

def test_rank_is_canonical_and_ignores_molecule_order():
    assert rank_of_target("retrosynthesis", "CCO.CC(=O)O", ["C1CC(", "CCN", "OC(C)=O.OCC"]) == 3
    assert rank_of_target("forward-prediction", "CCO", ["", "C1CC(", "CCN"]) is None
    assert rank_of_target("forward-prediction", "C1CC(", ["C1CC("]) is None  # a broken target never matches
    assert rank_of_target("paragraph-to-actions", "STIR.", [" STIR. ", "STIR."]) == 1
    assert rank_of_target("paragraph-to-actions", "STIR.", ["stir."]) is None  # strings, not molecules


def test_top_k_by_hand():
    assert top_k_accuracy([1, 3, None, 2], (1, 2, 3, 10)) == {"top_1": 0.25, "top_2": 0.5, "top_3": 0.75,
                                                              "top_10": 0.75}
    with pytest.raises(ValueError, match="no examples"):
        top_k_accuracy([], (1,))


def test_round_trip_is_canonical():
    assert round_trip_ok("CCO", "OCC") and not round_trip_ok("CCO", "CCN")
    assert not round_trip_ok("CCO", None) and not round_trip_ok("C1CC(", "C1CC(")


def test_spread_equals_statistics():
    values = [0.2, 0.5, 0.4]
    assert spread(values) == {"mean": statistics.fmean(values), "sd": statistics.stdev(values), "min": 0.2,
                              "max": 0.5}
    assert spread([0.3])["sd"] is None


def uspto_inputs() -> list[str]:
    lines = (DATA / "uspto-valid_sources").read_text().splitlines() + (DATA / "uspto-valid_targets").read_text().splitlines()
    return ["".join(line.split()[1:] if line.startswith("<RX_") else line.split()) for line in lines]


def test_random_spellings_are_the_same_molecules_spelled_otherwise():
    sample = [input_of(e) for e in read_jsonl(SAMPLE) if e.task in SMILES_INPUT_TASKS]
    inputs = sample + uspto_inputs() + ["C/C=C\\C[C@H](N)O", "[Na+]~[OH-].CCO", "CC.O>>CCO"]
    changed = 0
    for smiles in inputs:
        spellings = random_spellings(smiles, 4, seed=3)
        assert len(spellings) == 4
        assert all(canonical_smiles(s) == canonical_smiles(smiles) for s in spellings), smiles
        assert [s.count(c) for s in spellings for c in ".~>"] == [smiles.count(c) for _ in spellings for c in ".~>"]
        changed += any(s != smiles for s in spellings)
    assert changed >= len(inputs) - 2  # re-spelled, not copied
    assert random_spellings(inputs[0], 4, seed=3) == random_spellings(inputs[0], 4, seed=3)
    assert random_spellings(inputs[0], 4, seed=3) != random_spellings(inputs[0], 4, seed=4)
    assert random_spellings("C1CC(", 2) is None


# --- <unk> repair ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, missing, expected", [
    ("C/C=C<unk>C", "\\", "C/C=C\\C"),
    ("C/C=C<unk>C", "\\~", "C/C=C\\C"),
    ("[Na+]<unk>[OH-]", "\\~", "[Na+]~[OH-]"),
    ("CC(=O)[O-]<unk>[K+].C/C=C<unk>C", "\\~", "CC(=O)[O-]~[K+].C/C=C\\C"),
    ("O=C([O-])c1ccc2ccccc2c1<unk>[Na+]<unk>[Na+]", "\\~", "O=C([O-])c1ccc2ccccc2c1~[Na+]~[Na+]"),
    ("[Na+]<unk>[OH-]", "~", "[Na+]~[OH-]"),  # one missing character: always it
    ("C/C=C<unk>C", "", "C/C=C<unk>C"),  # a full vocabulary: <unk> is no lost character
    ("CC(C<unk>C", "~)", "CC(C)C"),  # first reading "~" does not parse; the other one does
    ("CC(C<unk>C<unk>", "~)", "CC(C~C~"),  # nothing parses: the first reading ("~" each)
])
def test_repair_unknowns(text, missing, expected):
    assert repair_unknowns(text, "<unk>", missing) == expected


def test_repair_tries_readings_jointly():
    # first reading "~" twice; neither one-change reading parses ("CC(C)C(C~C", "CC(C~C(C)C"), the two-change does
    assert repair_unknowns("CC(C<unk>C(C<unk>C", "<unk>", "~)") == "CC(C)C(C)C"
    # a one-change reading that parses wins over the first reading
    assert repair_unknowns("CC(C<unk>C<unk>C", "<unk>", "~)") == "CC(C)C~C"


# --- score_run and scilm evaluate with a scripted model --------------------------------------------

def scripted_answers(examples):
    """Per input (canonical for SMILES tasks): ranked candidates with known ranks (see below)."""
    by_task = {}
    for e in examples:
        by_task.setdefault(e.task, []).append(e)
    (f0, f1), (r0, r1) = by_task["forward-prediction"], by_task["retrosynthesis"]
    (s0, s1), (a0, a1) = by_task["text-to-smiles"], by_task["paragraph-to-actions"]
    respelled_f0 = ".".join(reversed(f0.target.split(".")))  # same molecules, other order
    return {
        f0: [respelled_f0, "CCO", "CCN"],  # rank 1
        f1: ["C1CC(", "CCO", f1.target],  # rank 3, top-1 unparsable: a failure
        r0: [r0.target, "CCO", "CCN"],  # rank 1; round trip: the sample's f0 is r0 reversed, f0's top-1 is r0's product
        r1: ["CCO", r1.target, "CCN"],  # rank 2; round trip fails (CCO is unknown to the forward model: "C")
        s0: ["", "CCO", "CCN"],  # never, top-1 empty: a failure
        s1: ["CCN", "CCO", "CCC"],  # never
        a0: [a0.target, "x", "y"],  # rank 1
        a1: ["", a1.target, "y"],  # rank 2, top-1 empty: a failure
    }


EXPECTED = {  # from the ranks above, k = 1, 2, 3
    "forward-prediction": {"n_examples": 2, "n_failed": 1, "top_1": 0.5, "top_2": 0.5, "top_3": 1.0},
    "retrosynthesis": {"n_examples": 2, "n_failed": 0, "top_1": 0.5, "top_2": 1.0, "top_3": 1.0},
    "text-to-smiles": {"n_examples": 2, "n_failed": 1, "top_1": 0.0, "top_2": 0.0, "top_3": 0.0},
    "paragraph-to-actions": {"n_examples": 2, "n_failed": 1, "top_1": 0.5, "top_2": 1.0, "top_3": 1.0},
}


def test_score_run_by_hand():
    examples = read_jsonl(SAMPLE)
    answers = scripted_answers(examples)
    candidates = [answers.get(e, ["The molecule is.", "x", "y"]) for e in examples]
    retro = [i for i, e in enumerate(examples) if e.task == "retrosynthesis"]
    # a forward model that maps r0's precursors back to its product but not r1's
    products = {retro[0]: input_of(examples[retro[0]]), retro[1]: "CCO"}
    tasks, rows = score_run(examples, candidates, (1, 2, 3), products)
    for task, expected in EXPECTED.items():
        assert {k: tasks[task][k] for k in expected} == expected, task
        assert tasks[task]["coverage"] == 1 - expected["n_failed"] / 2
    assert tasks["retrosynthesis"]["round_trip"] == 0.5 and "round_trip" not in tasks["forward-prediction"]
    assert "top_1" not in tasks["smiles-to-caption"] and tasks["smiles-to-caption"]["n_failed"] == 0
    assert tasks["forward-prediction"]["exact_match"] == tasks["forward-prediction"]["top_1"]
    assert len(rows) == len(examples) and all(row["candidates"] == c for row, c in zip(rows, candidates))
    assert [rows[i]["round_trip"] for i in retro] == [True, False]


def test_score_run_without_forward_model_has_no_round_trip():
    examples = read_jsonl(SAMPLE)
    tasks, rows = score_run(examples, [[e.target] for e in examples], (1,))
    assert "round_trip" not in tasks["retrosynthesis"] and "round_trip" not in rows[0]
    assert all(tasks[t]["top_1"] == 1.0 for t in EXPECTED)


@pytest.fixture
def scripted_model(monkeypatch):
    """``load_seq2seq`` and ``generate_sequences`` replaced: answers looked up by task and canonical input,
    so the model is blind to spelling; unknown inputs (forward calls on CCO) answer ``C``."""
    examples = read_jsonl(SAMPLE)
    table = {(e.task, canonical_smiles(input_of(e)) or input_of(e)): c for e, c in scripted_answers(examples).items()}
    calls = []

    def fake_generate(model, tokenizer, sources, smiles, batch_size=8, num_return_sequences=1, **generation):
        calls.append((len(sources), num_return_sequences, generation["num_beams"]))
        out = []
        for source in sources:
            task = task_of(source)
            text = source[len(PROMPTS[task]) + 1:]
            key = (task, canonical_smiles(text) or text) if task != "paragraph-to-actions" else (task, text)
            found = table.get(key, ["C", "C", "C"] if smiles else ["The molecule is.", "x", "y"])
            out.append(found[:num_return_sequences])
        return out

    monkeypatch.setattr(generate, "load_seq2seq", lambda path: ("model", "tokenizer"))
    monkeypatch.setattr(generate, "generate_sequences", fake_generate)
    return calls


def test_evaluate_end_to_end_with_a_scripted_model(scripted_model, run_cli, tmp_path):
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--model", "m", "--data", SAMPLE, "--out", out, "--num-beams", "3",
                     "--top-k", "3,1,2", "--forward-model", "m", "--randomize-inputs", "3", "--seed", "5")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["top_k"] == [1, 2, 3] and metrics["num_beams"] == 3
    for task, expected in EXPECTED.items():
        assert {k: metrics["tasks"][task][k] for k in expected} == expected, task
    assert metrics["tasks"]["retrosynthesis"]["round_trip"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "eval.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(len(r["candidates"]) == 3 for r in rows)
    # a spelling-blind model: every re-spelling scores as the original, spread 0
    robustness = metrics["robustness"]
    assert robustness["n_spellings"] == 3 and set(robustness["tasks"]) == set(SMILES_INPUT_TASKS)
    for task in ("forward-prediction", "retrosynthesis"):
        for name in ("top_1", "top_2", "top_3", "exact_match", "validity"):
            value = metrics["tasks"][task][name]
            assert robustness["tasks"][task][name] == {"mean": value, "sd": 0.0, "min": value, "max": value}
    assert robustness["tasks"]["retrosynthesis"]["round_trip"]["mean"] == 0.5
    respelled = [json.loads(line) for line in Path(robustness["predictions"]).read_text().splitlines()]
    assert sorted({r["spelling"] for r in respelled}) == [0, 1, 2] and len(respelled) == 3 * 6
    originals = {canonical_smiles(input_of(e)) for e in read_jsonl(SAMPLE) if e.task in SMILES_INPUT_TASKS}
    assert {canonical_smiles(r["source"].split(": ", 1)[1]) for r in respelled} == originals
    assert sum(r["source"] not in {e.source for e in read_jsonl(SAMPLE)} for r in respelled) >= 12


def test_evaluate_spread_is_over_the_respelled_runs(scripted_model, run_cli, tmp_path, monkeypatch):
    # a model that is right only for the spelling in the file: the spread must come from each run's rows
    fake = generate.generate_sequences
    examples = read_jsonl(SAMPLE)
    written = {e.source for e in examples}

    def spelling_sensitive(model, tokenizer, sources, smiles, batch_size=8, num_return_sequences=1, **generation):
        out = fake(model, tokenizer, sources, smiles, batch_size, num_return_sequences, **generation)
        return [found if source in written else ["C"] * num_return_sequences for source, found in zip(sources, out)]

    monkeypatch.setattr(generate, "generate_sequences", spelling_sensitive)
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--model", "m", "--data", SAMPLE, "--out", out, "--num-beams", "3",
                     "--top-k", "1,3", "--randomize-inputs", "4")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(out.read_text())
    respelled = [json.loads(line) for line in Path(metrics["robustness"]["predictions"]).read_text().splitlines()]
    for task in ("forward-prediction", "retrosynthesis"):
        per_run = [statistics.fmean([r["rank"] is not None and r["rank"] <= 3 for r in respelled
                                     if r["spelling"] == j and r["task"] == task]) for j in range(4)]
        assert metrics["robustness"]["tasks"][task]["top_3"] == spread(per_run)
    assert metrics["tasks"]["forward-prediction"]["top_3"] == 1.0  # the original spelling


def test_more_candidates_cost_more_but_do_not_change_the_top1(scripted_model, tmp_path):
    from scilm.inference.generate import predict_candidates

    examples = read_jsonl(SAMPLE)
    one = predict_candidates("m", "t", examples, num_beams=3, k=1, max_length=8, batch_size=4)
    three = predict_candidates("m", "t", examples, num_beams=3, k=3, max_length=8, batch_size=4)
    assert [c[0] for c in three] == [c[0] for c in one] and {len(c) for c in three} == {3}


@pytest.mark.parametrize("args, message", [
    (["--top-k", "1,11"], "--top-k 11: beam search returns at most --num-beams (10)"),
    (["--top-k", "0,1"], "each k must be at least 1"),
    (["--top-k", "a"], "comma-separated whole numbers"),
    (["--randomize-inputs", "1"], "at least 2 re-spellings"),
])
def test_evaluate_bad_settings_are_one_line(scripted_model, run_cli, tmp_path, args, message):
    result = run_cli("evaluate", "--model", "m", "--data", SAMPLE, "--out", tmp_path / "e.json", *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "e.json").exists() and scripted_model == []


def test_predict_candidates_refuses_more_candidates_than_beams():
    with pytest.raises(ScilmError, match="at most --num-beams"):
        generate.predict_candidates("m", "t", read_jsonl(SAMPLE), num_beams=2, k=3, max_length=8, batch_size=4)


def test_top_k_per_reaction_class():
    from dataclasses import replace

    examples = [e for e in read_jsonl(SAMPLE) if e.task == "retrosynthesis"]
    examples = [replace(examples[0], reaction_class=3), replace(examples[1], reaction_class=1),
                replace(examples[0], reaction_class=3)]
    candidates = [[examples[0].target, "C"], ["C", examples[1].target], ["C", "CC"]]
    tasks, rows = score_run(examples, candidates, (1, 2))
    assert tasks["retrosynthesis"]["by_reaction_class"] == {
        "1": {"n_examples": 1, "top_1": 0.0, "top_2": 1.0}, "3": {"n_examples": 2, "top_1": 0.5, "top_2": 0.5}}
    assert [r["reaction_class"] for r in rows] == [3, 1, 3]
