"""What the reaction-prediction papers report besides one answer: top-k exact match over a ranked
beam, round-trip accuracy for retrosynthesis, and the spread of a metric over re-spelled inputs.

Top-k exact match (Liu et al., ACS Cent. Sci. 2017; Schwaller et al., "Molecular Transformer",
ACS Cent. Sci. 2019, their ``score_predictions.py``): the beam's candidates are taken in rank
order, each is canonicalised, and an example counts for top-k when the target is among the first
k. Candidates are not de-duplicated (a beam that spends two places on one molecule is worse, as in
those papers), and a candidate that does not parse never matches. Molecule tasks compare
:func:`~scilm.chem.smiles.canonical_smiles` (molecule order ignored); paragraph-to-actions and
unprompted examples compare the strings, surrounding whitespace ignored. Captions have no top-k.

Round-trip accuracy (Schwaller et al., "Predicting retrosynthetic pathways using transformer-based
models and a hyper-graph exploration strategy", Chem. Sci. 11, 3316, 2020; reported for
retrosynthesis by Christofidellis et al., "Unifying molecular and textual representations via
multi-task language modelling", ICML 2023): a proposed precursor set counts when a forward
model's top-1 prediction for it is the target product (canonical SMILES equal). Here it is
computed for the top-1 retrosynthesis candidate of every example; a candidate that does not parse
fails without being sent to the forward model.

Re-spelled inputs: RDKit random SMILES (``Chem.MolToRandomSmilesVect``: the ``doRandom=True`` writer
with its own seeded generator, so a seed gives the same spellings in any process) of each molecule of an input, with its ``.``, ``~`` and ``>`` structure kept; every
re-spelling has the input's canonical SMILES.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from scilm._extras import optional_extra
from scilm.chem.smiles import canonical_smiles

with optional_extra("chem"):
    from rdkit import Chem, rdBase

SMILES_INPUT_TASKS = ("forward-prediction", "retrosynthesis", "smiles-to-caption")
EXACT_TASKS_TEXT = ("paragraph-to-actions", "other")  # string match, no canonical form


def match_key(task: str, text: str) -> str | None:
    """What two outputs of ``task`` are compared by: the canonical SMILES (None if it does not parse)
    for molecule tasks, the stripped string otherwise (None if empty)."""
    from scilm.data.textchem import MOLECULE_TASKS

    if task in MOLECULE_TASKS:
        return canonical_smiles(text)
    return text.strip() or None


def rank_of_target(task: str, target: str, candidates: Sequence[str]) -> int | None:
    """1-based rank of the first candidate equal to ``target`` (see :func:`match_key`), or None.

    A target that does not parse is never matched (None), whatever the candidates.
    """
    wanted = match_key(task, target)
    if wanted is None:
        return None
    for rank, candidate in enumerate(candidates, start=1):
        if match_key(task, candidate) == wanted:
            return rank
    return None


def top_k_accuracy(ranks: Sequence[int | None], ks: Sequence[int]) -> dict[str, float]:
    """``{"top_k": share of examples whose rank is at most k}`` for each k; ranks from :func:`rank_of_target`.

    Raises ValueError on no examples (a 0 would be a wrong number, not an empty one).
    """
    if not ranks:
        raise ValueError("no examples to score")
    return {f"top_{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in ks}


def round_trip_ok(product: str, forward_top1: str | None) -> bool:
    """True when the forward model's top-1 output (None: not run, the precursors did not parse)
    is the target ``product``, both canonical; a product that does not parse never round-trips."""
    wanted = canonical_smiles(product)
    return wanted is not None and forward_top1 is not None and canonical_smiles(forward_top1) == wanted


def _random_spellings(smiles: str, n: int, seed: int) -> list[str] | None:
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        if mol is None:
            return None
        # RDKit's randomSeed 0 means "unseeded": seeds start at 1
        return list(Chem.MolToRandomSmilesVect(mol, n, randomSeed=seed % (2**32 - 1) + 1))


def random_spellings(smiles: str, n: int, seed: int = 0) -> list[str] | None:
    """``n`` RDKit random SMILES of ``smiles`` (seeded), or None when a piece of it does not parse.

    Each molecule between ``.``, ``~`` and ``>`` is re-spelled on its own (its seed offset by its
    position), so a salt stays a salt and a reaction keeps its parts in order; the molecules of a
    set keep their order too. RDKit's random writer walks the atoms from a random start in a random
    order (``doRandom=True``); stereo and charges are kept, so
    ``canonical_smiles(spelling) == canonical_smiles(smiles)``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 (got {n})")
    pieces, separators, current = [], [], ""
    for char in smiles.strip():
        if char in ".~>":
            pieces.append(current)
            separators.append(char)
            current = ""
        else:
            current += char
    pieces.append(current)
    spelled: list[list[str]] = []
    for index, piece in enumerate(pieces):
        if not piece:  # the empty part of "A>>B"
            if separators and all(s == ">" for s in separators[max(0, index - 1):index + 1]):
                spelled.append([""] * n)
                continue
            return None
        found = _random_spellings(piece, n, seed * 1_000_003 + index)
        if found is None:
            return None
        spelled.append(found)
    out = []
    for i in range(n):
        text = spelled[0][i]
        for separator, piece in zip(separators, spelled[1:]):
            text += separator + piece[i]
        out.append(text)
    return out


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """``mean``, ``sd`` (sample standard deviation, n - 1; None for one value), ``min``, ``max``."""
    if not values:
        raise ValueError("no values")
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}
