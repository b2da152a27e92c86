"""SMILES canonicalisation for molecule sets, reactions and ``~`` salts (RDKit, logs silenced).

Text+Chem T5 writes molecules as ``.``-separated sets, reactions with ``>`` between reactants,
reagents and products, and salts as ``~``-joined ions (``[Na+]~[OH-]``). The canonical form
here canonicalises every molecule with RDKit and sorts: ions inside a salt, fragments inside a
set. ``>`` parts keep their order. So ``CCO.O`` and ``O.CCO`` have one canonical form, and a
salt stays a salt (``[Na+]~[OH-]`` and ``[Na+].[OH-]`` are different strings).

One RDKit pass (``MolToSmiles(MolFromSmiles(s))``, what ``Chem.CanonSmiles`` does) is not always
a fixed point: for some molecules, mostly with stereocentres in fused or bridged rings, reading
the canonical SMILES back and writing it again gives another string, which then stays (two
passes needed) or flips back (a two-cycle). Reported on the RDKit tracker and reproduced with
RDKit 2026.09 (pinned in ``tests/test_chem_metrics.py``): rdkit/rdkit#4710 (a steroid peroxide,
settles), #6420 (an adamantane alcohol, flips), #7429 (a cage with eight stereocentres, flips),
#7759 (an imine that settles; an aziridine cage that flips), #8721 (a bis-phthalimide without
stereo, flips); #8775 collects such reports. Compared after one pass, a prediction that *is*
``CanonSmiles(target)`` would score no exact match against its own target. Here each molecule is written, read
back and written again until a string repeats (at most :data:`MAX_ROUNDS` passes): a fixed point
is the answer, and of a cycle its smallest string (Python string order). Every string of a cycle
leads to the same cycle, so ``canonical_smiles(canonical_smiles(s)) == canonical_smiles(s)`` and
``canonical_smiles(Chem.CanonSmiles(s)) == canonical_smiles(s)``. Two writings of one molecule
that RDKit sends to *different* cycles (#1965, part 2) are not reconciled; none is known in the
sets tested here.
"""

from __future__ import annotations

import re

from scilm._extras import optional_extra

with optional_extra("chem"):
    from rdkit import Chem, rdBase

_SEPARATORS = re.compile(r"[.~>]")
MAX_ROUNDS = 16  # write/read passes before giving up on a fixed point; the tracker's cases need 3


def _mol(smiles: str) -> Chem.Mol | None:
    """RDKit molecule or None, with RDKit's parse errors kept off stderr."""
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles)


def stable_smiles(mol: Chem.Mol) -> str:
    """RDKit's canonical SMILES of ``mol``, iterated through write/read to a fixed point.

    Writes ``mol``, reads the string back and writes again until a string repeats: a fixed point
    is returned as is, a cycle as its smallest string (see the module docstring for why and for
    the RDKit issues this handles). If the written string cannot be read back (RDKit's own
    round-trip bugs) or no string repeats within :data:`MAX_ROUNDS` passes, the last string
    written is returned.
    """
    with rdBase.BlockLogs():
        seen: list[str] = []
        smiles = Chem.MolToSmiles(mol)
        while smiles not in seen and len(seen) < MAX_ROUNDS:
            seen.append(smiles)
            again = Chem.MolFromSmiles(smiles)
            if again is None:
                return smiles
            smiles = Chem.MolToSmiles(again)
    if smiles in seen:
        return min(seen[seen.index(smiles):])
    return smiles


def _canonical_piece(smiles: str) -> str | None:
    mol = _mol(smiles) if smiles else None
    if mol is None:
        return None
    return stable_smiles(mol)


def _canonical_set(part: str) -> str | None:
    """``A.B~C`` -> sorted canonical fragments; a ``~`` fragment is a salt of sorted ions."""
    fragments = []
    for fragment in part.split("."):
        ions = [_canonical_piece(ion) for ion in fragment.split("~")]
        if any(ion is None for ion in ions):
            return None
        fragments.append("~".join(sorted(ions)))
    return ".".join(sorted(fragments))


def canonical_smiles(smiles: str) -> str | None:
    """Canonical SMILES with molecule order ignored, or None if any piece does not parse.

    The one canonical form of scilm: exact match in ``scilm evaluate``, the ``canonical`` field of
    ``scilm generate``, ``scilm data textchem --canonicalize`` and the server's ``/draw`` all use
    it. Idempotent (each molecule through :func:`stable_smiles`).

    ``>`` splits a reaction into parts canonicalised one by one (an empty part, as in
    ``A>>B``, stays empty); an empty string or an empty molecule (``C..O``) is invalid.
    """
    smiles = smiles.strip()
    if not smiles:
        return None
    parts = smiles.split(">")
    if len(parts) == 1:
        return _canonical_set(parts[0])
    canonical = [_canonical_set(part) if part else "" for part in parts]
    if any(part is None for part in canonical) or not any(canonical):
        return None
    return ">".join(canonical)


def is_valid(smiles: str) -> bool:
    """True when every molecule of ``smiles`` parses with RDKit."""
    return canonical_smiles(smiles) is not None


def to_mol(smiles: str) -> Chem.Mol | None:
    """One RDKit molecule holding every fragment (salts, reaction parts flattened), or None.

    Valid exactly when :func:`canonical_smiles` is: fingerprints then agree with validity.
    """
    canonical = canonical_smiles(smiles)
    if canonical is None:
        return None
    return _mol(".".join(piece for piece in _SEPARATORS.split(canonical) if piece))
