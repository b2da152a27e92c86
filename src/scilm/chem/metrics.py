"""Text+Chem metrics, defined as in MolT5's evaluation scripts (blender-nlp/MolT5, ``evaluation/``:
``mol_translation_metrics.py``, ``fingerprint_metrics.py``, ``text_translation_metrics.py``).

Every metric value is a Python ``float`` (per example and per corpus), in every branch (empty
prediction, nothing in common, nothing valid), except where a value is undefined and documented
as ``None``: ``*_fts_valid_only`` with no valid pair, ``meteor`` without WordNet data. An empty
list of examples is an error, not a 0.

Molecules (forward prediction, retrosynthesis, text-to-SMILES):
- ``exact_match``: canonical SMILES equal (:func:`~scilm.chem.smiles.canonical_smiles`, idempotent,
  molecule order ignored). Deviation: MolT5 compares the raw strings; Text+Chem and chemists
  compare molecules. On predictions and targets already written canonically the two agree.
- ``validity``: share of predictions RDKit parses. Deviation: an empty prediction is invalid
  (``MolFromSmiles("")`` is an empty molecule, which MolT5 counts as valid), and ``~`` salts and
  ``>`` reactions are read piece by piece (MolT5 calls them invalid).
- ``levenshtein``: mean edit distance of the raw strings (as MolT5: ``Levenshtein.distance``).
- ``bleu``: NLTK ``corpus_bleu`` (BLEU-4) on character lists (as MolT5), see :func:`bleu` for 0.
- ``maccs_fts`` / ``rdk_fts`` / ``morgan_fts``: Tanimoto of MACCS keys, RDKit path fingerprints and
  Morgan radius-2 count fingerprints (the values of MolT5's ``GenMACCSKeys``, ``RDKFingerprint``
  and ``GetMorganFingerprint(m, 2)``), averaged over ALL examples with an invalid prediction (or
  target) counted as 0. Deviation: MolT5 averages over valid pairs only, which rewards a model
  for emitting nothing rather than a wrong molecule; MolT5's convention is kept as
  ``*_fts_valid_only`` (None when nothing is valid) so published numbers can still be compared.

Captions (MolT5's latest ``text_translation_metrics.py``): BLEU-2/4 (``corpus_bleu``, weights
(.5,.5) / (.25,)*4) and METEOR (NLTK ``meteor_score``, WordNet found offline, see :mod:`.meteor`)
on the caption's tokens; ROUGE-1/2/L F-measure (``rouge-score``'s ``RougeScorer``, no stemming,
its own tokeniser, mean over captions). Deviation: MolT5's tokens are SciBERT's WordPiece pieces
(``allenai/scibert_scivocab_uncased``, a hub download, truncated at 512); here they are the
pieces BERT's tokenizer makes *before* WordPiece (``tokenizers``' ``BertNormalizer`` lower-casing
and stripping accents, then ``BertPreTokenizer``: words and single punctuation marks), with no
truncation. A word that SciBERT's vocabulary splits into several ``##`` pieces is one token here,
so BLEU and METEOR differ slightly from MolT5's published values (the test suite checks the
pre-WordPiece part against ``BertTokenizerFast`` itself).

Actions (paragraph-to-actions): BLEU-2 on whitespace tokens and exact string match (surrounding
whitespace ignored).
"""

from __future__ import annotations

import sys
import warnings
from functools import lru_cache

from scilm._extras import optional_extra

with optional_extra("chem"):
    from Levenshtein import distance as levenshtein
    from nltk.translate.bleu_score import corpus_bleu
    from rdkit import Chem, DataStructs, rdBase
    from rdkit.Chem import MACCSkeys, rdFingerprintGenerator
    from rouge_score import rouge_scorer

from scilm.chem.meteor import load_wordnet, meteor
from scilm.chem.smiles import canonical_smiles, to_mol

BLEU2 = (0.5, 0.5)
BLEU4 = (0.25, 0.25, 0.25, 0.25)
FINGERPRINTS = ("maccs", "rdk", "morgan")
_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2)


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def bleu(references: list[list[str]], hypotheses: list[list[str]], weights=BLEU4) -> float:
    """NLTK corpus BLEU, one reference per hypothesis.

    When an n-gram order has no match, NLTK warns and puts the smallest float in place of the zero
    precision, returning at most ``float_min ** weight`` (1e-77 for BLEU-4) instead of 0; that is
    reported as 0, without the warning. No real corpus has a true BLEU that small.
    """
    if not hypotheses:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(corpus_bleu([[r] for r in references], hypotheses, weights=weights))
    stand_in = sys.float_info.min ** min(w for w in weights if w > 0)
    return value if value > stand_in * 1.000001 else 0.0


@lru_cache(maxsize=1)
def _bert_basic():
    from tokenizers import normalizers, pre_tokenizers

    # what BertTokenizerFast (do_lower_case=True, as SciBERT uncased) runs before WordPiece
    return normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()


def caption_tokens(text: str) -> list[str]:
    """BERT's uncased pre-WordPiece tokens: lower-cased, accents stripped, split at spaces and
    at every punctuation mark (``a_b`` -> ``a _ b``)."""
    normalizer, pre_tokenizer = _bert_basic()
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]


def _check(targets: list[str], predictions: list[str]) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not targets:
        raise ValueError("no examples to score")


# --- molecules ---------------------------------------------------------------------------------

def fingerprint_similarities(target: str, prediction: str) -> dict[str, float] | None:
    """MACCS / RDK / Morgan(r=2) Tanimoto of two SMILES, or None if either does not parse."""
    gold, pred = to_mol(target), to_mol(prediction)
    if gold is None or pred is None:
        return None
    with rdBase.BlockLogs():
        return {
            "maccs": DataStructs.TanimotoSimilarity(
                MACCSkeys.GenMACCSKeys(gold), MACCSkeys.GenMACCSKeys(pred)),
            "rdk": DataStructs.TanimotoSimilarity(Chem.RDKFingerprint(gold), Chem.RDKFingerprint(pred)),
            "morgan": DataStructs.TanimotoSimilarity(
                _MORGAN.GetSparseCountFingerprint(gold), _MORGAN.GetSparseCountFingerprint(pred)),
        }


def molecule_scores(target: str, prediction: str) -> dict:
    """Per-example molecule scores: floats, and two flags (``valid``, ``similarity_counted``).

    ``canonical_prediction`` is the prediction's canonical SMILES or None; similarities are 0.0
    when either SMILES does not parse.
    """
    canonical_target, canonical_pred = canonical_smiles(target), canonical_smiles(prediction)
    similarities = fingerprint_similarities(target, prediction)
    return {
        "canonical_prediction": canonical_pred,
        "valid": canonical_pred is not None,
        "exact_match": float(canonical_pred is not None and canonical_pred == canonical_target),
        "levenshtein": float(levenshtein(target, prediction)),
        **{f"{name}_sim": float((similarities or {}).get(name, 0.0)) for name in FINGERPRINTS},
        "similarity_counted": similarities is not None,
    }


def molecule_metrics(targets: list[str], predictions: list[str]) -> dict:
    """Corpus molecule metrics of aligned lists (see the module docstring for each definition).

    Raises ValueError when the lists differ in length or are empty.
    """
    _check(targets, predictions)
    scores = [molecule_scores(t, p) for t, p in zip(targets, predictions)]
    counted = [s for s in scores if s["similarity_counted"]]
    result = {
        "exact_match": _mean([s["exact_match"] for s in scores]),
        "validity": _mean([float(s["valid"]) for s in scores]),
        "levenshtein": _mean([float(s["levenshtein"]) for s in scores]),
        "bleu": bleu([list(t) for t in targets], [list(p) for p in predictions]),
    }
    for name in FINGERPRINTS:
        result[f"{name}_fts"] = _mean([s[f"{name}_sim"] for s in scores])
    for name in FINGERPRINTS:
        result[f"{name}_fts_valid_only"] = _mean([s[f"{name}_sim"] for s in counted])
    return result


# --- captions ----------------------------------------------------------------------------------

_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def _rouge(target: str, prediction: str) -> dict[str, float]:
    # rouge-score returns int 0 (not 0.0) for ROUGE-L when either text has no token
    scores = _ROUGE.score(target, prediction)
    return {name: float(scores[name].fmeasure) for name in ("rouge1", "rouge2", "rougeL")}


def caption_scores(target: str, prediction: str, with_meteor: bool = True) -> dict:
    """Per-example caption scores: BLEU-2 (unsmoothed), ROUGE-1/2/L F, METEOR (None if no WordNet)."""
    ref, hyp = caption_tokens(target), caption_tokens(prediction)
    wordnet, _ = load_wordnet() if with_meteor else (None, "")
    return {
        "bleu2": bleu([ref], [hyp], BLEU2),
        **_rouge(target, prediction),
        "meteor": meteor(ref, hyp, wordnet) if wordnet is not None else None,
    }


def caption_metrics(targets: list[str], predictions: list[str]) -> dict:
    """Corpus caption metrics of aligned lists; ``meteor`` is None with ``meteor_unavailable`` saying why.

    Raises ValueError when the lists differ in length or are empty.
    """
    _check(targets, predictions)
    refs, hyps = [caption_tokens(t) for t in targets], [caption_tokens(p) for p in predictions]
    result = {"bleu2": bleu(refs, hyps, BLEU2), "bleu4": bleu(refs, hyps, BLEU4)}
    rouges = [_rouge(t, p) for t, p in zip(targets, predictions)]
    for name in ("rouge1", "rouge2", "rougeL"):
        result[name] = _mean([r[name] for r in rouges])
    wordnet, origin = load_wordnet()
    if wordnet is None:
        result.update(meteor=None, meteor_unavailable=origin)
    else:
        result["meteor"] = _mean([meteor(r, h, wordnet) for r, h in zip(refs, hyps)])
    return result


# --- actions -----------------------------------------------------------------------------------

def action_scores(target: str, prediction: str) -> dict:
    """Per-example action scores: BLEU-2 on whitespace tokens and exact match (1.0 or 0.0)."""
    return {"bleu2": bleu([target.split()], [prediction.split()], BLEU2),
            "exact_match": float(target.strip() == prediction.strip())}


def action_metrics(targets: list[str], predictions: list[str]) -> dict:
    """Corpus BLEU-2 on whitespace tokens and the exact-match rate.

    NLTK counts a one-token hypothesis (``NOACTION.``) as 0 matched of 1 bigram, so even a
    perfect one-token answer lowers BLEU-2; exact match does not have that quirk. Raises
    ValueError when the lists differ in length or are empty.
    """
    _check(targets, predictions)
    return {
        "bleu2": bleu([t.split() for t in targets], [p.split() for p in predictions], BLEU2),
        "exact_match": _mean([float(t.strip() == p.strip()) for t, p in zip(targets, predictions)]),
    }
