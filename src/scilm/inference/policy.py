"""Which residues of a long protein the model is fed: the one long-protein policy of train, predict,
embed and serve (setting ``long_policy``).

A policy maps one validated sequence of L residues to its *pieces*: the residue positions fed to the
model in one forward each, at most N = ``max_residues`` per piece (ESM-2: one token per residue).
A sequence of at most N residues is one piece, itself, under every policy.

- ``head`` (:class:`HeadPolicy`): the first N residues (``scilm train --truncate``'s rule since the start).
- ``ends`` (:class:`EndsPolicy`): the first ceil(N/2) and the last floor(N/2) residues, fed as one
  piece. Sorting signals sit at both termini (signal peptides and transit peptides at the N-terminus,
  e.g. ER-retention and peroxisomal signals at the C-terminus); DeepLoc 2.0 keeps both ends of proteins
  longer than its limit (Thumuluri et al. 2022; ../shared/docs/SOURCES.md section 4), as the Light
  Attention setups on ESM-1b did (Stärk et al. 2021).
- ``window`` (:class:`WindowPolicy`): overlapping windows of N residues every ``stride`` residues
  (default N // 2), the last one ending at the last residue, so every residue is fed at least once;
  embed and predict run every window and average (:mod:`scilm.inference.embed`,
  :mod:`scilm.inference.predict`). Training refuses it (one example per record is one piece).

``head`` and ``ends`` are also plain :data:`ResiduePolicy` callables (sequence -> residues fed).
``str(policy)`` names the policy and its sizes (resume manifests: a resumed run must use the same).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scilm.errors import ScilmError
from scilm.errors import name as setting_name
from scilm.models.protein import LONG_POLICY_KEY, truncate_sequences

ResiduePolicy = Callable[[str], str]
LONG_POLICIES = ("head", "ends", "window")
TRAINING_POLICIES = ("head", "ends")  # one piece per record


@dataclass(frozen=True)
class HeadPolicy:
    """Feed the first ``max_residues`` residues (``scilm train --truncate``'s rule); picklable."""

    max_residues: int
    name = "head"

    def __post_init__(self) -> None:
        truncate_sequences([], self.max_residues)  # the one check: at least 1 residue

    def __call__(self, sequence: str) -> str:
        return sequence[: self.max_residues]

    def __str__(self) -> str:
        return f"head:{self.max_residues}"

    def cuts(self, sequence: str) -> bool:
        """True when ``sequence`` is longer than one piece (head/ends: residues are left out)."""
        return len(sequence) > self.max_residues

    def pieces(self, length: int) -> list[np.ndarray]:
        """Positions (0-based, int64) fed in each forward for a sequence of ``length`` residues."""
        return [np.arange(min(length, self.max_residues), dtype=np.int64)]

    def describe(self) -> str:
        """What the policy does to a longer sequence, for summary lines."""
        return f"cut to {self.max_residues} residues"


@dataclass(frozen=True)
class EndsPolicy(HeadPolicy):
    """Feed both termini of a long protein: its first ceil(N/2) and last floor(N/2) residues, joined
    (N = ``max_residues``); shorter sequences whole. Per-residue outputs belong to those residues."""

    name = "ends"

    def __call__(self, sequence: str) -> str:
        if len(sequence) <= self.max_residues:
            return sequence
        head, tail = self.halves()
        return sequence[:head] + sequence[len(sequence) - tail:]

    def halves(self) -> tuple[int, int]:
        """(residues kept from the N-terminus, from the C-terminus): (ceil(N/2), floor(N/2))."""
        return -(-self.max_residues // 2), self.max_residues // 2

    def __str__(self) -> str:
        return f"ends:{self.max_residues}"

    def pieces(self, length: int) -> list[np.ndarray]:
        if length <= self.max_residues:
            return [np.arange(length, dtype=np.int64)]
        head, tail = self.halves()
        return [np.concatenate([np.arange(head), np.arange(length - tail, length)]).astype(np.int64)]

    def describe(self) -> str:
        head, tail = self.halves()
        return f"cut to their first {head} and last {tail} residues"


@dataclass(frozen=True)
class WindowPolicy(HeadPolicy):
    """Windows of N = ``max_residues`` residues starting every ``stride`` residues (default N // 2, at
    least 1), the last one ending at the last residue; the outputs of the windows are averaged (per
    residue over the windows covering it). Not a one-piece callable: use :meth:`pieces`."""

    stride: int | None = None
    name = "window"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stride is not None and not 1 <= self.stride <= self.max_residues:
            raise ScilmError(f"window stride must be between 1 and {self.max_residues} (got {self.stride})")

    @property
    def step(self) -> int:
        """The stride in residues."""
        return self.stride if self.stride is not None else max(1, self.max_residues // 2)

    def __call__(self, sequence: str) -> str:
        raise ScilmError(f"{setting_name('long_policy')} window feeds several windows per protein; it cannot be used "
                         "where one piece per protein is fed (training, per-residue labels)")

    def __str__(self) -> str:
        return f"window:{self.max_residues}:{self.step}"

    def starts(self, length: int) -> list[int]:
        """First position of each window: 0, stride, 2 stride, ... and length - N (sorted, unique)."""
        n = self.max_residues
        if length <= n:
            return [0]
        return sorted({*range(0, length - n, self.step), length - n})

    def pieces(self, length: int) -> list[np.ndarray]:
        n = min(length, self.max_residues)
        return [np.arange(start, start + n, dtype=np.int64) for start in self.starts(length)]

    def describe(self) -> str:
        return f"averaged over windows of {self.max_residues} residues, stride {self.step}"


POLICY_CLASSES = {"head": HeadPolicy, "ends": EndsPolicy, "window": WindowPolicy}


def check_long_policy(value: str, allowed: tuple[str, ...] = LONG_POLICIES) -> str:
    """``value`` if it is one of ``allowed``; else ScilmError naming the ``long_policy`` setting."""
    if value not in allowed:
        extra = " (window is for predict/embed/serve)" if value == "window" else ""
        raise ScilmError(f"{setting_name('long_policy')} must be one of {' | '.join(allowed)}{extra} (got {value!r})")
    return value


def make_policy(long_policy: str, max_residues: int) -> HeadPolicy:
    """The policy named ``long_policy`` (head | ends | window) at ``max_residues`` residues per piece.

    Raises ScilmError for another name or ``max_residues`` below 1.
    """
    return POLICY_CLASSES[check_long_policy(long_policy)](max_residues)


def trained_policy(config) -> str:
    """The policy a model was trained with (``scilm_long_policy`` in its config.json), ``head`` when
    none is recorded (models trained before the setting existed, hub models). Raises ScilmError for a
    recorded value that is not a policy."""
    recorded = getattr(config, LONG_POLICY_KEY, None)
    if recorded is None:
        return "head"
    if recorded not in LONG_POLICIES:
        raise ScilmError(f"config.json: {LONG_POLICY_KEY} {recorded!r} is not one of {', '.join(LONG_POLICIES)}")
    return recorded


def model_policy(config, tokenizer=None, long_policy: str | None = None, truncate: int | None = None) -> HeadPolicy:
    """The policy predict/embed/serve apply: ``long_policy`` else the model's training policy
    (:func:`trained_policy`), at ``truncate`` residues per piece else the model's trained length
    (:func:`scilm.models.protein.max_residues`). Raises ScilmError for a bad name or size."""
    from scilm.models.protein import max_residues

    chosen = trained_policy(config) if long_policy is None else long_policy
    return make_policy(chosen, truncate if truncate is not None else max_residues(config, tokenizer))


def head_policy(max_residues: int) -> HeadPolicy:
    """The first ``max_residues`` residues of each sequence; raises ScilmError below 1."""
    return HeadPolicy(max_residues)


def split(policy, sequence: str) -> tuple[list[str], list[np.ndarray] | None]:
    """The residues fed in each forward for ``sequence`` and their positions in it (None for a plain
    :data:`ResiduePolicy` callable: one piece, ``policy(sequence)``, whose rows are the residues it returns)."""
    if not hasattr(policy, "pieces"):
        return [policy(sequence)], None
    pieces = policy.pieces(len(sequence))
    if len(pieces) == 1 and not isinstance(policy, WindowPolicy):
        return [policy(sequence)], pieces
    return ["".join(sequence[i] for i in piece) for piece in pieces], pieces


def cuts(policy, sequence: str) -> bool:
    """True when ``policy`` does not feed ``sequence`` whole in one forward."""
    return policy.cuts(sequence) if hasattr(policy, "cuts") else len(policy(sequence)) < len(sequence)


def fed_residues(policy, lengths) -> int:
    """Residues ``policy`` feeds the model for proteins of ``lengths`` (residues each), every piece counted:
    the size of a job, e.g. to weigh a quantised copy's build seconds against the time it saves."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not isinstance(policy, WindowPolicy):
        return int(np.minimum(lengths, policy.max_residues).sum())
    short = lengths <= policy.max_residues
    return int(lengths[short].sum()) + sum(sum(len(p) for p in policy.pieces(int(n))) for n in lengths[~short])


def positions_fed(policy, length: int) -> np.ndarray:
    """The sorted distinct positions that ``policy`` feeds of a sequence of ``length`` residues: the
    rows of its per-residue outputs (head/ends: the residues fed; window: every residue)."""
    return np.unique(np.concatenate(policy.pieces(length))) if length else np.zeros(0, dtype=np.int64)


def average_pieces(outputs: list[np.ndarray], pieces: list[np.ndarray], length: int) -> np.ndarray:
    """Per-residue outputs of several pieces of one sequence combined: row k is the mean over the pieces
    covering residue ``positions_fed[k]`` of that piece's row for it.

    ``outputs[j]`` is (len(pieces[j]), ...) aligned with ``pieces[j]``; returns (n_positions, ...) float32,
    summed in float64. One piece is returned unchanged (float32).
    """
    if len(pieces) == 1:
        order = np.argsort(pieces[0], kind="stable")
        return np.asarray(outputs[0], dtype=np.float32)[order]
    total = np.zeros((length, *outputs[0].shape[1:]), dtype=np.float64)
    count = np.zeros(length, dtype=np.int64)
    for output, positions in zip(outputs, pieces, strict=True):
        np.add.at(total, positions, output)
        np.add.at(count, positions, 1)
    covered = np.flatnonzero(count)
    shape = (-1,) + (1,) * (total.ndim - 1)
    return (total[covered] / count[covered].reshape(shape)).astype(np.float32)


def cut_report_path(out: str | Path) -> Path:
    """Where predict/embed say which records were cut: ``out``'s full name + ``.cut.json``
    (``preds.csv`` -> ``preds.csv.cut.json``), so outputs that share a stem (``x.csv``, ``x.npy``)
    never share a report."""
    return Path(out).with_name(Path(out).name + ".cut.json")


def write_cut_report(out: str | Path, policy, n_records: int, cut_rows: list[int], cut_ids: list[str],
                     inputs: tuple | list = ()) -> Path:
    """Write :func:`cut_report_path` of ``out`` (whole or not at all) and return it: the policy
    (``policy``: name, ``max_residues``, ``stride`` for window), ``n_records``, ``n_cut`` and, in
    input order, ``cut_rows`` (0-based record positions: ids may repeat) and ``cut_ids`` of the records
    longer than ``max_residues`` (head/ends: residues were left out; window: averaged over windows).
    Written on every run, with ``n_cut`` 0 when nothing was cut, so an old report never outlives its
    output. Raises ScilmError when the path is a directory or one of ``inputs``."""
    import json

    from scilm.io import atomic_output

    path = cut_report_path(out)
    described = {"name": getattr(policy, "name", str(policy)), "max_residues": getattr(policy, "max_residues", None)}
    if isinstance(policy, WindowPolicy):
        described["stride"] = policy.step
    report = {"policy": described, "n_records": int(n_records), "n_cut": len(cut_rows),
              "cut_rows": [int(r) for r in cut_rows], "cut_ids": list(cut_ids)}
    with atomic_output(path, inputs) as tmp:
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
