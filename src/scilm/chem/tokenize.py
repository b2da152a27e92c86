"""SMILES-aware pre-tokenisation: the regex of Schwaller et al.'s Molecular Transformer.

Bracket atoms (``[C@@H]``, ``[Na+]``), ``Br`` / ``Cl``, two-digit ring closures (``%10``) and
bond symbols stay whole; everything else is one character per token. ``~`` (salts) and ``>``
(reactions) are tokens too. Text the regex does not match is kept as its own piece, so no
character is ever lost (this is what ``behavior="isolated"`` does in ``tokenizers``).
"""

from __future__ import annotations

import re

# Schwaller et al., ACS Cent. Sci. 2019, "Molecular Transformer" (SI), verbatim.
SMILES_REGEX = (
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|\%[0-9]{2}|[0-9])"
)
_PATTERN = re.compile(SMILES_REGEX)


def split_smiles(smiles: str) -> list[str]:
    """Pieces of ``smiles`` whose concatenation is ``smiles``: regex tokens, others kept as runs."""
    return [piece for piece in _PATTERN.split(smiles) if piece]


def smiles_pre_tokenizer():
    """A ``tokenizers`` pre-tokenizer: split on whitespace, then isolate SMILES tokens."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(SMILES_REGEX), behavior="isolated"),
    ])
