"""SMILES -> SVG with RDKit, for the web page's molecule pictures (server-side, no JS chemistry)."""

from __future__ import annotations

from rdkit import rdBase
from rdkit.Chem import rdChemReactions
from rdkit.Chem.Draw import rdMolDraw2D

from scilm.chem.smiles import canonical_smiles, to_mol
from scilm.serving.limits import RequestError, check_smiles_chars

MAX_SMILES_CHARS = 1000


def smiles_svg(smiles: str, width: int = 360, height: int = 240) -> dict[str, str]:
    """``{"smiles", "canonical", "svg"}``; a string RDKit cannot parse is a 422 naming the problem."""
    smiles = smiles.strip()
    if not smiles:
        raise RequestError(422, "smiles: empty")
    if len(smiles) > MAX_SMILES_CHARS:
        raise RequestError(422, f"smiles: {len(smiles)} characters is over the limit of {MAX_SMILES_CHARS}")
    check_smiles_chars(smiles, "smiles")
    canonical = canonical_smiles(smiles)
    if canonical is None:
        raise RequestError(422, f"smiles: RDKit cannot parse {smiles!r}")
    drawer = rdMolDraw2D.MolDraw2DSVG(width * (2 if ">" in canonical else 1), height)
    with rdBase.BlockLogs():
        if ">" in canonical:  # a reaction: reactants > reagents > products, with arrows
            drawer.DrawReaction(rdChemReactions.ReactionFromSmarts(canonical.replace("~", "."), useSmiles=True))
        else:
            drawer.DrawMolecule(to_mol(canonical))
    drawer.FinishDrawing()
    return {"smiles": smiles, "canonical": canonical, "svg": drawer.GetDrawingText()}
