"""Does sifting pay? Compare the extra scoring pass with the training time it saves.

Per raw sample, training without sifting costs T (forward + backward + optimizer step). With
sifting it costs S (the scoring forward) + keep * T. Sifting pays when S + keep*T < T, that is when
keep < 1 - S/T. With backward ~2x forward, T ~ 3 forwards, so keep < 1 - S_fwd/3 (SOURCES.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scilm.errors import ScilmError

ON_NO_GAIN = ("warn", "disable", "ignore")


@dataclass(frozen=True)
class CostVerdict:
    pays: bool
    break_even_keep: float  # sifting pays below this kept fraction (1 - S/T)
    keep: float  # the kept fraction assessed
    relative_time: float  # sifted time / unsifted time, S/T + keep
    message: str


def check_cost(scoring_seconds_per_sample: float, train_seconds_per_sample: float,
               keep_fraction: float) -> CostVerdict:
    """Verdict on whether keeping ``keep_fraction`` of samples pays for scoring every sample."""
    for name, value in (("scoring_seconds_per_sample", scoring_seconds_per_sample),
                        ("train_seconds_per_sample", train_seconds_per_sample)):
        if not math.isfinite(value) or value < 0:
            raise ScilmError(f"{name} must be a finite number >= 0, got {value!r}")
    if train_seconds_per_sample == 0:
        raise ScilmError("train_seconds_per_sample must be > 0")
    if not 0.0 <= keep_fraction <= 1.0:
        raise ScilmError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")
    ratio = scoring_seconds_per_sample / train_seconds_per_sample
    break_even = 1.0 - ratio
    relative = ratio + keep_fraction
    pays = keep_fraction < break_even
    if pays:
        message = (f"sifting pays: keeping {keep_fraction:.0%} with scoring at {ratio:.0%} of a training step "
                   f"takes ~{relative:.0%} of the unsifted time")
    else:
        message = (f"sifting does not pay: scoring costs {ratio:.0%} of a training step, so the kept fraction "
                   f"must be below {max(break_even, 0):.0%}, but it is {keep_fraction:.0%} "
                   f"(~{relative:.0%} of the unsifted time); raise beta_value or make scoring cheaper")
    return CostVerdict(pays, break_even, keep_fraction, relative, message)
