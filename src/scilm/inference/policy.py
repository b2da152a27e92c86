"""Which residues of a protein the model is fed: the plug-in point of the long-protein policy.

A :data:`ResiduePolicy` maps one validated sequence to the residues fed to the model (a string of
residues, one token each for ESM-2). ``embed`` and ``predict`` apply it to every sequence, and the
per-residue embeddings are aligned with exactly the residues it returns. Today's policy is
:func:`head_policy` (the first N residues, :func:`scilm.models.protein.truncate_sequences`); a
policy that keeps, e.g., both ends of a long protein plugs in through the same ``policy=`` argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scilm.models.protein import truncate_sequences

ResiduePolicy = Callable[[str], str]


@dataclass(frozen=True)
class HeadPolicy:
    """Feed the first ``max_residues`` residues (``scilm train --truncate``'s rule); picklable,
    and ``str(policy)`` names it for resume manifests (a resumed run must use the same policy)."""

    max_residues: int

    def __post_init__(self) -> None:
        truncate_sequences([], self.max_residues)  # the one check: at least 1 residue

    def __call__(self, sequence: str) -> str:
        return truncate_sequences([sequence], self.max_residues)[0][0]

    def __str__(self) -> str:
        return f"head:{self.max_residues}"

    def cuts(self, sequence: str) -> bool:
        """True when this policy leaves residues of ``sequence`` out."""
        return len(sequence) > self.max_residues


def head_policy(max_residues: int) -> HeadPolicy:
    """The first ``max_residues`` residues of each sequence; raises ScilmError below 1."""
    return HeadPolicy(max_residues)
