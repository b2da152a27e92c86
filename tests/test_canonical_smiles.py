"""One idempotent canonical SMILES, used by evaluate, generate, `data textchem --canonicalize` and the server.

The molecules are public reports from the RDKit tracker where one ``Chem.CanonSmiles`` pass is not a
fixed point (issue 11, case 5): before the fix, a prediction that *is* RDKit's canonical form of the
target scored exact match 0 with Morgan similarity 1.0.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rdkit import Chem, rdBase

from scilm.chem.evaluate import evaluate_predictions, score_examples
from scilm.chem.metrics import molecule_metrics, molecule_scores
from scilm.chem.smiles import canonical_smiles, stable_smiles
from scilm.data.textchem import MOLECULE_TASKS, input_of, make_example, read_jsonl
from scilm.inference.generate import output_record

DATA = Path(__file__).parent / "data" / "textchem"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BUNDLED = Path(__file__).resolve().parents[1] / "src" / "scilm" / "data" / "bundled"

# rdkit/rdkit issue -> SMILES as reported. "settles": a second pass gives a string that then stays;
# "flips": the canonical strings alternate forever (a two-cycle).
TRACKER = {
    "4710-settles": "COC(=O)CC[C@@H](C)[C@H]1CC[C@H]2[C@H]3[C@H](CC[C@@]21C)[C@@]1(C)CC[C@]2(C[C@H]1C[C@H]3OC(C)=O)"
                    "OOC1(CC[C@@H](C)CC1)OO2",
    "6420-flips": "O=C(C[C@]1(c2ccc(-c3ccc(F)cc3)cc2)C2CC3CC1CC(C2)[C@@H]3O)N1CC(O)C1",
    "7429-flips": "COC(=O)[C@@]12[C@@H]3N([C@H]4[C@@]5([C@@H](N([C@H]1[C@]3(C5c1ccc(OC)cc1)C(=O)OC)"
                  "C(=O)OCc1ccccc1)[C@]4([C@H]2c1ccc(OC)cc1)C(=O)OC)C(=O)OC)C(=O)OCc1ccccc1",
    "7759-settles": "[H]/N=C(C=C)\\C(/N=C\\[O-])=N\\[H]",
    "7759-flips": "[C@H]12[C@H]3[C@@H]4[C@H]5[C@@H]([C@H]1N24)N53",
    "8721-flips": "O=C(c1ccccc1C(=O)N1C(=O)c2ccccc2C1=O)N1C(=O)c2ccccc2C1=O",
}
STEREO_RINGS = ["4710-settles", "6420-flips", "7429-flips", "7759-flips"]


def rdkit_canon(smiles: str) -> str:
    """One ``Chem.CanonSmiles`` pass, RDKit's own messages silenced."""
    with rdBase.BlockLogs():
        return Chem.CanonSmiles(smiles)


def rdkit_passes(smiles: str, n: int) -> list[str]:
    out = [rdkit_canon(smiles)]
    while len(out) < n:
        out.append(rdkit_canon(out[-1]))
    return out


@pytest.mark.parametrize("name", TRACKER)
def test_one_rdkit_pass_is_not_a_fixed_point_for_the_reported_molecules(name):
    first, second, third, fourth = rdkit_passes(TRACKER[name], 4)
    if first == second:
        pytest.skip(f"RDKit {rdBase.rdkitVersion} fixed rdkit/rdkit#{name[:4]}: the case no longer exercises the fix")
    if name.endswith("flips"):
        assert first == third != second == fourth
    else:
        assert second == third == fourth


@pytest.mark.parametrize("name", TRACKER)
def test_canonical_form_is_a_fixed_point_and_rdkits_form_maps_onto_it(name):
    smiles = TRACKER[name]
    canonical = canonical_smiles(smiles)
    assert canonical_smiles(canonical) == canonical
    for written in rdkit_passes(smiles, 3):  # every string RDKit writes for it
        assert canonical_smiles(written) == canonical
    first, second = rdkit_passes(smiles, 2)
    # a fixed point is kept, a cycle gives its smallest string
    assert canonical == (min(first, second) if name.endswith("flips") else second)


@pytest.mark.parametrize("name", TRACKER)
def test_prediction_that_is_rdkits_canonical_form_is_an_exact_match(name):
    target = TRACKER[name]
    scores = molecule_scores(target, rdkit_canon(target))
    assert scores["exact_match"] == 1.0 and scores["morgan_sim"] == 1.0 and scores["valid"]
    for other in rdkit_passes(target, 3):
        assert molecule_scores(other, target)["exact_match"] == 1.0


def test_evaluate_scores_rdkits_canonical_forms_as_exact_matches():
    targets = [TRACKER[name] for name in STEREO_RINGS]
    predictions = [rdkit_canon(t) for t in targets]
    assert molecule_metrics(targets, predictions)["exact_match"] == 1.0
    examples = [make_example("text-to-smiles", f"molecule {i}", t) for i, t in enumerate(targets)]
    result = evaluate_predictions(examples, predictions)["text-to-smiles"]
    assert result["exact_match"] == result["morgan_fts"] == result["validity"] == 1.0
    rows = score_examples(examples, predictions)
    assert [r["exact_match"] for r in rows] == [1.0] * len(targets)
    assert [r["canonical_prediction"] for r in rows] == [canonical_smiles(t) for t in targets]


def test_generate_writes_the_same_canonical_form_for_every_writing():
    for name in STEREO_RINGS:
        expected = canonical_smiles(TRACKER[name])
        for written in [TRACKER[name], *rdkit_passes(TRACKER[name], 2)]:
            record = output_record("retrosynthesis", "CCO", written)
            assert record["canonical"] == expected and record["valid"] is True


def test_server_draw_gives_the_same_canonical_form_for_every_writing():
    from scilm.serving.draw import smiles_svg

    for name in STEREO_RINGS:
        expected = canonical_smiles(TRACKER[name])
        for written in [TRACKER[name], *rdkit_passes(TRACKER[name], 2)]:
            assert smiles_svg(written)["canonical"] == expected


def test_data_textchem_canonicalize_writes_fixed_points_that_match_rdkit_predictions(run_cli, tmp_path):
    tsv = tmp_path / "chebi.txt"
    rows = [f"{i}\t{TRACKER[name]}\tThe molecule number {i}." for i, name in enumerate(STEREO_RINGS)]
    tsv.write_text("CID\tSMILES\tdescription\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tc"
    result = run_cli("data", "textchem", "--out", out, "--chebi20", tsv, "--canonicalize",
                     "--valid-fraction", "0", "--test-fraction", "0")
    assert result.exit_code == 0, result.stderr
    examples = read_jsonl(out / "train.jsonl")
    written = {e.target for e in examples if e.task == "text-to-smiles"}
    written |= {input_of(e) for e in examples if e.task == "smiles-to-caption"}
    assert written == {canonical_smiles(TRACKER[name]) for name in STEREO_RINGS}
    assert all(canonical_smiles(s) == s for s in written)
    to_smiles = [e for e in examples if e.task == "text-to-smiles"]
    original = {f"The molecule number {i}.": TRACKER[name] for i, name in enumerate(STEREO_RINGS)}
    predictions = [rdkit_canon(original[input_of(e)]) for e in to_smiles]
    assert evaluate_predictions(to_smiles, predictions)["text-to-smiles"]["exact_match"] == 1.0


# --- idempotence over every SMILES set shipped with the repository ------------------------------------

def _untokenize(line: str) -> str:
    return "".join(re.sub(r"<RX_\d+>", " ", line).split())


def _chebi20_smiles(path: Path) -> list[str]:
    """Column 2 of a ChEBI-20 file, its doubled backslashes undone as ``scilm data textchem`` reads them."""
    return [line.split("\t")[1].replace("\\\\", "\\")
            for line in path.read_text(encoding="utf-8").splitlines()[1:]]


def _uspto_smiles(*paths: Path) -> list[str]:
    return [_untokenize(line) for path in paths for line in path.read_text(encoding="utf-8").splitlines()]


# The bundled Text+Chem slices (``scilm bench textchem``): SMILES files and text-only ones. A new file
# there fails test_canonical_is_idempotent_over_the_fixture_smiles until it is sorted into one of these.
BUNDLED_TEXTCHEM_CHEBI20 = ("chebi20-validation-400.txt",)
BUNDLED_TEXTCHEM_USPTO = ("uspto50k-valid_sources-600.txt", "uspto50k-valid_targets-600.txt")
BUNDLED_TEXTCHEM_TEXT = ("README.md", *(f"p2a-{kind}-{split}.txt" for kind in ("src", "tgt")
                                        for split in ("train", "valid", "test")))


def fixture_smiles() -> list[str]:
    """Every SMILES in tests/data/textchem (ChEBI-20, USPTO, the Text+Chem sample files) and in the
    bundled Text+Chem slices (``src/scilm/data/bundled/textchem``: ChEBI-20 and USPTO-50K prefixes).

    Outside ``bundled/textchem``, ``src/scilm/data/bundled`` holds protein data only (no SMILES);
    inside it every file is either read here or known to hold text only (paragraph2actions, README).
    Either check fails when a new bundled file appears that this fixture does not know about.
    """
    protein = {".fasta", ".md", ".gz", ".txt", ".csv"}
    assert not [p for p in BUNDLED.rglob("*") if p.is_file() and "textchem" not in p.parts
                and (p.suffix not in protein or p.suffix == ".txt" and not p.name.startswith("LICENSE"))]
    textchem = BUNDLED / "textchem"
    known = {*BUNDLED_TEXTCHEM_CHEBI20, *BUNDLED_TEXTCHEM_USPTO, *BUNDLED_TEXTCHEM_TEXT}
    assert sorted(p.name for p in textchem.rglob("*") if p.is_file()) == sorted(known)
    smiles = _chebi20_smiles(DATA / "chebi20-validation.txt")
    smiles += _uspto_smiles(DATA / "uspto-valid_sources", DATA / "uspto-valid_targets")
    for path in sorted((DATA / "textchem-sample").glob("*.jsonl")):
        for example in read_jsonl(path):
            if example.task in MOLECULE_TASKS:
                smiles.append(example.target)
            if example.task in ("forward-prediction", "retrosynthesis", "smiles-to-caption"):
                smiles.append(input_of(example))
    for name in BUNDLED_TEXTCHEM_CHEBI20:
        smiles += _chebi20_smiles(textchem / name)
    smiles += _uspto_smiles(*(textchem / name for name in BUNDLED_TEXTCHEM_USPTO))
    return smiles


def assert_idempotent(smiles_list: list[str]) -> None:
    for smiles in smiles_list:
        canonical = canonical_smiles(smiles)
        assert canonical is not None, smiles
        assert canonical_smiles(canonical) == canonical, smiles
        for piece in re.split(r"[.~>]", canonical):  # and RDKit's one pass of each molecule maps back
            if piece:
                assert canonical_smiles(rdkit_canon(piece)) == piece, smiles


@pytest.mark.slow  # ~4 s over 1,640 SMILES; the quick loop keeps the RDKit round-trip tests above
def test_canonical_is_idempotent_over_the_fixture_smiles():
    smiles = fixture_smiles()
    assert len(smiles) >= 40 + 400 + 2 * 600  # the bundled slices are in
    assert_idempotent(smiles)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "chebi20").is_dir(), reason="no ../shared/data (full ChEBI-20 / USPTO sets)")
def test_canonical_is_idempotent_over_the_full_shared_sets():
    lines = (SHARED / "chebi20" / "validation.txt").read_text(encoding="utf-8").splitlines()[1:]
    smiles = [line.split("\t")[1].replace("\\\\", "\\") for line in lines]
    for name in ("valid_sources", "valid_targets"):
        smiles += [_untokenize(line) for line in (SHARED / "uspto50k-liu2017" / name).read_text().splitlines()]
    assert_idempotent([s for s in smiles if canonical_smiles(s) is not None])


def test_stable_smiles_of_a_mol_is_rdkits_string_when_that_is_a_fixed_point():
    mol = Chem.MolFromSmiles("OCC")
    assert stable_smiles(mol) == Chem.MolToSmiles(mol) == "CCO"
