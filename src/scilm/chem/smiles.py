"""SMILES canonicalisation for molecule sets, reactions and ``~`` salts (RDKit, logs silenced).

Text+Chem T5 writes molecules as ``.``-separated sets, reactions with ``>`` between reactants,
reagents and products, and salts as ``~``-joined ions (``[Na+]~[OH-]``). The canonical form
here canonicalises every molecule with RDKit and sorts: ions inside a salt, fragments inside a
set. ``>`` parts keep their order. So ``CCO.O`` and ``O.CCO`` have one canonical form, and a
salt stays a salt (``[Na+]~[OH-]`` and ``[Na+].[OH-]`` are different strings).
"""

from __future__ import annotations

import re

from rdkit import Chem, rdBase

_SEPARATORS = re.compile(r"[.~>]")


def _mol(smiles: str) -> Chem.Mol | None:
    """RDKit molecule or None, with RDKit's parse errors kept off stderr."""
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles)


def _canonical_piece(smiles: str) -> str | None:
    mol = _mol(smiles) if smiles else None
    if mol is None:
        return None
    with rdBase.BlockLogs():
        return Chem.MolToSmiles(mol)


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
