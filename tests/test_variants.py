"""``scilm score-variants``: ESM-1v masked / wild-type marginals against a direct reference, the
Spearman path against the ESM-1v scores esm ships for the bundled assay, and bad mutations.

Issue 14, part 1.
"""

from __future__ import annotations

import csv
import gzip
import json
import random

import numpy as np
import pytest
import torch

from conftest import BUNDLED

ASSAY = BUNDLED / "proteingym_blat_ecolx"
WILD_TYPE = ASSAY / "BLAT_ECOLX.fasta"
MUTANTS = ASSAY / "BLAT_ECOLX_Stiffler_2015.csv.gz"
ESM1V = ASSAY / "BLAT_ECOLX_esm1v_scores.csv.gz"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mlm():
    from scilm.inference.variants import load_masked_lm

    return load_masked_lm("esm2-tiny-mlm")


@pytest.fixture(scope="module")
def wild_type() -> str:
    lines = WILD_TYPE.read_text().splitlines()
    return "".join(lines[1:])


@pytest.fixture(scope="module")
def assay_rows() -> list[dict]:
    with gzip.open(MUTANTS, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def some_mutants(rows: list[dict], seed: int = 0) -> list[str]:
    """30 single mutants of the assay, 8 doubles and 4 triples built from them (distinct positions)."""
    rng = random.Random(seed)
    singles = rng.sample([r["mutant"] for r in rows], 30)
    multis = []
    for size, count in ((2, 8), (3, 4)):
        while count:
            picked = rng.sample(singles, size)
            if len({m[1:-1] for m in picked}) == size:
                multis.append(":".join(picked))
                count -= 1
    return singles + multis + ["M1A", "W286A", "H24Y:W286F"]  # both ends of the protein


def reference_score(model, tokenizer, wild_type: str, mutant: str, scoring: str, window_tokens: int = 1024,
                    offset: int = 1) -> float:
    """One forward per substitution, written from the protocol: esm's predict.py ``label_row`` summed over
    ':' (ProteinGym's compute_fitness.py), ProteinGym's ``get_optimal_window`` on the token sequence."""
    total = 0.0
    for part in mutant.split(":"):
        wt, position, mt = part[0], int(part[1:-1]), part[-1]
        index = position - offset
        assert wild_type[index] == wt
        tokens = ["<cls>", *wild_type, "<eos>"]
        at = index + 1
        half = window_tokens // 2
        if len(tokens) > window_tokens:  # ProteinGym: get_optimal_window(at, len(tokens), window_tokens)
            if at < half:
                start, end = 0, window_tokens
            elif at >= len(tokens) - half:
                start, end = len(tokens) - window_tokens, len(tokens)
            else:
                start, end = max(0, at - half), min(len(tokens), at + half)
            tokens, at = tokens[start:end], at - start
        if scoring == "masked-marginal":
            tokens[at] = "<mask>"
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(tokens)])
        with torch.no_grad():
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, at].double(), dim=-1)
        total += float(log_p[tokenizer.convert_tokens_to_ids(mt)] - log_p[tokenizer.convert_tokens_to_ids(wt)])
    return total


def scilm_scores(model, tokenizer, wild_type, mutants, scoring, window=1022, batch_size=32, offset=1):
    from scilm.inference.variants import parse_mutant, score_mutants

    parsed = [parse_mutant(m, wild_type, offset) for m in mutants]
    return score_mutants(model, tokenizer, wild_type, parsed, scoring, window, batch_size)


@pytest.mark.parametrize("scoring", ["masked-marginal", "wt-marginal"])
def test_scores_equal_a_direct_reference_single_and_multi_mutants(mlm, wild_type, assay_rows, scoring):
    model, tokenizer = mlm
    mutants = some_mutants(assay_rows)
    got = scilm_scores(model, tokenizer, wild_type, mutants, scoring)
    expected = [reference_score(model, tokenizer, wild_type, m, scoring) for m in mutants]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert len(set(np.round(got, 4))) > len(mutants) // 2  # real, varied numbers


@pytest.mark.parametrize("scoring", ["masked-marginal", "wt-marginal"])
def test_long_protein_windows_equal_a_direct_reference(mlm, wild_type, assay_rows, scoring):
    """A 64-residue window on the 286-residue wild type: clipped left, centred, clipped right."""
    from scilm.inference.variants import token_window

    model, tokenizer = mlm
    mutants = some_mutants(assay_rows, seed=1) + ["S2A", "I3V:W286L", "E145G", "K284Q"]
    got = scilm_scores(model, tokenizer, wild_type, mutants, scoring, window=64)
    expected = [reference_score(model, tokenizer, wild_type, m, scoring, window_tokens=66) for m in mutants]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    unwindowed = scilm_scores(model, tokenizer, wild_type, mutants, scoring)
    assert np.abs(got - unwindowed).max() > 0.01  # the window is really used
    spans = {token_window(i, 288, 66) for i in range(1, 287)}
    assert {e - s for s, e in spans} == {66} and (0, 66) in spans and (222, 288) in spans
    assert {e - s for s, e in (token_window(i, 288, 65) for i in range(1, 287))} == {65}  # odd: same length too


def test_batch_size_and_offset_change_nothing(mlm, wild_type, assay_rows):
    model, tokenizer = mlm
    mutants = some_mutants(assay_rows, seed=2)
    for scoring in ("masked-marginal", "wt-marginal"):
        one = scilm_scores(model, tokenizer, wild_type, mutants, scoring, window=100, batch_size=1)
        many = scilm_scores(model, tokenizer, wild_type, mutants, scoring, window=100, batch_size=64)
        np.testing.assert_allclose(one, many, atol=1e-6, rtol=0)
    renumbered = [":".join(f"{p[0]}{int(p[1:-1]) + 100}{p[-1]}" for p in m.split(":")) for m in mutants]
    shifted = scilm_scores(model, tokenizer, wild_type, renumbered, "masked-marginal", offset=101)
    np.testing.assert_array_equal(shifted, scilm_scores(model, tokenizer, wild_type, mutants, "masked-marginal"))


def test_one_masked_forward_per_distinct_position(mlm, wild_type, assay_rows):
    """200 mutants at 11 positions: 11 masked sequences through the model; wt-marginal: one sequence."""
    model, tokenizer = mlm
    positions = sorted({r["mutant"][1:-1] for r in assay_rows})[:11]
    mutants = [r["mutant"] for r in assay_rows if r["mutant"][1:-1] in positions][:200]
    assert len(mutants) == 200 and len({m[1:-1] for m in mutants}) == 11
    rows = []
    hook = model.register_forward_hook(lambda module, args, kwargs, output: rows.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    try:
        scilm_scores(model, tokenizer, wild_type, mutants, "masked-marginal", batch_size=4)
        assert sum(rows) == 11 and len(rows) == 3
        rows.clear()
        scilm_scores(model, tokenizer, wild_type, mutants, "wt-marginal")
        assert rows == [1]
    finally:
        hook.remove()


# -- the Spearman path -----------------------------------------------------------------------------

# scipy 1.17 spearmanr of esm's shipped ESM-1v scores against DMS_score, all 4,996 rows
ESM1V_SPEARMAN = [0.6619296273797379, 0.663150037237443, 0.6448894588410148, 0.6864775085402897,
                  0.7064323789977184]


def test_spearman_of_the_shipped_esm1v_scores():
    from scilm.inference.variants import parse_numbers, read_mutant_table, spearman

    table = read_mutant_table(ESM1V)
    targets = parse_numbers(table.column("DMS_score"), table, "DMS_score")
    found = []
    for k in range(1, 6):
        column = f"esm1v_t33_650M_UR90_{k}"
        report = spearman(parse_numbers(table.column(column), table, column), targets)
        assert report["n"] == 4996 and report["n_missing"] == 0
        found.append(report["spearman"])
    np.testing.assert_allclose(found, ESM1V_SPEARMAN, rtol=0, atol=1e-12)
    assert [round(r, 3) for r in found] == [0.662, 0.663, 0.645, 0.686, 0.706]  # the data note's 0.645-0.706
    # missing values are left out and counted, never read as numbers
    scores = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    report = spearman(scores, np.array([1.0, 3.0, 2.0, 4.0, 5.0]))
    assert report == {"spearman": pytest.approx(0.8, abs=1e-12), "n": 4, "n_missing": 1}  # 1 - 6*2/(4*15)


def test_cli_end_to_end_on_a_slice_of_the_assay(run_cli, mlm, wild_type, assay_rows, tmp_path):
    from scipy.stats import spearmanr

    model, tokenizer = mlm
    rows = [r for r in assay_rows if 40 <= int(r["mutant"][1:-1]) <= 49]  # 10 positions, 190 mutants
    data = tmp_path / "slice.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "scored.csv"
    result = run_cli("score-variants", "--model", "esm2-tiny-mlm", "--wild-type", WILD_TYPE, "--data", data,
                     "--out", out, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert f"scored {len(rows)} mutants (masked-marginal, 10 forwards)" in result.stdout
    written = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    assert [{k: v for k, v in r.items() if k != "masked_marginal"} for r in written] == rows  # columns, order kept
    scores = np.array([float(r["masked_marginal"]) for r in written])
    np.testing.assert_array_equal(scores, scilm_scores(model, tokenizer, wild_type, [r["mutant"] for r in rows],
                                                        "masked-marginal"))
    report = json.loads((tmp_path / "scored.spearman.json").read_text())
    rho = spearmanr(scores, [float(r["DMS_score"]) for r in rows]).statistic
    assert report["spearman"] == pytest.approx(rho, abs=1e-12) and report["n"] == len(rows)
    assert f"Spearman {rho:.4f} against DMS_score ({len(rows)} mutants)" in result.stdout
    assert (tmp_path / "scored.scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mutation_list_without_dms_writes_only_the_table(run_cli, tmp_path):
    out = tmp_path / "l.csv"
    result = run_cli("score-variants", "--model", "esm2-tiny-mlm", "--wild-type", WILD_TYPE, "--mutant", "H24Y",
                     "--mutant", "H24Y:W286F", "--scoring", "wt-marginal", "--out", out)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(open(out, encoding="utf-8", newline="")))
    assert rows[0] == ["mutant", "wt_marginal"] and [r[0] for r in rows[1:]] == ["H24Y", "H24Y:W286F"]
    assert not (tmp_path / "l.spearman.json").exists() and "Spearman" not in result.stdout


# -- bad input: one line naming the mutation and the line, exit 2, nothing written ------------------

@pytest.mark.parametrize("mutant, message", [
    ("A24C", "mutation 'A24C': the wild type has H at position 24, not A"),
    ("H300C", "mutation 'H300C': position 300 is outside the wild type (positions 1..286"),
    ("H0C", "mutation 'H0C': position 0 is outside the wild type"),
    ("H24", "mutation 'H24': 'H24' is not of the form A42G"),
    ("h24c", "mutation 'h24c': 'h24c' is not of the form A42G"),
    ("H24C;P25A", "is not of the form A42G"),
    ("H24C:", "mutation 'H24C:': '' is not of the form A42G"),
    ("H24J", "mutation 'H24J': 'J' is not a residue"),
    ("H24C:H24A", "mutation 'H24C:H24A': position 24 is named twice"),
    ("", "empty mutant"),
])
def test_bad_mutations_are_one_line_naming_mutation_and_line(run_cli, tmp_path, mutant, message):
    data = tmp_path / "m.csv"
    data.write_text(f"mutant,DMS_score\nH24C,0.1\n\"{mutant}\",0.2\n", encoding="utf-8")
    out = tmp_path / "s.csv"
    result = run_cli("score-variants", "--model", "esm2-tiny-mlm", "--wild-type", WILD_TYPE, "--data", data,
                     "--out", out)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}:3: ") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == [data]


def test_other_bad_inputs_are_one_line(run_cli, tmp_path, capsys):
    from transformers import EsmForSequenceClassification

    from scilm.models.protein import esm2_config, esm2_tokenizer

    out = tmp_path / "s.csv"
    base = ["score-variants", "--wild-type", WILD_TYPE, "--out", out]
    wrong_seq = tmp_path / "seq.csv"
    wrong_seq.write_text("mutant,mutated_sequence\nH24C,MSIQ\n", encoding="utf-8")
    classifier = tmp_path / "classifier"
    EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2)).save_pretrained(classifier)
    esm2_tokenizer().save_pretrained(classifier)
    capsys.readouterr()  # transformers' saving bar
    cases = [
        (["--model", "esm2-tiny-mlm", "--data", wrong_seq],
         f"{wrong_seq}:2: mutation 'H24C': mutated_sequence is not the wild type with it applied"),
        (["--model", "esm2-tiny-mlm", "--mutant", "H24C", "--offset", "24"],
         "--mutant #1: mutation 'H24C': the wild type has M at position 24, not H (check --wild-type and --offset 24)"),
        (["--model", "esm2-tiny-mlm", "--mutant", "H24C", "--data", wrong_seq], "either as --data"),
        (["--model", "esm2-tiny", "--mutant", "H24C"], "--model esm2-tiny: a preset has random weights"),
        (["--model", classifier, "--mutant", "H24C"],
         f"--model {classifier}: a EsmForSequenceClassification without a masked-LM head"),
        (["--model", "esm2-tiny-mlm", "--mutant", "H24C", "--scoring", "pseudo-ppl"], "--scoring must be one of"),
        (["--model", "esm2-tiny-mlm", "--data", MUTANTS, "--dms-column", "fitness"], "no column 'fitness'"),
        (["--model", "esm2-tiny-mlm", "--data", ESM1V, "--score-column", "DMS_score"],
         "already has a column 'DMS_score'"),
    ]
    for extra, message in cases:
        result = run_cli(*base, *extra)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], (extra, result.stderr)
        assert not out.exists()
    result = run_cli("score-variants", "--model", "esm2-tiny-mlm", "--wild-type", WILD_TYPE, "--mutant", "H24C",
                     "--out", WILD_TYPE)
    assert result.exit_code == 2 and "is also an input" in result.stderr


def test_readme_table_is_proteingym_published_row():
    """The README's expected-Spearman table is ProteinGym's published row, bundled verbatim."""
    import re

    from conftest import REPO

    with open(ASSAY / "proteingym_zero_shot_Spearman_row.csv", encoding="utf-8", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["DMS ID"] == "BLAT_ECOLX_Stiffler_2015"]
    published = {f"facebook/esm2_t{t}_{size}_UR50D": row[f"ESM2 ({size})"]
                  for t, size in ((6, "8M"), (12, "35M"), (30, "150M"), (33, "650M"))}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `(facebook/esm2_\w+)` \| ([0-9.]+) \|$", readme, flags=re.M))
    assert table == published == {"facebook/esm2_t6_8M_UR50D": "0.399", "facebook/esm2_t12_35M_UR50D": "0.557",
                                  "facebook/esm2_t30_150M_UR50D": "0.661", "facebook/esm2_t33_650M_UR50D": "0.731"}
